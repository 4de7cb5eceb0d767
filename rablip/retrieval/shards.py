"""Embedding shards: the on-disk format the encoder writes and the index builder reads.

A shard directory holds, for each shard ``shard_XXXXX``:

- ``shard_XXXXX.npy``: a float32 or float16 array, one row per knowledge-base item;
- ``shard_XXXXX.ids.txt``: the item id of each row, one per line, in row order;

and ``shards.json``, the manifest listing the finished shards (name, rows), the width, the dtype and
the fingerprint of the encoder that produced them. Every file is written to a temporary name and
renamed into place (ids first, the array last), and the manifest is rewritten atomically after the
shard files exist (:func:`rablip.utils.artefacts.write_manifest`), so a shard whose write was
interrupted is never listed. Shards are written where they are read, not built beside and renamed:
finished shards are kept across a crash (a resumed encoding skips them), several processes write
into one directory, and a manifest stays true while a shard is added.

:func:`open_embeddings` opens either such a directory or a single ``.npy`` file (with an optional
ids file; without one the ids are the row numbers) as an :class:`EmbeddingSource`: the arrays are
memory-mapped, rows are read in chunks or gathered by position, never the whole matrix at once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rablip.errors import DataError
from rablip.retrieval.idmap import IdMap, check_ids_writable
from rablip.utils.artefacts import write_manifest
from rablip.utils.io import atomic_write, read_json

MANIFEST_NAME = "shards.json"
SHARDS_FORMAT = "rablip-embedding-shards"
SHARDS_VERSION = 1
ALLOWED_DTYPES = ("float32", "float16")
_SHARD_NAME = re.compile(r"^shard_(\d{5,})\.npy$")


def shard_name(shard_index: int) -> str:
    """The base name of shard number ``shard_index``: ``shard_00042``."""
    return f"shard_{shard_index:05d}"


def write_shard(
    directory: str | os.PathLike,
    shard_index: int,
    embeddings: np.ndarray,
    ids: Sequence[str],
    *,
    encoder_fingerprint: str = "",
    update_manifest: bool = True,
) -> Path:
    """Write one shard (array and ids, each atomically) and, by default, list it in ``shards.json``.

    Several processes writing into one directory pass ``update_manifest=False`` and let one process
    call :func:`write_shards_manifest` once all of them are done. Returns the array's path.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    embeddings = np.asarray(embeddings)
    name = shard_name(shard_index)
    where = f"shard {name} in {directory}"
    if embeddings.ndim != 2 or embeddings.shape[1] == 0:
        raise DataError(f"{where}: embeddings must be a 2-D (rows, dim) array, got shape {embeddings.shape}.")
    if embeddings.dtype.name not in ALLOWED_DTYPES:
        raise DataError(f"{where}: dtype {embeddings.dtype} is not supported; use one of {ALLOWED_DTYPES}.")
    checked_ids = check_ids_writable(ids, where)
    if len(checked_ids) != embeddings.shape[0]:
        raise DataError(f"{where}: {len(checked_ids)} ids for {embeddings.shape[0]} embedding rows.")
    ids_text = "".join(f"{item_id}\n" for item_id in checked_ids).encode("utf-8")
    atomic_write(directory / f"{name}.ids.txt", lambda handle: handle.write(ids_text))
    array_path = directory / f"{name}.npy"
    atomic_write(array_path, lambda handle: np.save(handle, np.ascontiguousarray(embeddings)))
    if update_manifest:
        write_shards_manifest(directory, encoder_fingerprint=encoder_fingerprint)
    return array_path


def list_finished_shards(directory: str | os.PathLike) -> list[str]:
    """Names of the shards whose array and ids files both exist under their final names, in order."""
    directory = Path(directory)
    names = []
    for path in sorted(directory.iterdir()):
        match = _SHARD_NAME.match(path.name)
        if match and (directory / f"{path.name[:-4]}.ids.txt").is_file():
            names.append(path.name[:-4])
    return names


