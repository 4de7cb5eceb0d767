"""Pair an InstructBLIP checkpoint's vision tower and Q-Former with another LLM (RA-BLIP's T5-base/large).

    python scripts/compose_generator.py --instructblip checkpoints/instructblip-flan-t5-xl \
        --llm checkpoints/t5-base --output checkpoints/instructblip-t5-base

Writes a transformers InstructBLIP dir: the InstructBLIP dir's vision model, Q-Former, query tokens and
processor files; the LLM dir's weights, with the release's ``dense_act_fn = "gelu"`` (``--activation keep``
keeps the LLM's own); a new language projection (nn.Linear's default initialisation, ``--seed``). See
rablip/models/compose.py and compose_report.json in the output.
"""

from __future__ import annotations

import argparse
import sys

from rablip.errors import EXIT_USER_ERROR, RablipError
from rablip.models.compose import ACTIVATIONS, compose_generator


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, compose, print a summary; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instructblip", required=True, help="transformers InstructBLIP dir (vision + Q-Former)")
    parser.add_argument("--llm", required=True, help="transformers T5 dir (google/t5-base or google/t5-large layout)")
    parser.add_argument("--output", required=True, help="new output dir")
    parser.add_argument("--activation", choices=ACTIVATIONS, default="gelu",
                        help="the LLM's feed-forward activation: gelu (the release's) or keep (default: gelu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the new language projection (default 0)")
    args = parser.parse_args(argv)
    try:
        report = compose_generator(args.instructblip, args.llm, args.output, activation=args.activation,
                                   seed=args.seed)
    except RablipError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(f"composed {args.output}: {report.copied} vision/Q-Former tensors from {args.instructblip}, "
          f"{report.llm_tensors} LLM tensors from {args.llm}, activation {report.activation}, {report.projection}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
