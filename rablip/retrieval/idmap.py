"""Row -> knowledge-base item id maps backed by a plain text file (one id per line).

A knowledge base may hold tens of millions of items, so the ids are never turned into a Python list:
the file is memory-mapped and the start of every line is found once with numpy (a vectorised scan
for newline bytes), giving an int64 offsets array. Looking up a row slices the mapped bytes.
Without a file, the ids are the row numbers written as decimal strings.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from rablip.errors import DataError

_SCAN_BYTES = 64 * 2**20


def _line_starts(mapped: mmap.mmap | bytes, size: int) -> np.ndarray:
    """Byte offsets where each line starts, plus one final entry: the end of the last line + 1."""
    newline_positions = []
    for start in range(0, size, _SCAN_BYTES):
        block = np.frombuffer(mapped, dtype=np.uint8, count=min(_SCAN_BYTES, size - start), offset=start)
        newline_positions.append(np.flatnonzero(block == 10).astype(np.int64) + start)
    ends = np.concatenate(newline_positions) if newline_positions else np.zeros(0, np.int64)
    if size and (ends.size == 0 or ends[-1] != size - 1):
        ends = np.append(ends, size)  # a last line without a trailing newline
    return np.concatenate([np.zeros(1, np.int64), ends + 1])


class IdMap:
    """The item id of each row: from an ids file, or the row number itself when there is none."""

    def __init__(self, path: Path | None, count: int, starts: np.ndarray | None, mapped: mmap.mmap | None):
        self.path = path
        self.count = count
        self._starts = starts
        self._mapped = mapped

    @classmethod
    def row_numbers(cls, count: int) -> IdMap:
        """Ids ``"0"``, ``"1"``, ... for a source that came without an ids file."""
        return cls(None, count, None, None)

    @classmethod
    def open(cls, path: str | os.PathLike, expected_count: int | None = None) -> IdMap:
        """Map ``path`` (UTF-8, one id per line); check it holds ``expected_count`` lines if given."""
        path = Path(path)
        try:
            size = path.stat().st_size
            with path.open("rb") as handle:
                mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        except FileNotFoundError:
            raise DataError(f"ids file not found: {path}. Give the file with one item id per line.") from None
        except OSError as err:
            raise DataError(f"ids file {path} cannot be read: {err}") from err
        starts = _line_starts(mapped, size) if mapped is not None else np.zeros(1, np.int64)
        count = int(starts.size - 1)
        if expected_count is not None and count != expected_count:
            raise DataError(
                f"ids file {path} has {count} lines but the embeddings have {expected_count} rows. "
                "Each embedding row needs exactly one id line, in the same order."
            )
        return cls(path, count, starts, mapped)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, row: int) -> str:
        row = int(row)
        if not 0 <= row < self.count:
            raise IndexError(f"row {row} is outside the id map of {self.count} rows")
        if self._starts is None:
            return str(row)
        start, end = int(self._starts[row]), int(self._starts[row + 1]) - 1
        raw = self._mapped[start:end] if self._mapped is not None else b""
        return raw.decode("utf-8").rstrip("\r")

    def lookup(self, rows: Iterable[int]) -> list[str]:
        """Ids of ``rows``; a negative row (faiss's "no result") maps to ``""``."""
        return [self[row] if row >= 0 else "" for row in rows]

    def __iter__(self) -> Iterator[str]:
        for row in range(self.count):
            yield self[row]

    def close(self) -> None:
        """Release the memory map (the map stays usable until then)."""
        if self._mapped is not None:
            self._mapped.close()
            self._mapped = None


def check_ids_writable(ids: Iterable[str], where: str) -> list[str]:
    """The ids as a list of strings, refusing ones that cannot round-trip through a line-per-id file."""
    checked = []
    for position, item_id in enumerate(ids):
        if not isinstance(item_id, str) or not item_id or "\n" in item_id or "\r" in item_id:
            raise DataError(
                f"{where}: id at position {position} ({item_id!r}) is not a non-empty single-line string. "
                "Item ids must be non-empty and contain no line breaks."
            )
        checked.append(item_id)
    return checked
