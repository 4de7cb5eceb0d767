"""A tiny synthetic world with a tiny generator checkpoint and a fresh (untrained) retrieval encoder.

Shared by the encoding and retriever tests: ``make_tiny_world(tmp)`` returns a config pointed at
``tmp`` (world, generator checkpoint, encoder, index and run dirs) with small shards and batches.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from rablip.config import load_config
from rablip.models.factory import build_retrieval_encoder, ensure_generator_checkpoint, load_generator
from rablip.synthetic.world import WorldSettings, build_world

ROOT = Path(__file__).resolve().parents[2]
PRETRAIN_CONFIG = ROOT / "configs" / "experiment" / "synthetic_pretrain.yaml"
ENTITIES = 12


def world_overrides(tmp: Path) -> list[str]:
    """Command-line overrides that point the synthetic pre-training config at ``tmp``."""
    return [f"data.synthetic.world_dir={tmp / 'world'}", f"data.synthetic.entities={ENTITIES}", "data.synthetic.align_images=0",
            f"run.output_dir={tmp / 'run'}", f"model.fusion.checkpoint={tmp / 'encoder'}",
            f"retrieval.index_dir={tmp / 'index'}", "retrieval.shard_rows=8", "retrieval.encode_batch_size=4",
            "data.synthetic.reading_warmup_steps=5", "data.synthetic.vision_warmup_steps=5"]


def make_tiny_world(tmp: Path, extra: list[str] | None = None):
    """Build the world, the generator checkpoint and a saved fresh retrieval encoder; return the config."""
    cfg = load_config(str(PRETRAIN_CONFIG), world_overrides(tmp) + (extra or []))
    build_world(cfg.data.synthetic.world_dir, WorldSettings(entities=ENTITIES, train_images_per_entity=1, align_images=0,
                                                            eval_images_per_entity=1))
    ensure_generator_checkpoint(cfg)
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
