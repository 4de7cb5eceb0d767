"""Fine-tune the generator with retrieved references (ASKG, noise-resilient training).

Usage: python run_finetune.py --config PATH [key=value ...] [--print-config] [--debug]
"""

from rablip.utils.cli import run_main, run_stage


def main(argv: list[str]) -> int:
    return run_stage(argv, __doc__, "rablip.stages.finetune:finetune")


if __name__ == "__main__":
    run_main(main)
