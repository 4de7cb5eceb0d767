"""Build the synthetic knowledge-VQA world, edit its knowledge, or train its tokenizers.

    python scripts/make_synthetic.py --out DIR [--seed S] [--entities N] [--overwrite] ...
    python scripts/make_synthetic.py --edit DIR [--edit-fraction 0.2] [--edit-seed S]
    python scripts/make_synthetic.py --tokenizers DIR [--tokenizer-out DIR/tokenizers] [--llm-kind t5]

A world is a folder of OK-VQA-format train/val/test splits (JPEG images, questions, annotations with
``relevant_ids``), a knowledge base ``kb.jsonl`` with its images, ``world.json``, and ``align/``: visual
questions about invented creatures for the generator's alignment stage. The same seed
and arguments give byte-identical files. ``--edit`` changes hidden facts of a share of the test
entities and writes ``kb_edited.jsonl`` and the new answer key under ``edit/``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rablip.errors import ConfigError  # noqa: E402
from rablip.synthetic.edit import edit_world  # noqa: E402
from rablip.synthetic.world import WorldSettings, build_world  # noqa: E402
from rablip.synthetic.world_tokenizers import train_world_tokenizers  # noqa: E402
from rablip.utils.cli import run_main  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    defaults = WorldSettings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--out", help="build a new world into this directory")
    mode.add_argument("--edit", metavar="WORLD_DIR", help="knowledge-edit an existing world")
    mode.add_argument("--tokenizers", metavar="WORLD_DIR", help="train the Q-Former and LLM tokenizers of a world")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--entities", type=int, default=defaults.entities, help="question entities (seen + unseen)")
    parser.add_argument("--distractors", type=int, default=None, help="KB-only entities (default: entities // 2)")
    parser.add_argument("--unseen-fraction", type=float, default=defaults.unseen_fraction,
                        help="share of val's and of test's entities never seen in train")
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--train-images", type=int, default=defaults.train_images_per_entity,
                        help="renderings per seen entity in train (3 questions each)")
    parser.add_argument("--eval-images", type=int, default=defaults.eval_images_per_entity,
                        help="renderings per entity in val and in test")
    parser.add_argument("--align-images", type=int, default=defaults.align_images,
                        help="renderings of invented creatures in align/, one visual question each (0: none)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out directory")
    parser.add_argument("--edit-fraction", type=float, default=0.2, help="share of test entities to edit")
    parser.add_argument("--edit-seed", type=int, default=None, help="edit seed (default: the world's seed)")
    parser.add_argument("--tokenizer-out", default=None, help="where tokenizers go (default: WORLD_DIR/tokenizers)")
    parser.add_argument("--llm-kind", choices=("t5", "causal"), default="t5")
    parser.add_argument("--vocab-size", type=int, default=1000)
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return parser


def main(argv: list[str]) -> int:
    """Run the chosen mode and print a one-paragraph summary."""
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    if args.out:
        try:
            settings = WorldSettings(
                seed=args.seed,
                entities=args.entities,
                distractors=args.distractors,
                unseen_fraction=args.unseen_fraction,
                image_size=args.image_size,
                train_images_per_entity=args.train_images,
                eval_images_per_entity=args.eval_images,
                align_images=args.align_images,
            )
        except ValueError as error:
            raise ConfigError(f"make_synthetic: {error}") from error
        manifest = build_world(args.out, settings, overwrite=args.overwrite)
        counts = manifest["counts"]
        print(
            f"world {args.out}: {counts['entities']} entities + {counts['distractors']} distractors, "
            f"{counts['kb_items']} KB items, questions {counts['questions']}, "
            f"align questions {manifest.get('align', {}).get('num_questions', 0)}, unseen val/test {len(manifest['unseen_entity_ids']['val'])}/"
            f"{len(manifest['unseen_entity_ids']['test'])} ({time.perf_counter() - start:.1f} s)"
        )
    elif args.edit:
        edits = edit_world(args.edit, fraction=args.edit_fraction, seed=args.edit_seed)
        print(
            f"edited {len(edits['entities'])} test entities of {args.edit}: {len(edits['questions'])} "
            f"test questions have new answers; KB {edits['kb_file']}, answer key {edits['annotations_file']}"
        )
    else:
        out_dir = Path(args.tokenizer_out or Path(args.tokenizers) / "tokenizers")
        tokenizers = train_world_tokenizers(
            args.tokenizers, out_dir, args.llm_kind, qformer_vocab_size=args.vocab_size, llm_vocab_size=args.vocab_size
        )
        sizes = {name: len(tokenizer) for name, tokenizer in tokenizers.items()}
        print(f"tokenizers in {out_dir}: qformer (bert) {sizes['qformer']} tokens, llm ({args.llm_kind}) {sizes['llm']}")
    return 0


if __name__ == "__main__":
    run_main(main)
