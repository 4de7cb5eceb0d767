"""Seeding and main-process logging."""

import logging
import random

import numpy as np
import torch

from rablip.utils.logging import get_logger
from rablip.utils.seed import seed_everything


def draw():
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_seed_everything_repeats_and_rank_offsets():
    seed_everything(5)
    first = draw()
    seed_everything(5)
    assert draw() == first
    seed_everything(5, rank=1)
    assert draw() != first


def test_info_logs_only_on_main_process(monkeypatch, capsys):
    logger = get_logger("rablip.test")
    handler = logging.getLogger("rablip").handlers[0]
    monkeypatch.setattr(handler, "stream", __import__("sys").stderr)
    monkeypatch.setenv("RANK", "1")
    logger.info("hidden on rank 1")
    logger.warning("warned on rank 1")
    monkeypatch.setenv("RANK", "0")
    logger.info("shown on rank 0")
    err = capsys.readouterr().err
    assert "hidden on rank 1" not in err and "warned on rank 1" in err and "shown on rank 0" in err
