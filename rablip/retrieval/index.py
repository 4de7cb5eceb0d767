"""Build, save, load and search a FAISS index over knowledge-base embeddings.

An index is a directory::

    index.faiss      the faiss index (always a CPU index on disk)
    ids.txt          row -> knowledge-base item id, one per line (absent when ids are row numbers)
    manifest.json    written last: encoder fingerprint, dim, metric, count, type and build
                     parameters, default search parameters, faiss version, sha256 of index.faiss
                     and ids.txt, and the embeddings used for exact re-ranking

:func:`build_index` trains on a seeded random sample of rows and adds the rest in chunks read from
the memory-mapped embedding files, in a work directory beside the target that is renamed into place
only when the manifest is written (:func:`rablip.utils.artefacts.build_beside`): a killed build
never leaves a directory that loads.
:meth:`Index.load` verifies the manifest (see :mod:`rablip.retrieval.index_manifest`) and moves the
index to all GPUs when faiss sees any. :meth:`Index.search` adds little over a raw faiss call;
with ``rerank_exact`` it re-scores ``k * rerank_factor`` candidates with the full-precision
embeddings read from their memory-mapped files, so a compressed index keeps the exact ordering.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm.auto import tqdm

from rablip.errors import RablipError
from rablip.retrieval import faiss_backend as backend
from rablip.retrieval.idmap import IdMap
from rablip.retrieval.index_manifest import (
    IDS_FILE,
    INDEX_FILE,
    INDEX_FORMAT,
    INDEX_FORMAT_VERSION,
    MANIFEST_NAME,
    METRIC,
    IndexCheckError,
    read_manifest,
    sha256_of_file,
    verify_manifest,
)
from rablip.retrieval.shards import EmbeddingSource, open_embeddings
from rablip.utils.artefacts import build_beside
from rablip.utils.logging import get_logger

_logger = get_logger("rablip.retrieval.index")
_RERANK_QUERY_BLOCK = 256


def _default_train_size(index_type: str, nlist: int, nbits: int) -> int:
    """Enough rows for faiss's k-means to stop warning: 40 per IVF list and per PQ centroid."""
    if index_type == "ivfflat":
        return 40 * nlist
    if index_type == "ivfpq":
        return max(40 * nlist, 40 * 2**nbits)
    return 0


def _train_sample(source: EmbeddingSource, train_size: int, seed: int) -> np.ndarray:
    """A seeded uniform sample of ``train_size`` rows (all rows when there are fewer)."""
    if train_size >= source.count:
        return source.read_range(0, source.count)
    rows = np.sort(np.random.default_rng(seed).choice(source.count, size=train_size, replace=False))
    return source.gather(rows)


def _write_ids(source: EmbeddingSource, path: Path) -> bool:
    """Copy the source's ids into ``path``; False (nothing written) when the ids are row numbers."""
    if not source.is_shard_directory and source.ids_path is None:
        return False
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for item_id in source.iter_ids():
            handle.write(item_id + "\n")
    return True


def _resolve_fingerprint(source: EmbeddingSource, given: str | None) -> str:
    recorded = source.encoder_fingerprint
    if given is not None and recorded and given != recorded:
        raise RablipError(
            f"--encoder-fingerprint {given!r} differs from {recorded!r} recorded in {source.path}/shards.json. "
            "Leave it out to use the recorded one, or index the embeddings of the intended encoder."
        )
    return given if given is not None else recorded


def _check_trainable(index_type: str, source: EmbeddingSource, *, nlist: int, m: int, nbits: int,
                     train_rows: int) -> None:
    """Refuse, with what to change, a setting faiss cannot build for these embeddings."""
    if index_type == "ivfpq" and (m <= 0 or source.dim % m):
        raise RablipError(f"ivfpq needs --m to divide the embedding width {source.dim}; {m} does not. Choose one "
                          f"of {', '.join(map(str, backend.divisors(source.dim)))}.")
    if index_type == "ivfpq" and not 1 <= nbits <= 16:
        raise RablipError(f"ivfpq needs --nbits between 1 and 16 (8 is usual); got {nbits}.")
    if index_type in backend.IVF_TYPES and nlist > source.count:
        raise RablipError(f"nlist {nlist} is larger than the {source.count} items; use at most {source.count}.")
    if index_type in backend.IVF_TYPES and nlist > train_rows:
        raise RablipError(f"--train-size {train_rows} is smaller than nlist {nlist}; k-means needs a training row "
                          "per list. Raise --train-size or lower --nlist.")
    needed = backend.pq_min_train_rows(nbits) if index_type == "ivfpq" else 0
    if train_rows < needed:
        fixes = ["use --index-type flat (exact, and as fast at this size)"]
        if train_rows >= 2:
            fixes.append(f"lower --nbits to {train_rows.bit_length() - 1} or less")
        if train_rows < source.count:
            fixes.append("raise --train-size")
        raise RablipError(
            f"ivfpq with --nbits {nbits} trains {needed} centroids per sub-quantizer and needs at least {needed} "
            f"training rows, but has {train_rows} ({source.count} items in {source.path}): {'; or '.join(fixes)}.")


