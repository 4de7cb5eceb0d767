"""Seeding of python, numpy and torch."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed every generator rablip draws from; each process gets ``seed + rank``. Returns that seed."""
    value = seed + rank
    os.environ["PYTHONHASHSEED"] = str(value)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)
    return value
