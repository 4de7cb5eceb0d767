"""Which sample of a streamed corpus each extra-pair slot of the pre-training dataset takes.

The pre-training dataset is indexed by ``(index, epoch)`` and the trainer's
:class:`~rablip.training.order.StepOrderSampler` decides, as a pure function of (seed, micro-step), which
process draws which index at which micro-step. Indices from ``first_extra`` on are extra-pair slots. With a
sharded corpus (:class:`~rablip.data.pair_shards.ShardedPairs`) each slot is mapped, from that same order,
to a stream and a position in it:

- the stream: ``rank x K + (micro-step mod K)``, K = ``max(1, data.num_workers)``. A DataLoader gives its
  K workers the micro-batches in turn, so one worker gets the micro-steps of one residue mod K: every
  process and every worker reads a stream of its own, and with it shards no other reads;
- the position: how many extra slots of that stream came before, in micro-step order (within a
  micro-batch, in batch order), counted from micro-step 0 over every epoch.

Nothing about the streams is saved in checkpoints: a run resumed at micro-step m (``TrainerState.
micro_steps``) computes the same positions, so every stream starts at the sample the interrupted run
would have read next, and the shards wholly before it are never opened. A resumed run must keep what the
order depends on (seed, processes, batch size, ``data.num_workers``, the pairs and ``share``): changing
one re-deals the corpus as if the run had started with the new value.
"""

from __future__ import annotations

import numpy as np

from rablip.data.pair_shards import PairTuple, ShardedPairs
from rablip.training.order import StepOrderSampler


class SlotStreams:
    """Maps extra slots ``(index >= first_extra, epoch)`` to ``(stream, position)``; see the module docstring."""

    def __init__(self, num_examples: int, first_extra: int, batch_size: int, *, world_size: int = 1,
                 workers: int = 0, seed: int = 0) -> None:
        self.first_extra = first_extra
        self.world_size = world_size
        self.per_process = max(1, workers)
        self.order = StepOrderSampler(num_examples, batch_size, world_size=world_size, seed=seed)
        self._starts: list[np.ndarray] = [np.zeros(self.streams, dtype=np.int64)]
        """Epoch e -> the position each stream is at when epoch e begins (known up to the latest epoch seen)."""
        self._epoch: tuple[int, np.ndarray, np.ndarray] | None = None

    @property
    def streams(self) -> int:
        """Streams in all: processes x max(1, data.num_workers)."""
        return self.world_size * self.per_process

    def _epoch_slots(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For epoch ``epoch``: the stream and position of each extra slot (-1 for slots the epoch leaves
        out), and how many slots each stream takes in the epoch."""
        order = self.order
        steps, global_batch = order.per_epoch, order.global_batch
        used = order.epoch_order(epoch)[:steps * global_batch].reshape(steps, self.world_size, order.batch_size)
        micro = epoch * steps + np.arange(steps)
        stream = (np.arange(self.world_size)[None, :, None] * self.per_process
                  + (micro % self.per_process)[:, None, None])
        stream = np.broadcast_to(stream, used.shape).ravel()
        used = used.ravel()
        extra = used >= self.first_extra
        slot_stream = np.full(order.num_examples - self.first_extra, -1, dtype=np.int64)
        slot_position = np.full_like(slot_stream, -1)
        counts = np.zeros(self.streams, dtype=np.int64)
        for each in range(self.streams):
            mine = used[extra & (stream == each)] - self.first_extra
            slot_stream[mine] = each
            slot_position[mine] = np.arange(len(mine))
            counts[each] = len(mine)
        return slot_stream, slot_position, counts

    def locate(self, index: int, epoch: int) -> tuple[int, int]:
        """The stream and the position in it of extra slot ``index`` in epoch ``epoch``."""
        if self._epoch is None or self._epoch[0] != epoch:
            while len(self._starts) <= epoch:  # positions at the start of each epoch up to this one
                counts = self._epoch_slots(len(self._starts) - 1)[2]
                self._starts.append(self._starts[-1] + counts)
            slot_stream, slot_position, _ = self._epoch_slots(epoch)
            self._epoch = (epoch, slot_stream, slot_position + self._starts[epoch][np.maximum(slot_stream, 0)])
        _, slot_stream, slot_position = self._epoch
        slot = index - self.first_extra
        if not 0 <= slot < len(slot_stream) or slot_stream[slot] < 0:
            raise IndexError(f"({index}, {epoch}) is not an extra slot the step order draws")
        return int(slot_stream[slot]), int(slot_position[slot])


class StreamedPairs:
    """Extra pairs of a sharded corpus for the pre-training dataset: slot ``(index, epoch)`` -> its pair."""

    def __init__(self, shards: ShardedPairs, slots: SlotStreams) -> None:
        if shards.streams != slots.streams:
            raise ValueError(f"the corpus is read as {shards.streams} streams, the order has {slots.streams}")
        self.shards, self.slots = shards, slots

    def load(self, index: int, epoch: int) -> PairTuple:
        """(query image, question or "", target item, target image) of extra slot ``(index, epoch)``."""
        return self.shards.load(*self.slots.locate(index, epoch))
