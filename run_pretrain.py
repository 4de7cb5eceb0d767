"""Pre-train the Q-Former and fusion encoder (ITC, ITM, ITG) on knowledge items and question-item pairs.

Usage: python run_pretrain.py --config PATH [key=value ...] [--print-config] [--debug]
"""

from rablip.utils.cli import run_main, run_stage


def main(argv: list[str]) -> int:
    return run_stage(argv, __doc__, "rablip.stages.pretrain:pretrain")


if __name__ == "__main__":
    run_main(main)
