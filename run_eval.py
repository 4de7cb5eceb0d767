"""Answer a split, write official-format predictions, score them and write metrics.json and report.html.

Usage: python run_eval.py --config PATH [key=value ...] [--print-config] [--debug]
"""

from rablip.config.cli import parse_config
from rablip.stages.evaluate import evaluate
from rablip.utils.cli import run_main


def main(argv: list[str]) -> int:
    return evaluate(parse_config(argv, __doc__))


if __name__ == "__main__":
    run_main(main)
