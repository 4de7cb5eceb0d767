"""Deterministic data order: which examples each process sees at each micro-step.

The order is a pure function of (seed, micro-step), so a resumed run continues exactly where the
interrupted one stopped, and N processes with batch b see together the same global batches as one
process with batch N x b (rank r takes the r-th slice of each global batch).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class StepOrderSampler(Sampler[list[tuple[int, int]]]):
    """Yields, per micro-step, this rank's list of ``(example index, epoch)`` pairs.

    Each epoch is a fresh permutation seeded by ``(seed, epoch)``; the last incomplete global batch
    of an epoch is dropped. Iteration starts at micro-step ``start`` and never ends (the trainer
    stops at ``train.max_steps``).
    """

    def __init__(self, num_examples: int, batch_size: int, *, world_size: int = 1, rank: int = 0,
                 seed: int = 0, start: int = 0, shuffle: bool = True) -> None:
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.start = start
        self.shuffle = shuffle
        self.global_batch = batch_size * world_size
        self.per_epoch = num_examples // self.global_batch
        if self.per_epoch == 0:
            raise ValueError(f"{num_examples} examples are fewer than one global batch of {self.global_batch}; "
                             "lower train.batch_size")
        self._epoch_cache: tuple[int, np.ndarray] | None = None

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            order = (np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
                     if self.shuffle else np.arange(self.num_examples))
            self._epoch_cache = (epoch, order)
        return self._epoch_cache[1]

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The example indices of epoch ``epoch`` in the order drawn (rank r takes the r-th slice of
        each run of ``global_batch`` of them; the incomplete last run is dropped)."""
        return self._permutation(epoch)

    def batch_at(self, micro_step: int) -> list[tuple[int, int]]:
        epoch, position = divmod(micro_step, self.per_epoch)
        begin = position * self.global_batch + self.rank * self.batch_size
        indices = self._permutation(epoch)[begin:begin + self.batch_size]
        return [(int(i), epoch) for i in indices]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start
        while True:
            yield self.batch_at(step)
            step += 1

    def __len__(self) -> int:  # one epoch, for progress display only
        return self.per_epoch