def _array_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"embedding file {path} cannot be read as a .npy array: {err}") from None
    return array.shape, array.dtype


def write_shards_manifest(directory: str | os.PathLike, *, encoder_fingerprint: str = "") -> Path:
    """Scan the finished shards, check they agree (width, dtype, ids count), write ``shards.json``."""
    directory = Path(directory)
    entries, dims, dtypes = [], set(), set()
    for name in list_finished_shards(directory):
        shape, dtype = _array_header(directory / f"{name}.npy")
        if len(shape) != 2:
            raise DataError(f"shard {directory / name}.npy has shape {shape}; expected (rows, dim).")
        ids = IdMap.open(directory / f"{name}.ids.txt", expected_count=shape[0])
        ids.close()
        entries.append({"name": name, "rows": int(shape[0])})
        dims.add(int(shape[1]))
        dtypes.add(dtype.name)
    if len(dims) > 1 or len(dtypes) > 1:
        raise DataError(
            f"shards in {directory} disagree: widths {sorted(dims)}, dtypes {sorted(dtypes)}. "
            "All shards must come from one encoder run; remove the stray shards."
        )
    manifest = {
        "format": SHARDS_FORMAT,
        "version": SHARDS_VERSION,
        "dim": dims.pop() if dims else 0,
        "dtype": dtypes.pop() if dtypes else "float32",
        "encoder_fingerprint": encoder_fingerprint,
        "count": sum(entry["rows"] for entry in entries),
        "shards": entries,
    }
    return write_manifest(directory, MANIFEST_NAME, manifest)


@dataclass
class EmbeddingSource:
    """Memory-mapped embeddings (one ``.npy`` or many shards) with their row -> item id map."""

    path: Path
    """The ``.npy`` file or the shard directory that was opened."""
    arrays: list[np.ndarray]
    ids: list[IdMap]
    encoder_fingerprint: str
    ids_path: Path | None = None
    """The ids file given next to a single ``.npy`` (None for shards or row-number ids)."""

    def __post_init__(self) -> None:
        self.offsets = np.cumsum([0] + [array.shape[0] for array in self.arrays]).astype(np.int64)

    @property
    def count(self) -> int:
        return int(self.offsets[-1])

    @property
    def dim(self) -> int:
        return int(self.arrays[0].shape[1]) if self.arrays else 0

    @property
    def dtype(self) -> str:
        return self.arrays[0].dtype.name if self.arrays else "float32"

    @property
    def is_shard_directory(self) -> bool:
        return self.path.is_dir()

    def iter_chunks(self, chunk_size: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(first_row, rows)`` float32 chunks of ``chunk_size`` rows (the last may be shorter).

        Chunks run across shard boundaries; only one chunk is in memory at a time.
        """
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        for start in range(0, self.count, chunk_size):
            yield start, self.read_range(start, min(start + chunk_size, self.count))

    def read_range(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (global positions) as one contiguous float32 array."""
        pieces = []
        for shard, array in enumerate(self.arrays):
            low, high = max(start, self.offsets[shard]), min(stop, self.offsets[shard + 1])
            if low < high:
                pieces.append(array[low - self.offsets[shard] : high - self.offsets[shard]])
        if not pieces:
            return np.zeros((0, self.dim), np.float32)
        joined = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        return np.ascontiguousarray(joined, dtype=np.float32)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """Rows at arbitrary global positions (any shape of ``rows``), float32, shape ``rows.shape + (dim,)``.

        Each shard is read once with sorted positions so the memory map is walked forwards.
        """
        rows = np.asarray(rows, dtype=np.int64)
        flat = rows.reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= self.count):
            raise IndexError(f"rows outside 0..{self.count - 1} requested from {self.path}")
        unique_rows, inverse = np.unique(flat, return_inverse=True)
        gathered = np.empty((unique_rows.size, self.dim), np.float32)
        shard_of_row = np.searchsorted(self.offsets, unique_rows, side="right") - 1
        for shard in np.unique(shard_of_row):
            selected = shard_of_row == shard
            gathered[selected] = self.arrays[shard][unique_rows[selected] - self.offsets[shard]]
        return gathered[inverse].reshape(rows.shape + (self.dim,))

    def iter_ids(self) -> Iterator[str]:
        """Every item id in global row order."""
        for id_map in self.ids:
            yield from id_map

    def id_of(self, row: int) -> str:
        """The item id of global row ``row``."""
        shard = int(np.searchsorted(self.offsets, row, side="right") - 1)
        return self.ids[shard][row - int(self.offsets[shard])]

    def close(self) -> None:
        """Release the id maps (the arrays are released when the source is dropped)."""
        for id_map in self.ids:
            id_map.close()


