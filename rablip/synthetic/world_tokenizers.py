"""Train the two tokenizers a synthetic world needs: ``bert`` for the Q-Former and ``t5``/``causal``
for the LLM, on every text of the world (questions, answers, KB texts and titles, edited KB texts)
plus the words of rablip's prompt templates. Saved as ``out_dir/qformer`` and ``out_dir/llm``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from rablip.models import prompts
from rablip.synthetic.files import (
    EDIT_DIR,
    EDITED_KB_NAME,
    SPLITS,
    annotations_name,
    load_manifest,
    questions_name,
    read_json,
    read_jsonl,
)
from rablip.synthetic.tokenizer_training import train_tokenizer


def prompt_texts(include_release: bool = False) -> list[str]:
    """The words of the ``rablip`` prompt templates in :mod:`rablip.models.prompts` (placeholders
    removed; the synthetic configs use that template, so the release's ``RELEASE_*`` ones are left out
    unless ``include_release``, and the world's tiny tokenizers stay as they were) and the reference
    numbers, so no prompt word falls apart into characters."""
    templates = [value for name, value in vars(prompts).items() if name.isupper() and isinstance(value, str)
                 and (include_release or not name.startswith("RELEASE_"))]
    texts = [" ".join(re.sub(r"\{[^{}]*\}", " ", template).split()) for template in templates]
    texts.append(" ".join(str(number) for number in range(21)))
    return [text for text in texts if text]


QFORMER_DIR = "qformer"
LLM_DIR = "llm"


def world_texts(world_dir: str | Path) -> Iterator[str]:
    """Every text of the world in a fixed order: KB texts and titles, questions and all answers."""
    world_dir = Path(world_dir)
    manifest = load_manifest(world_dir)
    kb_files = [world_dir / manifest["kb_file"]]
    if (world_dir / EDITED_KB_NAME).is_file():
        kb_files.append(world_dir / EDITED_KB_NAME)
    for kb_file in kb_files:
        for item in read_jsonl(kb_file):
            yield item.get("title", "")
            yield item.get("text", "")
    annotation_files = [world_dir / annotations_name(split) for split in SPLITS]
    if (world_dir / EDIT_DIR / annotations_name("test")).is_file():
        annotation_files.append(world_dir / EDIT_DIR / annotations_name("test"))
    for split in SPLITS:
        for question in read_json(world_dir / questions_name(split))["questions"]:
            yield question["question"]
    for path in annotation_files:
        for annotation in read_json(path)["annotations"]:
            for answer in annotation["answers"]:
                yield answer["answer"]


def train_world_tokenizers(
    world_dir: str | Path,
    out_dir: str | Path,
    llm_kind: str = "t5",
    *,
    qformer_vocab_size: int = 1000,
    llm_vocab_size: int = 1000,
    extra_texts: Iterable[str] = (),
) -> dict[str, PreTrainedTokenizerFast]:
    """Train and save ``{"qformer": bert tokenizer, "llm": llm_kind tokenizer}`` for a world.

    ``llm_kind`` is ``t5`` or ``causal``. The tokenizers land in ``out_dir/qformer`` and
    ``out_dir/llm`` and load with ``AutoTokenizer.from_pretrained``.
    """
    if llm_kind not in ("t5", "causal"):
        raise ValueError(f"llm_kind must be 't5' or 'causal', got {llm_kind!r}")
    corpus = [*prompt_texts(), *extra_texts, *world_texts(world_dir)]
    out_dir = Path(out_dir)
    return {
        "qformer": train_tokenizer(corpus, out_dir / QFORMER_DIR, kind="bert", vocab_size=qformer_vocab_size),
        "llm": train_tokenizer(corpus, out_dir / LLM_DIR, kind=llm_kind, vocab_size=llm_vocab_size),
    }
