"""A tiny synthetic world with a tiny generator checkpoint and a fresh (untrained) retrieval encoder.

Shared by the encoding and retriever tests: ``make_tiny_world(tmp)`` returns a config pointed at
``tmp`` (world, generator checkpoint, encoder, index and run dirs) with small shards and batches.
``build_world(dir, *settings)`` builds any tests' world with :func:`rablip.synthetic.make.make_synthetic`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from rablip.config import load_config
from rablip.models.factory import build_retrieval_encoder, load_generator
from rablip.synthetic.make import PARTS, make_synthetic
from rablip.synthetic.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
PRETRAIN_CONFIG = ROOT / "configs" / "experiment" / "synthetic_pretrain.yaml"
ENTITIES = 12
TEST_WORLD = (f"world.entities={ENTITIES}", "warmup.vision_steps=0", "warmup.reading_steps=0",
              "extra_pairs.count=0")
"""Settings of the tests' worlds: 12 entities, no warm-ups, no extra pairs (each test adds what it needs)."""
FINETUNE_WORLD = (*TEST_WORLD, "world.align_images=8")
"""The world of the fine-tuning tests (run_finetune.py with configs/experiment/synthetic_finetune.yaml)."""
RETRIEVAL_WORLD = (*TEST_WORLD, "world.align_images=0", "world.train_images_per_entity=1",
                   "world.eval_images_per_entity=1", "warmup.vision_steps=5", "warmup.reading_steps=5")
"""The world of the encoding, retriever and evaluation tests (:func:`make_tiny_world`)."""


def build_world(out_dir: Path, *settings: str, parts=PARTS) -> Path:
    """Build the ``parts`` of a synthetic world of ``settings`` (``key=value``) into ``out_dir``."""
    make_synthetic(out_dir, load_settings(None, list(settings)), parts=parts)
    return out_dir


def world_overrides(tmp: Path) -> list[str]:
    """Command-line overrides that point the synthetic pre-training config at ``tmp``."""
    return [f"data.root={tmp / 'world'}", f"run.output_dir={tmp / 'run'}", f"model.fusion.checkpoint={tmp / 'encoder'}",
            f"retrieval.index_dir={tmp / 'index'}", "retrieval.shard_rows=8", "retrieval.encode_batch_size=4",
            "data.extra_pairs.share=0"]


def make_tiny_world(tmp: Path, extra: list[str] | None = None):
    """Build the world, the generator checkpoint and a saved fresh retrieval encoder; return the config."""
    cfg = load_config(str(PRETRAIN_CONFIG), world_overrides(tmp) + (extra or []))
    build_world(Path(cfg.data.root), *RETRIEVAL_WORLD, parts=("world", "kb", "checkpoint"))
    torch.manual_seed(0)
    encoder = build_retrieval_encoder(cfg, load_generator(cfg))
    encoder.save_pretrained(cfg.model.fusion.checkpoint)
    return cfg


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread: these models are so small that more threads on a shared 2-core machine
    spend their time contending (30x slower measured)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def subprocess_env() -> dict[str, str]:
    """Environment for CLI subprocesses: one torch thread, as :func:`one_thread`."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
