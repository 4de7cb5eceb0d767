"""Split a list of questions over processes and gather the answers back, each exactly once.

Process ``r`` of ``w`` takes the contiguous slice ``[r * n // w, (r + 1) * n // w)``, so the slices
cover every index once whatever ``n`` is (no padding, unlike a distributed sampler, so nothing is
duplicated when ``n`` does not divide evenly). :func:`gather_in_order` joins the slices on every
process and checks that the gathered positions are exactly ``0 .. n-1``.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch.distributed as dist

from rablip.utils.dist import process_rank_world

T = TypeVar("T")


def shard_bounds(total: int, rank: int, world: int) -> tuple[int, int]:
    """``[start, end)`` of process ``rank``'s slice of ``total`` items."""
    return rank * total // world, (rank + 1) * total // world


def gather_in_order(local: list[tuple[int, T]], total: int) -> list[T]:
    """Every process's ``(position, value)`` pairs joined into one list in position order.

    Raises RuntimeError when a position is missing or gathered twice (a bug, not a user error).
    """
    _, world = process_rank_world()
    parts: list[Any] = [None] * world
    if world > 1:
        dist.all_gather_object(parts, local)
    else:
        parts = [local]
    values: dict[int, T] = {}
    for part in parts:
        for position, value in part:
            if position in values:
                raise RuntimeError(f"evaluation gathered position {position} twice")
            values[position] = value
    if sorted(values) != list(range(total)):
        missing = sorted(set(range(total)) - set(values))[:5]
        raise RuntimeError(f"evaluation gathered {len(values)} of {total} answers (missing e.g. {missing})")
    return [values[position] for position in range(total)]
