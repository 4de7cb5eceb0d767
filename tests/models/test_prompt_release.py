"""prompt.template=release: RA-BLIP's released prompt (iLearn-Lab/TMM25-RA-BLIP, datasets.py), its
text cleaning, left truncation, and the same text reaching the Q-Former and the LLM.

Expected strings are written out by hand from the release's template:
``" | ".join(non-empty of [";".join("caption of image %d is that %s"), ";".join("Title:%s, Fact:%s"),
question])`` with every cleaned field starting with a space (BlipCaptionProcessor's output).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from PIL import Image
from transformers import BlipImageProcessor

from rablip.data.records import KBItem
from rablip.data.samples import Reference, Sample
from rablip.errors import ConfigError
from rablip.models import prompts
from rablip.models.processing import IGNORE_INDEX, Collator, left_truncated
from rablip.models.prompt_packing import PromptPacker
from rablip.synthetic.tokenizer_training import train_tokenizer

NUM_QUERY = 3
QUESTION = "What colour is the bus?"
IMAGE_1 = KBItem(id="i1", modality="image+text", image="a.png", title="London bus", text='a red "double" bus')
IMAGE_2 = KBItem(id="i2", modality="image", image="b.png", text="the tower at night")
TEXT_1 = KBItem(id="t1", modality="text", title="Eiffel Tower", text="The tower: 330 m tall; built in 1889")
TEXT_2 = KBItem(id="t2", modality="text", title="Big Ben", text="A clock #tower in London")

# References listed image, text, image, text: images are numbered among the image references.
FULL_PROMPT = (
    'caption of image 1 is that a red "double" bus;caption of image 2 is that the tower at night'
    " | Title: Eiffel Tower, Fact: The tower 330 m tall built in 1889;Title: Big Ben, Fact: A clock tower in London"
    " |  What colour is the bus?"
)
QUESTION_ONLY_PROMPT = " What colour is the bus?"

# The release's ASKG selection text (WebqaEnhancedTrainDataset), written out by hand: instruction,
# 'Question: "' + processed question + '"', then each reference numbered by its source id.
SELECT_HEADER = (
    "We would like to request your feedback on this question is relevant to which of the following references. "
    "Relevance refers to the degree to which the reference can answer the question. \n"
    "The input format is Question: content, Reference [number]: content \n"
    "The Output format is: Related content is [number]\n"
    'Question: " What colour is the bus?"\n'
    "The references are as follows: \n"
)
SELECT_IMAGE_FIRST = SELECT_HEADER + (
    'Reference [i1]: The reference content is in image format, the image caption is "a red "double" bus"\n'
    'Reference [t1]: The reference content is in text format, the text content is '
    '"Title: Eiffel Tower, Fact: The tower 330 m tall built in 1889"\n'
)
SELECT_TEXT_FIRST = SELECT_HEADER + (
    'Reference [t1]: The reference content is in text format, the text content is '
    '"Title: Eiffel Tower, Fact: The tower 330 m tall built in 1889"\n'
    'Reference [i2]: The reference content is in image format, the image caption is "the tower at night"\n'
)


def _image(value: int = 120) -> Image.Image:
    return Image.fromarray(np.full((20, 24, 3), value, dtype=np.uint8))


def _sample(references: list[KBItem], target: str | None = '"Red."', question_image: bool = True) -> Sample:
    refs = [Reference(item, _image() if item.modality != "text" else None) for item in references]
    return Sample(QUESTION, _image(30) if question_image else None, refs, target, example_id="q1")


FULL = [IMAGE_1, TEXT_1, IMAGE_2, TEXT_2]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("release_assets")
    corpus = [FULL_PROMPT, QUESTION_ONLY_PROMPT, "Red. red", prompts.select_prompt(QUESTION), SELECT_IMAGE_FIRST,
              SELECT_TEXT_FIRST, "The relevant reference is Reference [t1]. [i1] caption of image is | question is"] * 3
    tokenizers = {
        kind: train_tokenizer(corpus, root / kind, kind=kind, vocab_size=400 if kind == "causal" else 200)
        for kind in ("bert", "t5", "causal")
    }
    return {"tokenizers": tokenizers, "processor": BlipImageProcessor(size={"height": 16, "width": 16})}


def _collator(saved: dict, family: str = "t5", **overrides) -> Collator:
    settings = dict(
        num_query_tokens=NUM_QUERY,
        is_encoder_decoder=family == "t5",
        max_references=4,
        max_input_length=512,
        max_target_length=16,
        qformer_max_length=512,
        prompt_template="release",
    )
    settings.update(overrides)
    tokenizers = saved["tokenizers"]
    return Collator(tokenizers["bert"], tokenizers[family], saved["processor"], **settings)


def test_clean_caption_as_blip_caption_processor():
    assert prompts.clean_caption('He said: "Hi"~ #1;  *ok*\n\n') == "He said Hi 1 ok"
    assert (
        prompts.clean_caption("  Keep UPPER case\tand one\nnewline  ") == "Keep UPPER case\tand one\nnewline"
    )
    assert prompts.clean_caption("a\t b\n\nc") == "a b c"
    assert prompts.clean_caption(" ".join(f"w{i}" for i in range(300))) == " ".join(
        f"w{i}" for i in range(256)
    )
    assert prompts.clean_caption("") == ""
    assert prompts.release_field("x: y") == " x y"


def test_release_prompt_two_images_two_texts_and_none():
    assert (
        prompts.release_prompt(
            QUESTION,
            ['a red "double" bus', "the tower at night"],
            [
                ("Eiffel Tower", "The tower: 330 m tall; built in 1889"),
                ("Big Ben", "A clock #tower in London"),
            ],
        )
        == FULL_PROMPT
    )
    assert prompts.release_prompt(QUESTION, [], []) == QUESTION_ONLY_PROMPT
    assert (
        prompts.release_prompt(QUESTION, [], [("T", "F")]) == "Title: T, Fact: F |  What colour is the bus?"
    )


def test_packer_builds_the_release_text(saved):
    packer = _collator(saved).packer
    sample = _sample(FULL)
    assert packer.release_text(sample, sample.references) == FULL_PROMPT
    assert packer.release_text(_sample([]), []) == QUESTION_ONLY_PROMPT


@pytest.mark.parametrize("family", ["t5", "causal"])
def test_same_text_reaches_qformer_and_llm(saved, family):
    collator = _collator(saved, family)
    llm, bert = saved["tokenizers"][family], saved["tokenizers"]["bert"]
    batch = collator([_sample(FULL)])
    slots = batch["image_slot_mask"][0]
    assert slots.tolist() == [True, True, False, True, False]
    expected_qformer = bert(FULL_PROMPT)["input_ids"]
    for slot in range(5):
        ids = batch["qformer_input_ids"][0, slot][batch["qformer_attention_mask"][0, slot].bool()].tolist()
        assert ids == expected_qformer
    row = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    image_id = collator.image_token_id
    # Every image block first (question image + 2 reference images), then the text alone.
    assert row[: 3 * NUM_QUERY] == [image_id] * (3 * NUM_QUERY)
    assert image_id not in row[3 * NUM_QUERY :]
    text = row[3 * NUM_QUERY :]
    plain = llm(FULL_PROMPT, add_special_tokens=False)["input_ids"]
    if family == "t5":
        assert text == plain + [llm.eos_token_id]
        assert batch["labels"][0].tolist() == llm(" Red.", add_special_tokens=False)["input_ids"] + [
            llm.eos_token_id
        ]
    else:
        labels = batch["labels"][0][batch["attention_mask"][0].bool()].tolist()
        answer = labels[len(row) - len([t for t in labels if t != IGNORE_INDEX]) :]
        assert answer[-1] == llm.eos_token_id and IGNORE_INDEX not in answer
        prefix = llm("x")["input_ids"][: -len(llm("x", add_special_tokens=False)["input_ids"])]
        assert text[: len(prefix) + len(plain)] == prefix + plain
        assert llm.decode(answer[:-1]).strip() == "Red."


def test_no_references_no_question_image(saved):
    collator = _collator(saved)
    llm = saved["tokenizers"]["t5"]
    batch = collator([_sample([], question_image=False)])
    row = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    assert row == llm(QUESTION_ONLY_PROMPT, add_special_tokens=False)["input_ids"] + [llm.eos_token_id]
    assert batch["image_slot_mask"].tolist() == [[False]]


def test_left_truncation_keeps_the_question(saved, caplog):
    llm, bert = saved["tokenizers"]["t5"], saved["tokenizers"]["bert"]
    collator = _collator(saved, max_input_length=12, qformer_max_length=10)
    batch = collator([_sample(FULL)])
    row = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    text = row[3 * NUM_QUERY :]
    plain = llm(FULL_PROMPT, add_special_tokens=False)["input_ids"]
    assert len(plain) > 11
    assert text == plain[-11:] + [llm.eos_token_id]
    question = llm(QUESTION_ONLY_PROMPT, add_special_tokens=False)["input_ids"]
    assert text[-1 - len(question) : -1] == question[-min(len(question), 11) :]
    # The Q-Former side equals the tokenizer's own left truncation, specials kept.
    left = copy.deepcopy(bert)
    left.truncation_side = "left"
    expected = left(FULL_PROMPT, truncation=True, max_length=10)["input_ids"]
    assert expected[0] == bert.cls_token_id and expected[-1] == bert.sep_token_id and len(expected) == 10
    ids = batch["qformer_input_ids"][0, 0][batch["qformer_attention_mask"][0, 0].bool()].tolist()
    assert ids == expected
    assert left_truncated(bert, [FULL_PROMPT, "Red."], 10) == [expected, bert("Red.")["input_ids"]]


def test_release_selection_strings():
    lines = [prompts.release_select_reference("i1", True, IMAGE_1.title, IMAGE_1.text),
             prompts.release_select_reference("t1", False, TEXT_1.title, TEXT_1.text)]
    assert prompts.release_select_prompt(QUESTION, lines) == SELECT_IMAGE_FIRST
    assert prompts.release_select_target("i1", is_text=False) == "The relevant reference is Reference [i1]"
    assert prompts.release_select_target("t1", is_text=True) == "The relevant reference is Reference [t1]."
    assert (prompts.release_select_instruction(QUESTION, "the tower at night")
            == "caption of image is the tower at night | question is  What colour is the bus?")


@pytest.mark.parametrize("items, relevant, text, target, caption", [
    ([IMAGE_1, TEXT_1], 1, SELECT_IMAGE_FIRST, "The relevant reference is Reference [i1]", 'a red "double" bus'),
    ([TEXT_1, IMAGE_2], 1, SELECT_TEXT_FIRST, "The relevant reference is Reference [t1].", "the tower at night"),
    ([IMAGE_1, TEXT_1], 2, SELECT_IMAGE_FIRST, "The relevant reference is Reference [t1].", 'a red "double" bus'),
])
def test_release_selection_rows_are_the_releases_format(saved, items, relevant, text, target, caption):
    """A selection sample under the release template: the image block, then exactly the release's
    selection text; the target names the relevant reference by its source id; every slot's Q-Former
    instruction is 'caption of image is <the image reference's caption> | question is  <question>'."""
    llm, bert = saved["tokenizers"]["t5"], saved["tokenizers"]["bert"]
    refs = [Reference(item, _image() if item.modality != "text" else None) for item in items]
    select = Sample(QUESTION, None, refs, None, kind="select", relevant=relevant, example_id="q1")
    collator = _collator(saved)
    assert collator.packer.training_target(select) == target
    batch = collator([select])
    row = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    assert row == [collator.image_token_id] * NUM_QUERY + llm(text, add_special_tokens=False)["input_ids"] + [
        llm.eos_token_id
    ]
    assert batch["labels"][0].tolist() == llm(target, add_special_tokens=False)["input_ids"] + [llm.eos_token_id]
    instruction = bert(f"caption of image is {caption} | question is  {QUESTION}")["input_ids"]
    for slot in range(3):
        ids = batch["qformer_input_ids"][0, slot][batch["qformer_attention_mask"][0, slot].bool()].tolist()
        assert ids == instruction
    # The rablip template keeps its own selection layout and "Reference N" target.
    rablip = _collator(saved, prompt_template="rablip")
    assert rablip.packer.training_target(select) == f"Reference {relevant}"
    assert rablip([select])["input_ids"].tolist() != batch["input_ids"].tolist()


