"""The id index of a knowledge-base store: sorted 64-bit id hashes and the rows they point to.

Two ``.npy`` arrays saved next to the Arrow data and memory-mapped on open, so that a store of
tens of millions of items opens in milliseconds without building a Python dict: ``hashes``
(uint64, sorted) and ``rows`` (the row of each hash). A lookup hashes the id, binary-searches
``hashes`` and checks the id stored in the candidate row, so a hash collision can never return
the wrong item. Building the index is also where duplicate ids are found: equal ids have equal
hashes and end up next to each other after the sort, so no set of ids is ever held in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from rablip.errors import DataError

ID_HASH_NAME = "blake2b-64"
"""The id hash, recorded in the manifest; a store built with another hash must be rebuilt."""
HASHES_FILE = "id_hashes.npy"
ROWS_FILE = "id_rows.npy"


def hash_id(item_id: str) -> int:
    """The stable 64-bit hash of one item id (blake2b, 8-byte digest, little-endian)."""
    return int.from_bytes(hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest(), "little")


def hash_ids(item_ids: Sequence[str]) -> np.ndarray:
    """The hashes of many ids as a uint64 array, equal element-wise to :func:`hash_id`."""
    digests = b"".join(hashlib.blake2b(i.encode("utf-8"), digest_size=8).digest() for i in item_ids)
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64, copy=False)


class IdIndex:
    """Sorted id hashes with their row numbers; answers "which rows may hold this id"."""

    def __init__(self, hashes: np.ndarray, rows: np.ndarray) -> None:
        self.hashes = hashes
        self.rows = rows

    def __len__(self) -> int:
        return int(self.hashes.shape[0])

    @classmethod
    def build(
        cls,
        id_batches: Iterable[Sequence[str]],
        count: int,
        id_at_row: Callable[[int], str],
        where: str,
    ) -> IdIndex:
        """Hash ``count`` ids given in row order, sort them, and refuse duplicate ids.

        ``id_at_row`` reads the id of one row back; it is only called for rows whose hashes
        collide. ``where`` names the input in the duplicate-id error message.
        """
        hashes = np.empty(count, dtype=np.uint64)
        filled = 0
        for batch in id_batches:
            hashes[filled : filled + len(batch)] = hash_ids(batch)
            filled += len(batch)
        if filled != count:
            raise DataError(f"{where}: expected {count} ids while indexing, read {filled}")
        order = np.argsort(hashes, kind="stable")
        hashes = hashes[order]
        _refuse_duplicate_ids(hashes, order, id_at_row, where)
        row_dtype = np.uint32 if count < 2**32 else np.int64
        return cls(hashes, order.astype(row_dtype))

    def save(self, directory: Path) -> None:
        """Write the two arrays into ``directory``."""
        np.save(directory / HASHES_FILE, self.hashes)
        np.save(directory / ROWS_FILE, self.rows)

    @classmethod
    def load(cls, directory: Path) -> IdIndex:
        """Memory-map the two arrays from ``directory``."""
        hashes = np.load(directory / HASHES_FILE, mmap_mode="r", allow_pickle=False)
        rows = np.load(directory / ROWS_FILE, mmap_mode="r", allow_pickle=False)
        # Plain ndarray views of the same mapped memory: indexing a np.memmap is several times slower.
        return cls(hashes.view(np.ndarray), rows.view(np.ndarray))

    def candidate_rows(self, item_id: str) -> list[int]:
        """All rows whose id hash equals that of ``item_id`` (almost always zero or one)."""
        target = np.uint64(hash_id(item_id))
        position = int(self.hashes.searchsorted(target))
        rows = []
        while position < len(self) and self.hashes[position] == target:
            rows.append(int(self.rows[position]))
            position += 1
        return rows

    def first_candidates(self, item_ids: Sequence[str]) -> np.ndarray:
        """For each id, the first row with its hash, or -1 where no row has it (vectorised)."""
        rows = np.full(len(item_ids), -1, dtype=np.int64)
        if len(self) == 0 or len(item_ids) == 0:
            return rows
        targets = hash_ids(item_ids)
        positions = np.minimum(np.searchsorted(self.hashes, targets, side="left"), len(self) - 1)
        found = np.asarray(self.hashes[positions]) == targets
        rows[found] = np.asarray(self.rows[positions[found]], dtype=np.int64)
        return rows


def _refuse_duplicate_ids(
    sorted_hashes: np.ndarray, order: np.ndarray, id_at_row: Callable[[int], str], where: str
) -> None:
    """Raise DataError when two rows hold the same id; equal hashes of different ids are fine."""
    if sorted_hashes.shape[0] < 2:
        return
    repeats = np.flatnonzero(sorted_hashes[1:] == sorted_hashes[:-1])
    position_index = 0
    while position_index < len(repeats):
        # A run of equal hashes spans positions start..end; almost always two rows with one id,
        # but distinct ids may collide, so every id in the run is compared with the others.
        start = int(repeats[position_index])
        end = start + 1
        while position_index + 1 < len(repeats) and int(repeats[position_index + 1]) == end:
            position_index += 1
            end += 1
        position_index += 1
        first_row_of_id: dict[str, int] = {}
        for position in range(start, end + 1):
            row = int(order[position])
            item_id = id_at_row(row)
            if item_id in first_row_of_id:
                raise DataError(
                    f"{where}: duplicate knowledge-base item id {item_id!r} (items #{first_row_of_id[item_id]} "
                    f"and #{row} of the input, counting from 0). Item ids must be unique: remove or "
                    "rename the repeated items in the source and build again."
                )
            first_row_of_id[item_id] = row