def build_index(
    source: str | os.PathLike | EmbeddingSource,
    out_dir: str | os.PathLike,
    *,
    index_type: str = "flat",
    nlist: int | None = None,
    m: int | None = None,
    nbits: int = 8,
    hnsw_m: int = 32,
    ef_construction: int = backend.DEFAULT_HNSW_EF_CONSTRUCTION,
    train_size: int | None = None,
    encoder_fingerprint: str | None = None,
    chunk_size: int = 65_536,
    seed: int = 0,
    ids_path: str | os.PathLike | None = None,
    nprobe: int | None = None,
    ef_search: int = backend.DEFAULT_HNSW_EF_SEARCH,
    overwrite: bool = False,
    show_progress: bool = False,
) -> Path:
    """Build an index directory at ``out_dir`` from embeddings and return its path.

    ``source`` is a shard directory, a ``.npy`` file (``ids_path`` optional) or an open
    :class:`EmbeddingSource`. ``nlist``, ``m``, ``train_size`` and ``nprobe`` default to values
    derived from the item count and width (see :mod:`rablip.retrieval.faiss_backend`); ``nprobe``
    and ``ef_search`` are stored as the index's default search parameters. A setting faiss cannot
    build (``m`` not dividing the width, fewer training rows than IVF lists or PQ centroids) is a
    :class:`RablipError` saying what to change.
    """
    if index_type not in backend.INDEX_TYPES:
        raise RablipError(f"unknown index type {index_type!r}; choose one of {', '.join(backend.INDEX_TYPES)}.")
    if not isinstance(source, EmbeddingSource):
        source = open_embeddings(source, ids_path)
    if source.count == 0:
        raise RablipError(f"embeddings {source.path} hold no rows; there is nothing to index.")
    fingerprint = _resolve_fingerprint(source, encoder_fingerprint)
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and not overwrite:
        raise RablipError(f"{out_dir} already exists; choose another output directory or remove it first.")
    nlist = nlist or backend.default_nlist(source.count)
    m = m or backend.default_pq_m(source.dim)
    train_size = train_size or _default_train_size(index_type, nlist, nbits)
    _check_trainable(index_type, source, nlist=nlist, m=m, nbits=nbits, train_rows=min(train_size, source.count))
    params = {"nlist": nlist, "m": m, "nbits": nbits, "hnsw_m": hnsw_m, "ef_construction": ef_construction,
              "train_size": min(train_size, source.count), "chunk_size": chunk_size, "seed": seed}
    with build_beside(out_dir, MANIFEST_NAME) as build:
        building = build.path
        started = time.perf_counter()
        index = backend.make_index(index_type, source.dim, nlist=nlist, m=m, nbits=nbits, hnsw_m=hnsw_m,
                                   ef_construction=ef_construction)
        if not index.is_trained:
            backend.train(index, _train_sample(source, train_size, seed))
        adder = backend.ChunkAdder(index)
        with tqdm(total=source.count, unit="item", desc=f"adding to {index_type}", disable=not show_progress) as bar:
            for _, chunk in source.iter_chunks(chunk_size):
                adder.add(chunk)
                bar.update(chunk.shape[0])
        faiss.write_index(index, str(building / INDEX_FILE))
        has_ids = _write_ids(source, building / IDS_FILE)
        manifest = {
            "format": INDEX_FORMAT,
            "version": INDEX_FORMAT_VERSION,
            "encoder_fingerprint": fingerprint,
            "dim": source.dim,
            "metric": METRIC,
            "count": int(index.ntotal),
            "index_type": index_type,
            "build_params": params,
            "search_defaults": {"nprobe": nprobe or backend.default_nprobe(nlist), "ef_search": ef_search},
            "faiss_version": faiss.__version__,
            "index_file": INDEX_FILE,
            "index_sha256": sha256_of_file(building / INDEX_FILE),
            "ids_file": IDS_FILE if has_ids else None,
            "ids_sha256": sha256_of_file(building / IDS_FILE) if has_ids else None,
            "embeddings": {"path": str(Path(source.path).absolute()),
                           "ids_path": str(Path(source.ids_path).absolute()) if source.ids_path else None,
                           "count": source.count, "dtype": source.dtype},
            "build_seconds": round(time.perf_counter() - started, 3),
        }
        if out_dir.exists() and not overwrite:
            raise RablipError(f"{out_dir} already exists; choose another --out or pass overwrite.")
        build.commit(manifest)
    return out_dir


