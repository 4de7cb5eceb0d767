"""``rablip-score``: score a prediction file with the official metric of its benchmark.

Subcommands: one per benchmark of :data:`rablip.benchmarks.BENCHMARKS` (``okvqa`` with alias
``vqav2``, ``aokvqa``, ``webqa``, ``infoseek``, ``evqa``, ``oven``), whose module adds its file arguments. The scores are
printed as JSON and, with ``--output``, written atomically to a file. Predictions for ids the
reference data lack are ignored with one warning (as the official A-OKVQA and InfoSeek scripts do);
``--strict`` refuses them (``oven`` always refuses them: the official OVEN script fails on them;
``oven`` takes one or more ``--references`` and ``--predictions`` files and prints ``final``,
``query_score``, ``entity_score`` and the four seen/unseen accuracies). A user error (a malformed or mismatched file) prints one ``error: ...``
line and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from rablip.benchmarks import BENCHMARKS
from rablip.errors import DataError
from rablip.utils.cli import run_main
from rablip.utils.io import atomic_write_json


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subcommand per benchmark of the registry (other names: aliases)."""
    parser = argparse.ArgumentParser(prog="rablip-score", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, benchmark in BENCHMARKS.items():
        if name != benchmark.name:
            continue
        aliases = [other for other, same in BENCHMARKS.items() if same is benchmark and other != name]
        sub = commands.add_parser(name, help=benchmark.score_help, description=benchmark.score_help, aliases=aliases)
        sub.set_defaults(handler=benchmark.score_from_args)
        benchmark.add_score_arguments(sub)
        sub.add_argument("--strict", action="store_true",
                         help="refuse a prediction file with ids the reference data lack "
                              "(default: ignore them with one warning, as the official scripts do)")
        sub.add_argument("--output", help="also write the scores to this JSON file (atomically)")
        sub.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return parser


def score_main(argv: list[str]) -> int:
    """Parse ``argv``, score, print the JSON and write ``--output``; returns the exit code."""
    args = build_parser().parse_args(argv)
    scores = args.handler(args)
    if args.output:
        try:
            atomic_write_json(args.output, scores)
        except OSError as err:
            raise DataError(f"cannot write the scores to {args.output}: {err}. Choose a writable path.") from None
    json.dump(scores, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``rablip-score``): user errors exit 2 with one message."""
    run_main(score_main, argv)


if __name__ == "__main__":
    main()
