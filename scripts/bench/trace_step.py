"""Benchmark of the code's shape: which rablip files one fine-tuning run of one step passes through.

    python scripts/bench/trace_step.py

Builds a 12-entity synthetic world with its tiny generator (no warm-ups) in a temporary directory, then runs the fine-tuning stage (``rablip.stages.finetune.finetune``, what
``run_finetune.py`` calls) for one optimizer step of batch 2 with ``configs/experiment/synthetic_finetune.yaml``
under ``sys.setprofile``. It prints, as JSON, the rablip files whose functions were called during the
whole stage, inside the training loop (from the call of ``rablip.training.trainer.train`` on), and
during the optimizer step itself (from the step's learning-rate update, ``set_lr``, to the checkpoint
save after it: data loading, sample assembly, collation, forward, loss, backward, optimizer, logging).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from rablip.config import load_config  # noqa: E402
from rablip.stages.finetune import finetune  # noqa: E402
from rablip.synthetic.make import make_synthetic  # noqa: E402
from rablip.synthetic.settings import load_settings  # noqa: E402

WORLD = ["world.entities=12", "world.align_images=8", "warmup.vision_steps=0", "warmup.reading_steps=0",
         "extra_pairs.count=0"]


def traced_files(cfg) -> tuple[set[str], set[str], set[str]]:
    """(files called during the stage, inside the training loop, during the step), relative to the repo."""
    package = str(ROOT / "rablip")
    stage: set[str] = set()
    loop: set[str] = set()
    step: set[str] = set()
    in_loop = in_step = False

    def profile(frame, event, arg) -> None:
        nonlocal in_loop, in_step
        path = frame.f_code.co_filename
        if event != "call" or not path.startswith(package):
            return
        relative = str(Path(path).relative_to(ROOT))
        name = frame.f_code.co_name
        if name == "_save" and relative == "rablip/training/trainer.py":
            in_step = False
        if name == "set_lr":  # once: the run has one step
            in_step = True
        stage.add(relative)
        if in_loop:
            loop.add(relative)
        if in_step:
            step.add(relative)
        if name == "train" and relative == "rablip/training/trainer.py":
            in_loop = True

    sys.setprofile(profile)
    try:
        finetune(cfg)
    finally:
        sys.setprofile(None)
    return stage, loop, step


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        world = out / "world"
        make_synthetic(world, load_settings(None, WORLD))
        cfg = load_config(str(ROOT / "configs/experiment/synthetic_finetune.yaml"), [
            f"data.root={world}", f"run.output_dir={out / 'run'}", "train.max_steps=1",
            "train.batch_size=2", "train.warmup_steps=1", "train.eval_every=0"])
        stage, loop, step = traced_files(cfg)
    print(json.dumps({"stage_files": len(stage), "loop_files": len(loop), "step_files": len(step),
                      "stage": sorted(stage), "loop": sorted(loop), "step": sorted(step)}, indent=1))


if __name__ == "__main__":
    main()