def _index_type_of(index: faiss.Index) -> str:
    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(index, faiss.IndexIVFPQ):
        return "ivfpq"
    if isinstance(index, faiss.IndexIVF):
        return "ivfflat"
    return "flat"


class Index:
    """A loaded index: search with :meth:`search`, map result rows to item ids with :meth:`ids_for`."""

    def __init__(self, directory: Path, manifest: dict[str, Any], faiss_index: faiss.Index, on_gpu: bool,
                 ids: IdMap, embeddings_path: Path | None) -> None:
        self.directory = directory
        self.manifest = manifest
        self.faiss_index = faiss_index
        """The index searched: the CPU index, or its clone on all GPUs."""
        self.on_gpu = on_gpu
        self.ids = ids
        self.count = int(manifest["count"])
        self.dim = int(manifest["dim"])
        self.index_type = str(manifest["index_type"])
        defaults = manifest.get("search_defaults", {})
        self.default_nprobe = int(defaults.get("nprobe", 1))
        self.default_ef_search = int(defaults.get("ef_search", backend.DEFAULT_HNSW_EF_SEARCH))
        self._knobs = backend.SearchKnobs(faiss_index, on_gpu)
        self._embeddings_path = embeddings_path
        self._embeddings: EmbeddingSource | None = None

    @classmethod
    def load(cls, directory: str | os.PathLike, *, expected_fingerprint: str | None = None,
             allow_foreign: bool = False, embeddings_path: str | os.PathLike | None = None,
             use_gpu: bool = True) -> Index:
        """Load and verify an index directory; refuse a foreign, damaged or unfinished one.

        ``expected_fingerprint`` is the fingerprint of the encoder that will embed the queries;
        ``allow_foreign=True`` turns a fingerprint or checksum mismatch, or a missing manifest, into
        a warning. ``embeddings_path`` points exact re-ranking at moved embeddings.
        """
        directory = Path(directory)
        manifest = read_manifest(directory, allow_foreign)
        if manifest is None:
            manifest = {"count": None, "dim": None, "index_type": None, "index_file": INDEX_FILE,
                        "ids_file": IDS_FILE if (directory / IDS_FILE).is_file() else None, "embeddings": {}}
        else:
            verify_manifest(directory, manifest, expected_fingerprint=expected_fingerprint,
                            allow_foreign=allow_foreign)
        index_path = directory / manifest["index_file"]
        try:
            cpu_index = faiss.read_index(str(index_path))
        except RuntimeError as err:
            raise IndexCheckError(f"{index_path} cannot be read by faiss {faiss.__version__}: {err}. "
                                  "Rebuild the index.") from None
        if manifest["count"] is None:
            manifest.update(count=cpu_index.ntotal, dim=cpu_index.d, index_type=_index_type_of(cpu_index))
        elif cpu_index.ntotal != manifest["count"] or cpu_index.d != manifest["dim"]:
            raise IndexCheckError(f"{index_path} holds {cpu_index.ntotal} vectors of width {cpu_index.d}, but "
                                  f"{directory / MANIFEST_NAME} says {manifest['count']} of width {manifest['dim']}.")
        ids = (IdMap.open(directory / manifest["ids_file"], expected_count=cpu_index.ntotal)
               if manifest.get("ids_file") else IdMap.row_numbers(cpu_index.ntotal))
        search_index, on_gpu = (backend.to_search_device(cpu_index, index_path.stat().st_size)
                                if use_gpu else (cpu_index, False))
        recorded = manifest.get("embeddings", {}).get("path")
        embeddings = Path(embeddings_path) if embeddings_path else (Path(recorded) if recorded else None)
        return cls(directory, manifest, search_index, on_gpu, ids, embeddings)

    def __len__(self) -> int:
        return self.count

    @property
    def embeddings(self) -> EmbeddingSource:
        """The full-precision embeddings the index was built from (opened on first use)."""
        if self._embeddings is None:
            if self._embeddings_path is None or not self._embeddings_path.exists():
                raise RablipError(
                    f"exact re-ranking needs the embeddings index {self.directory} was built from, but "
                    f"{self._embeddings_path or 'no path'} is not there (recorded in {MANIFEST_NAME}). "
                    "Pass embeddings_path= with their new location, or search without rerank_exact."
                )
            source = open_embeddings(self._embeddings_path)
            if source.count != self.count or source.dim != self.dim:
                raise RablipError(
                    f"embeddings {self._embeddings_path} hold {source.count} rows of width {source.dim}, "
                    f"but index {self.directory} has {self.count} of width {self.dim}. Point "
                    "embeddings_path at the embeddings the index was built from."
                )
            self._embeddings = source
        return self._embeddings

    def _check_queries(self, queries: np.ndarray, k: int) -> np.ndarray:
        if not isinstance(queries, np.ndarray) or queries.ndim != 2:
            shape = getattr(queries, "shape", None)
            raise RablipError(f"queries must be a 2-D (queries, {self.dim}) array, got shape {shape}.")
        if queries.shape[1] != self.dim:
            raise RablipError(f"queries have width {queries.shape[1]} but index {self.directory} holds "
                              f"width {self.dim}. Embed the queries with the index's encoder.")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise RablipError(f"k must be a positive integer, got {k!r}.")
        if queries.dtype != np.float32 or not queries.flags.c_contiguous:
            queries = np.ascontiguousarray(queries, dtype=np.float32)
        return queries

    def search(self, queries: np.ndarray, k: int, *, nprobe: int | None = None, ef_search: int | None = None,
               rerank_exact: bool = False, rerank_factor: int = 4) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, rows)`` for each query: float32 and int64 arrays of shape (Q, k).

        A row of -1 means fewer than ``k`` items were found. ``nprobe`` (IVF) and ``ef_search``
        (HNSW) default to the values stored at build time. With ``rerank_exact`` the top
        ``k * rerank_factor`` candidates are re-scored with the exact embeddings.
        """
        queries = self._check_queries(queries, k)
        self._knobs.set("nprobe", nprobe or self.default_nprobe)
        self._knobs.set("efSearch", ef_search or self.default_ef_search)
        if not rerank_exact:
            return self.faiss_index.search(queries, k)
        if rerank_factor < 1:
            raise RablipError(f"rerank_factor must be at least 1, got {rerank_factor}.")
        candidates = min(k * rerank_factor, self.count)
        _, candidate_rows = self.faiss_index.search(queries, candidates)
        return self._rerank(queries, candidate_rows, k)

    def _rerank(self, queries: np.ndarray, candidate_rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Re-order candidates by exact inner product; keep the best ``k`` (padded with -1 / -inf)."""
        scores_out = np.full((queries.shape[0], k), -np.inf, np.float32)
        rows_out = np.full((queries.shape[0], k), -1, np.int64)
        keep = min(k, candidate_rows.shape[1])
        for start in range(0, queries.shape[0], _RERANK_QUERY_BLOCK):
            block_rows = candidate_rows[start : start + _RERANK_QUERY_BLOCK]
            found = block_rows >= 0
            vectors = self.embeddings.gather(np.where(found, block_rows, 0))
            exact = np.matmul(vectors, queries[start : start + len(block_rows), :, None])[..., 0]
            exact[~found] = -np.inf
            order = np.argsort(-exact, axis=1, kind="stable")[:, :keep]
            scores_out[start : start + len(block_rows), :keep] = np.take_along_axis(exact, order, axis=1)
            best_rows = np.take_along_axis(block_rows, order, axis=1)
            rows_out[start : start + len(block_rows), :keep] = np.where(
                np.isfinite(scores_out[start : start + len(block_rows), :keep]), best_rows, -1)
        return scores_out, rows_out

    def ids_for(self, rows: np.ndarray) -> list[list[str]]:
        """Item ids for each query's result rows; a -1 row (no result) becomes ``""``."""
        return [self.ids.lookup(query_rows.tolist()) for query_rows in np.asarray(rows)]

    def close(self) -> None:
        """Release the id map and the embeddings opened for re-ranking."""
        self.ids.close()
        if self._embeddings is not None:
            self._embeddings.close()
