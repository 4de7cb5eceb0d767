"""Build the synthetic knowledge-VQA world and everything the synthetic experiments read, edit its
knowledge, or train its tokenizers.

    python scripts/make_synthetic.py --out DIR [--settings FILE.yaml] [--overwrite] [--only PART,...]
                                     [--seed S] [--entities N] ... [key=value ...]
    python scripts/make_synthetic.py --print-settings [--settings FILE.yaml] [key=value ...]
    python scripts/make_synthetic.py --edit DIR [--edit-fraction 0.2] [--edit-seed S]
    python scripts/make_synthetic.py --tokenizers DIR [--tokenizer-out DIR/tokenizers] [--llm-kind t5]

``--out`` builds, in this order, into DIR (the ``data.root`` of ``configs/data/synthetic.yaml``):
the world (OK-VQA-format train/val/test splits with JPEG images and ``relevant_ids``, ``kb.jsonl``
with its images, ``world.json``, and ``align/``: visual questions about invented creatures for the
generator's alignment stage), its knowledge-base store ``kb_store/``, the tiny generator checkpoint
``tiny-instructblip-llama/`` (tokenizers trained on the world, a timm vision encoder, copy-ready LLM
attention, vision and reading warm-ups) and ``extra_pairs/pairs.jsonl``, renderings of invented
creatures with their fact texts or captions (``data.extra_pairs`` of the pre-training config).
``--only world,kb`` builds some parts (the others must already be there for the later ones);
``--only llava`` adds ``tiny-llava/``, the tiny LLaVA of the RORA configs (configs/model/tiny_llava.yaml).

Settings (:mod:`rablip.synthetic.settings`; ``--print-settings`` shows them all with their values):
the defaults are the demo's; ``--settings FILE.yaml`` (same nesting) overrides them, then the flags
below, then ``key=value`` arguments (``world.entities=12 warmup.vision_steps=5 extra_pairs.count=0``).
The same seed and settings give byte-identical world and extra-pairs files. ``--edit`` changes hidden
facts of a share of the test entities and writes ``kb_edited.jsonl`` and the new answer key under ``edit/``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rablip.synthetic.edit import edit_world  # noqa: E402
from rablip.synthetic.files import load_manifest  # noqa: E402
from rablip.synthetic.make import OPTIONAL_PARTS, PARTS, make_synthetic  # noqa: E402
from rablip.synthetic.settings import load_settings, settings_yaml  # noqa: E402
from rablip.synthetic.world_tokenizers import train_world_tokenizers  # noqa: E402
from rablip.utils.cli import run_main  # noqa: E402

FLAGS = {"seed": "seed", "entities": "world.entities", "distractors": "world.distractors",
         "unseen_fraction": "world.unseen_fraction", "image_size": "world.image_size",
         "train_images": "world.train_images_per_entity", "eval_images": "world.eval_images_per_entity",
         "align_images": "world.align_images", "vision_steps": "warmup.vision_steps",
         "reading_steps": "warmup.reading_steps", "extra_pairs": "extra_pairs.count"}
"""Shortcut flags and the settings keys they set."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--out", help="build the world and the rest into this directory")
    mode.add_argument("--print-settings", action="store_true", help="print the resolved settings and exit")
    mode.add_argument("--edit", metavar="WORLD_DIR", help="knowledge-edit an existing world")
    mode.add_argument("--tokenizers", metavar="WORLD_DIR", help="train the Q-Former and LLM tokenizers of a world")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="settings overrides")
    parser.add_argument("--settings", default=None, help="YAML file of settings (see --print-settings)")
    parser.add_argument("--only", default=",".join(PARTS),
                        help=f"parts to build, of {','.join(PARTS)} (the default) and {','.join(OPTIONAL_PARTS)} "
                        "(the tiny LLaVA of the RORA configs, configs/experiment/synthetic_rora_*.yaml)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace what is there: the --out directory (when the world is built), else the parts")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--entities", type=int, default=None, help="question entities (seen + unseen)")
    parser.add_argument("--distractors", type=int, default=None, help="KB-only entities (default: entities // 2)")
    parser.add_argument("--unseen-fraction", type=float, default=None,
                        help="share of val's and of test's entities never seen in train")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--train-images", type=int, default=None,
                        help="renderings per seen entity in train (3 questions each)")
    parser.add_argument("--eval-images", type=int, default=None, help="renderings per entity in val and in test")
    parser.add_argument("--align-images", type=int, default=None,
                        help="renderings of invented creatures in align/, one visual question each (0: none)")
    parser.add_argument("--vision-steps", type=int, default=None, help="the tiny vision encoder's warm-up steps")
    parser.add_argument("--reading-steps", type=int, default=None, help="the tiny LLM's reading warm-up steps")
    parser.add_argument("--extra-pairs", type=int, default=None, help="invented-creature pre-training pairs")
    parser.add_argument("--edit-fraction", type=float, default=0.2, help="share of test entities to edit")
    parser.add_argument("--edit-seed", type=int, default=None, help="edit seed (default: the world's seed)")
    parser.add_argument("--tokenizer-out", default=None, help="where tokenizers go (default: WORLD_DIR/tokenizers)")
    parser.add_argument("--llm-kind", choices=("t5", "causal"), default="t5")
    parser.add_argument("--vocab-size", type=int, default=1000)
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return parser


def _settings(args: argparse.Namespace):
    flags = [f"{key}={getattr(args, name)}" for name, key in FLAGS.items() if getattr(args, name) is not None]
    return load_settings(args.settings, [*flags, *args.overrides])


def _build(args: argparse.Namespace) -> None:
    """Build the chosen parts into --out and print what was built."""
    import torch

    torch.use_deterministic_algorithms(True, warn_only=True)
    settings = _settings(args)
    seconds = make_synthetic(args.out, settings, parts=[p.strip() for p in args.only.split(",") if p.strip()],
                             overwrite=args.overwrite)
    manifest = load_manifest(args.out)
    counts = manifest["counts"]
    print(f"world {args.out}: {counts['entities']} entities + {counts['distractors']} distractors, "
          f"{counts['kb_items']} KB items, questions {counts['questions']}, align questions "
          f"{manifest.get('align', {}).get('num_questions', 0)}, unseen val/test "
          f"{len(manifest['unseen_entity_ids']['val'])}/{len(manifest['unseen_entity_ids']['test'])}; built "
          + ", ".join(f"{part} ({value:.1f} s)" for part, value in seconds.items()))


def main(argv: list[str]) -> int:
    """Run the chosen mode and print a one-paragraph summary."""
    args = _parser().parse_args(argv)
    if args.out:
        _build(args)
    elif args.print_settings:
        print(settings_yaml(_settings(args)), end="")
    elif args.edit:
        edits = edit_world(args.edit, fraction=args.edit_fraction, seed=args.edit_seed)
        print(
            f"edited {len(edits['entities'])} test entities of {args.edit}: {len(edits['questions'])} "
            f"test questions have new answers; KB {edits['kb_file']}, answer key {edits['annotations_file']}"
        )
    else:
        start = time.perf_counter()
        out_dir = Path(args.tokenizer_out or Path(args.tokenizers) / "tokenizers")
        tokenizers = train_world_tokenizers(
            args.tokenizers, out_dir, args.llm_kind, qformer_vocab_size=args.vocab_size, llm_vocab_size=args.vocab_size
        )
        sizes = {name: len(tokenizer) for name, tokenizer in tokenizers.items()}
        print(f"tokenizers in {out_dir}: qformer (bert) {sizes['qformer']} tokens, llm ({args.llm_kind}) "
              f"{sizes['llm']} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    run_main(main)
