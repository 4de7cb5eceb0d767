"""Convert a LAVIS-format InstructBLIP / BLIP-2 / RA-BLIP checkpoint (.pth) into rablip's layout.

    python scripts/convert_lavis.py --input X.pth --output DIR [--base HF_DIR] [--layout release]

With ``--base`` (a transformers InstructBLIP / BLIP-2 dir holding the frozen weights) DIR becomes a
checkpoint that ``RABlipForConditionalGeneration.from_pretrained(DIR)`` loads; without it DIR gets
the renamed weights only. ``--layout release`` reads a checkpoint of RA-BLIP's code release
(iLearn-Lab/TMM25-RA-BLIP) into a ``multi_image: concat`` model with 2 image slots, its
``type_embeds`` / ``pos_embeds`` becoming ``slot_type_embeds`` / ``patch_position_embeds``
(``--base`` required). DIR always gets conversion_report.json (mapped / dropped / filled keys).
"""

from __future__ import annotations

import argparse
import sys

from rablip.errors import EXIT_USER_ERROR, RablipError
from rablip.models.convert import convert_lavis_checkpoint
from rablip.models.release_convert import convert_release_checkpoint

#: ``--layout`` -> the converter of that checkpoint layout.
CONVERTERS = {"lavis": convert_lavis_checkpoint, "release": convert_release_checkpoint}


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, convert, print a summary; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="LAVIS .pth checkpoint (read with weights_only=True)")
    parser.add_argument("--output", required=True, help="output dir")
    parser.add_argument("--base", default=None, help="transformers InstructBLIP / BLIP-2 dir with the frozen weights")
    parser.add_argument(
        "--layout", choices=sorted(CONVERTERS), default="lavis",
        help="lavis: a LAVIS InstructBLIP / BLIP-2 checkpoint; release: RA-BLIP's release (multi_image concat)",
    )
    args = parser.parse_args(argv)
    try:
        report = CONVERTERS[args.layout](args.input, args.output, base=args.base)
    except RablipError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(
        f"converted {args.input} -> {args.output}: {len(report.mapped)} mapped, {len(report.dropped)} dropped "
        f"by rule, {len(report.filled_from_base)} filled from base (see conversion_report.json)"
    )
    for note in report.notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
