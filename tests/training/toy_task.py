"""A toy training task for the trainer's tests: a small MLP regressing a synthetic linear target.

Importable (``build_task``, ``run``) and runnable as a script, alone or under ``torchrun`` /
``accelerate launch`` for real DDP ranks::

    python tests/training/toy_task.py [--sleep S] [--nan-at N] [--nan-kind loss|grad] \\
        [--rank-eval] key=value ...

``key=value`` are rablip config overrides (``rablip.config.load_config(None, overrides)``). Each
process writes ``toy_rank<r>.json`` (its rank and the world size it saw) into the run directory.
Exit codes follow ``run_finetune.py``: 0 done, 2 a RablipError (message on stderr), 143/130 when
stopped by SIGTERM/SIGINT after saving a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch.utils.data import Dataset

from rablip.config import Config, load_config
from rablip.stages.rundir import prepare_run_dir
from rablip.stages.runtime import SIGNAL_EXIT, make_accelerator
from rablip.training.checkpoint import trainable_state_dict, write_final_dir
from rablip.training.trainer import TrainerState, TrainingInterrupted, train

FEATURES = 8



class ToyDataset(Dataset):
    """``num_examples`` fixed (x, y) pairs, y a noisy linear function of x; indexed by (index, epoch)."""

    def __init__(self, num_examples: int = 64, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(1000 + seed)
        self.x = torch.randn(num_examples, FEATURES, generator=generator)
        true_weights = torch.randn(FEATURES, 1, generator=generator)
        self.y = self.x @ true_weights + 0.1 * torch.randn(num_examples, 1, generator=generator)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, _epoch = key
        return self.x[index], self.y[index]


def toy_collate(items: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {"x": torch.stack([x for x, _ in items]), "y": torch.stack([y for _, y in items])}


def toy_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(FEATURES, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


class ToyLoss:
    """Mean squared error; optionally non-finite at the ``nan_at``-th call (1-based).

    ``nan_kind="loss"`` makes the loss itself NaN; ``"grad"`` keeps the loss finite (it is 0 + the
    MSE) but makes every gradient NaN, as a square root at zero does in backward.
    """

    def __init__(self, sleep: float = 0.0, nan_at: int | None = None, nan_kind: str = "loss") -> None:
        self.sleep = sleep
        self.nan_at = nan_at
        self.nan_kind = nan_kind
        self.calls = 0

    def __call__(self, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        self.calls += 1
        if self.sleep:
            time.sleep(self.sleep)  # leaves room to signal a run mid-training
        prediction = model(batch["x"])
        loss = torch.nn.functional.mse_loss(prediction, batch["y"])
        if self.calls == self.nan_at:
            if self.nan_kind == "loss":
                loss = loss * float("nan")
            else:
                params = [p for p in model.parameters() if p.requires_grad]
                zero = sum((p - p.detach()).pow(2).sum() for p in params)
                loss = loss + torch.sqrt(zero)  # value unchanged, d sqrt(0) = 0/0 = NaN
        return loss, {"mse": float(loss.detach())}


@dataclass
class ToyTask:
    """What the trainer's tests train: the model and the plain callables :func:`train` takes."""

    model: torch.nn.Module
    dataset: Dataset
    collate: Callable
    loss: Callable
    save_final: Callable[[torch.nn.Module, Path], None]
    evaluate: Callable | None = None


def build_task(cfg: Config, loss: ToyLoss | None = None, rank_eval: bool = False,
               rank: int = 0) -> ToyTask:
    """The toy task; ``rank_eval`` adds an evaluation whose result depends on the rank."""

    def save_final(model: torch.nn.Module, out: Path) -> None:
        save_file(trainable_state_dict(model), str(out / "model.safetensors"))

    evaluate = None
    if rank_eval:
        def evaluate(model: torch.nn.Module) -> dict[str, float]:
            # Rank 0 sees its best score at the first evaluation, other ranks at the last one.
            evaluate.calls += 1
            return {"score": float(-evaluate.calls if rank == 0 else evaluate.calls)}
        evaluate.calls = 0

    return ToyTask(model=toy_model(cfg.run.seed), dataset=ToyDataset(seed=cfg.run.seed), collate=toy_collate,
                   loss=loss or ToyLoss(), save_final=save_final, evaluate=evaluate)


def train_toy(cfg: Config, task: ToyTask, accelerator, run_dir: Path) -> TrainerState:
    """Train the toy task and write its final model, as a stage does."""
    state = train(cfg, accelerator, run_dir, task.model, task.dataset, task.collate, task.loss, task.evaluate)
    if accelerator.is_main_process:
        write_final_dir(run_dir / "final", lambda out: task.save_final(task.model, out))
    accelerator.wait_for_everyone()
    return state


def run(overrides: list[str], loss: ToyLoss | None = None, rank_eval: bool = False) -> int:
    """Train the toy task with these config overrides in this process; returns the exit code."""
    cfg = load_config(None, overrides)
    accelerator = make_accelerator(cfg)
    # Main first: another rank checking the directory while the main one writes config.yaml would
    # see a non-empty directory without it (rablip.stages.rundir has that race when run concurrently).
    with accelerator.main_process_first():
        run_dir = prepare_run_dir(cfg, accelerator.is_main_process)
    seen = {"rank": accelerator.process_index, "world_size": accelerator.num_processes,
            "distributed_type": str(accelerator.distributed_type)}
    (run_dir / f"toy_rank{accelerator.process_index}.json").write_text(json.dumps(seen), encoding="utf-8")
    task = build_task(cfg, loss, rank_eval, accelerator.process_index)
    try:
        train_toy(cfg, task, accelerator, run_dir)
    except TrainingInterrupted as stop:
        print(stop, file=sys.stderr)
        return SIGNAL_EXIT.get(stop.signum, 1)
    finally:
        # Left to interpreter shutdown, gloo's threads sometimes abort the process ("terminate
        # called without an active exception", exit -6) after a successful run.
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds to sleep in each loss call")
    parser.add_argument("--nan-at", type=int, default=None, help="loss call (1-based) that is non-finite")
    parser.add_argument("--nan-kind", choices=("loss", "grad"), default="loss")
    parser.add_argument("--rank-eval", action="store_true", help="add a rank-dependent evaluation")
    args, overrides = parser.parse_known_args(argv)
    return run(overrides, ToyLoss(args.sleep, args.nan_at, args.nan_kind), args.rank_eval)


if __name__ == "__main__":
    from rablip.utils.cli import run_main

    run_main(main)
