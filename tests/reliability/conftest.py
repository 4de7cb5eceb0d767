"""Fixtures of the reliability tests: a tiny synthetic world with its generator checkpoint, built
once per session, and the entry points' ``main(argv)`` functions loaded from their files."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from rablip.synthetic.files import TINY_CHECKPOINT_DIR
from tests.retrieval.tiny_world import FINETUNE_WORLD, build_world

ROOT = Path(__file__).resolve().parents[2]
FINETUNE_CONFIG = ROOT / "configs" / "experiment" / "synthetic_finetune.yaml"


def entry_main(relative_path: str) -> Callable[[list[str]], int | None]:
    """The ``main(argv)`` of an entry-point script (run_finetune.py, scripts/build_kb.py, ...)."""
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(f"entry_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@dataclass(frozen=True)
class FinetuneWorld:
    """A 12-entity synthetic world (OK-VQA files, KB store, tiny generator) for ``run_finetune.py``."""

    world_dir: Path
    checkpoint: Path

    def args(self, run_dir: Path, *extra: str) -> list[str]:
        """``run_finetune.py`` arguments for two tiny steps on this world, writing into ``run_dir``."""
        return ["--config", str(FINETUNE_CONFIG), f"data.root={self.world_dir}", f"model.checkpoint={self.checkpoint}", "train.max_steps=2", "train.batch_size=2",
                "train.warmup_steps=1", "train.eval_every=0", f"run.output_dir={run_dir}", *extra]


@pytest.fixture(scope="session")
def tiny_finetune_world(tmp_path_factory) -> FinetuneWorld:
    world = build_world(tmp_path_factory.mktemp("reliability_world") / "world", *FINETUNE_WORLD)
    return FinetuneWorld(world, world / TINY_CHECKPOINT_DIR)
