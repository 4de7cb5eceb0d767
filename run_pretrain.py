"""Pre-train the Q-Former and fusion encoder (ITC, ITM, ITG) on knowledge items and question-item pairs;
with ``train.stage=rerank``, train the re-ranker head on the frozen pre-trained encoder instead.

Usage: python run_pretrain.py --config PATH [key=value ...] [--print-config] [--debug]
"""

from rablip.config.cli import parse_config
from rablip.stages.pretrain import pretrain
from rablip.utils.cli import run_main


def main(argv: list[str]) -> int:
    return pretrain(parse_config(argv, __doc__))


if __name__ == "__main__":
    run_main(main)