def _open_single_array(path: Path, ids_path: Path | None) -> EmbeddingSource:
    if path.suffix != ".npy":
        raise DataError(f"embeddings {path}: expected a .npy file or a shard directory with {MANIFEST_NAME}.")
    if not path.is_file():
        raise DataError(f"embeddings file not found: {path}. Check the path.")
    shape, dtype = _array_header(path)
    if len(shape) != 2 or shape[1] == 0:
        raise DataError(f"embeddings file {path} has shape {shape}; expected a 2-D (items, dim) array.")
    if dtype.name not in ALLOWED_DTYPES:
        raise DataError(f"embeddings file {path} has dtype {dtype}; save it as float32 or float16.")
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    id_map = IdMap.open(ids_path, expected_count=shape[0]) if ids_path else IdMap.row_numbers(shape[0])
    return EmbeddingSource(path, [array], [id_map], encoder_fingerprint="", ids_path=ids_path)


def _open_shard_directory(directory: Path) -> EmbeddingSource:
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.is_file():
        raise DataError(
            f"shard directory {directory} has no {MANIFEST_NAME}: the encoding did not finish or this is "
            "not an embedding shard directory. Re-run the encoder (or write_shards_manifest) first."
        )
    manifest = read_json(manifest_path, "embedding shard manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != SHARDS_FORMAT:
        raise DataError(f"{manifest_path} is not a rablip embedding shard manifest (format {SHARDS_FORMAT!r}).")
    if not manifest.get("shards"):
        raise DataError(f"{manifest_path} lists no shards; there is nothing to index.")
    arrays, ids = [], []
    for entry in manifest["shards"]:
        array_path = directory / f"{entry['name']}.npy"
        if not array_path.is_file():
            raise DataError(f"{manifest_path} lists shard {entry['name']} but {array_path} is missing.")
        array = np.load(array_path, mmap_mode="r", allow_pickle=False)
        if array.ndim != 2 or array.shape[0] != entry["rows"] or array.shape[1] != manifest["dim"]:
            raise DataError(
                f"{array_path} has shape {array.shape}, but {manifest_path} says ({entry['rows']}, "
                f"{manifest['dim']}). The shard was changed after encoding; re-run the encoder."
            )
        arrays.append(array)
        ids.append(IdMap.open(directory / f"{entry['name']}.ids.txt", expected_count=entry["rows"]))
    return EmbeddingSource(directory, arrays, ids, encoder_fingerprint=str(manifest.get("encoder_fingerprint", "")))


def open_embeddings(path: str | os.PathLike, ids_path: str | os.PathLike | None = None) -> EmbeddingSource:
    """Open a shard directory, or a single ``.npy`` file with an optional ids file, memory-mapped."""
    path = Path(path)
    if path.is_dir():
        if ids_path is not None:
            raise DataError(f"an ids file was given for the shard directory {path}; shards carry their own ids.")
        return _open_shard_directory(path)
    return _open_single_array(path, Path(ids_path) if ids_path is not None else None)
