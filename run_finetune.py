"""Fine-tune the generator with retrieved references (ASKG, noise-resilient training).

Usage: python run_finetune.py --config PATH [key=value ...] [--print-config] [--debug]
"""

from rablip.config.cli import parse_config
from rablip.stages.finetune import finetune
from rablip.utils.cli import run_main


def main(argv: list[str]) -> int:
    return finetune(parse_config(argv, __doc__))


if __name__ == "__main__":
    run_main(main)