def test_rablip_template_is_the_default_and_unknown_refused(saved):
    tokenizers = saved["tokenizers"]
    default = Collator(
        tokenizers["bert"],
        tokenizers["t5"],
        saved["processor"],
        num_query_tokens=NUM_QUERY,
        is_encoder_decoder=True,
        max_references=4,
        max_input_length=512,
        max_target_length=16,
        qformer_max_length=64,
    )
    assert default.packer.prompt_template == "rablip"
    batch = default([_sample(FULL)])
    assert batch["input_ids"].tolist() != _collator(saved)([_sample(FULL)])["input_ids"].tolist()
    with pytest.raises(ConfigError, match="prompt.template"):
        PromptPacker(
            tokenizers["t5"],
            num_query_tokens=1,
            is_encoder_decoder=True,
            max_references=1,
            max_input_length=8,
            max_target_length=4,
            prompt_template="released",
        )


def test_build_collator_reads_the_key_and_the_model_takes_release_rows(tmp_path_factory):
    """prompt.template reaches the processor through build_collator, and a release batch (ASKG on:
    selection samples in the release's selection format) runs through the tiny generator with a finite loss."""
    import torch

    from rablip.benchmarks import load_split
    from rablip.config import load_config
    from rablip.data.kb import KBStore
    from rablip.models.factory import load_generator
    from rablip.models.processing import build_collator
    from rablip.retrieval.references import ranked_references
    from rablip.stages.finetune import FinetuneDataset, answer_loss, flatten_collate, max_references
    from tests.retrieval.tiny_world import FINETUNE_WORLD, build_world
    from tests.training.launch import FINETUNE_CONFIG, finetune_args

    world = build_world(tmp_path_factory.mktemp("world") / "world", *FINETUNE_WORLD)
    run_dir = tmp_path_factory.mktemp("run")
    cfg = load_config(FINETUNE_CONFIG, finetune_args(world, run_dir, "prompt.template=release")[2:])
    assert cfg.prompt.template == "release"
    torch.manual_seed(0)
    model = load_generator(cfg)
    collator = build_collator(cfg, model, max_references(cfg))
    assert collator.packer.prompt_template == "release"
    kb = KBStore.open(cfg.data.kb.store_dir, root=cfg.data.kb.root)
    examples = load_split(cfg.data, "train")
    dataset = FinetuneDataset(cfg, examples, kb, ranked_references(cfg, examples, "train", run_dir))
    batch = flatten_collate(collator)([dataset[(i, 0)] for i in range(4)])
    qa = int((batch["sample_kind"] == 0).nonzero()[0])
    instructions = batch["qformer_input_ids"][qa][batch["image_slot_mask"][qa]]
    assert all(row.tolist() == instructions[0].tolist() for row in instructions)
    with torch.no_grad():
        loss, _ = answer_loss(model, batch)
    assert torch.isfinite(loss)

    # askg.answer_refs=gold (the release's plan) through the same dataset: each answering sample holds its
    # example's gold facts alone; each selection sample two references, the positive first (positive_first).
    gold_cfg = load_config(FINETUNE_CONFIG, finetune_args(
        world, run_dir, "prompt.template=release", "askg.answer_refs=gold", "askg.selection_order=positive_first",
        "noise.random_snippets=0")[2:])
    gold_set = FinetuneDataset(gold_cfg, examples, kb, ranked_references(gold_cfg, examples, "train", run_dir))
    groups = [gold_set[(i, 0)] for i in range(4)]
    for example, (answering, select) in zip(examples[:4], groups, strict=True):
        gold = list(example.relevant_ids)
        assert [r.item.id for r in answering.references] == gold[: gold_cfg.retrieval.k]
        ids = [r.item.id for r in select.references]
        assert select.relevant == 1 and ids[0] in gold and ids[1] not in gold and len(ids) == 2
        ending = "" if select.references[0].has_image else "."
        assert collator.packer.training_target(select) == f"The relevant reference is Reference [{ids[0]}]{ending}"
    with torch.no_grad():
        loss, _ = answer_loss(model, flatten_collate(collator)(groups))
    assert torch.isfinite(loss)
