"""Answer a split, write official-format predictions, score them and write metrics.json and report.html.

Usage: python run_eval.py --config PATH [key=value ...] [--print-config] [--debug]
"""

from rablip.utils.cli import run_main, run_stage


def main(argv: list[str]) -> int:
    return run_stage(argv, __doc__, "rablip.stages.evaluate:evaluate")


if __name__ == "__main__":
    run_main(main)
