"""The main job: the synthetic knowledge-VQA experiment.

    python scripts/demo.py [--seed S] [--entities N] [--out DIR]

This version prints the resolved configuration of each stage of the synthetic experiment and says
which stages this version of rablip can run; the full experiment (world, tokenizers, pre-training,
index, three fine-tuned variants, evaluation, knowledge edit, results table) lands with the demo
stage.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rablip.config.load import load_config, to_yaml  # noqa: E402
from rablip.utils.cli import run_main  # noqa: E402

STAGES = [
    ("make the synthetic world", "rablip.data.synthetic.world", "scripts/make_synthetic.py"),
    ("build the knowledge-base store", "rablip.data.kb", "scripts/build_kb.py"),
    ("pre-train the fusion encoder", "rablip.training.pretrain", "run_pretrain.py"),
    ("encode the knowledge base and build the index", "rablip.retrieval.index", "scripts/build_index.py"),
    ("fine-tune the generator", "rablip.training.finetune", "run_finetune.py"),
    ("evaluate", "rablip.evaluation.run", "run_eval.py"),
]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--entities", type=int, default=96)
    parser.add_argument("--out", default="runs/demo")
    args = parser.parse_args(argv)
    overrides = [f"run.seed={args.seed}", f"data.synthetic.entities={args.entities}",
                 f"data.synthetic.world_dir={args.out}/world"]
    for stage in ("pretrain", "finetune", "eval"):
        path = ROOT / "configs" / "experiment" / f"synthetic_{stage}.yaml"
        cfg = load_config(path, [*overrides, f"run.output_dir={args.out}/{stage}"])
        print(f"# ---- {path.relative_to(ROOT)} (resolved) ----")
        print(to_yaml(cfg))
    print("# ---- stages of the synthetic experiment ----")
    for title, module, command in STAGES:
        present = importlib.util.find_spec(module) is not None
        print(f"  [{'available' if present else 'not yet   '}] {title:48s} {command}")
    return 0


if __name__ == "__main__":
    run_main(main)
