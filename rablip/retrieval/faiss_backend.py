"""Everything rablip asks of faiss: index construction, training, adding, GPU placement, search knobs.

One code path serves a laptop and a GPU cluster. faiss is asked at run time whether it sees GPUs
(``faiss.get_num_gpus() > 0`` and a build with ``index_cpu_to_all_gpus``); when it does,

- IVF training runs its k-means assignments on all GPUs (``clustering_index``);
- adding to an IVF index assigns each chunk to its inverted list on the GPUs and stores the codes
  in the CPU index (``add_core`` with precomputed lists), so the saved file is an ordinary CPU index;
- a loaded index is cloned to every GPU: replicated when it is small, sharded (each GPU holds a
  slice, ``GpuMultipleClonerOptions.shard = True``) when it is larger than ``GPU_SHARD_BYTES``.
  HNSW has no GPU implementation in faiss and stays on the CPU.

Without GPUs the same functions run the CPU index directly. All indexes use the inner-product
metric: the embeddings are L2-normalised, so inner product is cosine similarity.
"""

from __future__ import annotations

import math

import faiss
import numpy as np

INDEX_TYPES = ("flat", "ivfflat", "ivfpq", "hnsw")
IVF_TYPES = ("ivfflat", "ivfpq")
GPU_SHARD_BYTES = 2 * 2**30
"""Indexes larger than this are sharded over the GPUs instead of replicated on each."""
DEFAULT_HNSW_EF_CONSTRUCTION = 80
DEFAULT_HNSW_EF_SEARCH = 128


def gpu_count() -> int:
    """How many GPUs faiss can use (0 for a CPU-only faiss build)."""
    if not hasattr(faiss, "index_cpu_to_all_gpus") or not hasattr(faiss, "get_num_gpus"):
        return 0
    return int(faiss.get_num_gpus())


def default_nlist(count: int) -> int:
    """Inverted lists for ``count`` items: about 4 * sqrt(count), at least 1, at most count // 39.

    faiss's k-means wants about 39 training points per centroid; small collections get fewer lists.
    """
    return max(1, min(int(round(4 * math.sqrt(count))), count // 39))


def default_pq_m(dim: int) -> int:
    """Sub-quantizers for PQ: one per 4 dimensions, capped at 64 (64 bytes per item at 8 bits)."""
    target = min(64, max(1, dim // 4))
    return max(m for m in range(1, target + 1) if dim % m == 0)


def pq_min_train_rows(nbits: int) -> int:
    """Training rows PQ needs at ``nbits`` bits per code: faiss's k-means wants one row per centroid."""
    return 2**nbits


def divisors(dim: int, limit: int = 64) -> list[int]:
    """The PQ sub-quantizer counts possible for width ``dim`` (those dividing it), up to ``limit``."""
    return [m for m in range(1, min(dim, limit) + 1) if dim % m == 0]


def default_nprobe(nlist: int) -> int:
    """Lists visited per query by default: about nlist / 32, at least 8 (or nlist), at most 256.

    On clustered 256-wide embeddings, 1-recall@10 no longer grows with nprobe beyond this (the PQ
    code is the limit; see BENCHMARKS.md, "Retrieval index").
    """
    return max(min(8, nlist), min(nlist, 256, int(round(nlist / 32))))


def make_index(index_type: str, dim: int, *, nlist: int, m: int, nbits: int, hnsw_m: int,
               ef_construction: int = DEFAULT_HNSW_EF_CONSTRUCTION) -> faiss.Index:
    """An empty inner-product index of ``index_type`` (see :data:`INDEX_TYPES`)."""
    metric = faiss.METRIC_INNER_PRODUCT
    if index_type == "flat":
        return faiss.IndexFlatIP(dim)
    if index_type == "ivfflat":
        return faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, metric)
    if index_type == "ivfpq":
        return faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, m, nbits, metric)
    if index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, metric)
        index.hnsw.efConstruction = ef_construction
        return index
    raise ValueError(f"unknown index type {index_type!r}; expected one of {INDEX_TYPES}")


def train(index: faiss.Index, sample: np.ndarray) -> None:
    """Train ``index`` on ``sample`` rows (a no-op for flat and HNSW); k-means on GPUs when present."""
    if index.is_trained:
        return
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    if gpu_count() > 0 and isinstance(index, faiss.IndexIVF):
        # faiss keeps a raw pointer: hold the GPU index here while training, then detach it.
        gpu_clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(index.d))
        index.clustering_index = gpu_clustering_index
        try:
            index.train(sample)
        finally:
            index.clustering_index = None
        return
    index.train(sample)


class ChunkAdder:
    """Adds row chunks to a CPU index in order, assigning IVF lists on the GPUs when there are any."""

    def __init__(self, index: faiss.Index) -> None:
        self.index = index
        self.next_row = 0
        self._gpu_quantizer = None
        if gpu_count() > 0 and isinstance(index, faiss.IndexIVF):
            self._gpu_quantizer = faiss.index_cpu_to_all_gpus(index.quantizer)

    def add(self, chunk: np.ndarray) -> None:
        """Append ``chunk`` (float32, C-contiguous) as the next rows."""
        if self._gpu_quantizer is None:
            self.index.add(chunk)
        else:
            _, lists = self._gpu_quantizer.search(chunk, 1)
            lists = np.ascontiguousarray(lists.reshape(-1))
            rows = np.arange(self.next_row, self.next_row + chunk.shape[0], dtype=np.int64)
            self.index.add_core(chunk.shape[0], faiss.swig_ptr(chunk), faiss.swig_ptr(rows), faiss.swig_ptr(lists))
        self.next_row += chunk.shape[0]


def to_search_device(index: faiss.Index, index_bytes: int) -> tuple[faiss.Index, bool]:
    """``(index to search, on_gpu)``: cloned to all GPUs when faiss has them, else the CPU index."""
    if gpu_count() == 0 or isinstance(index, faiss.IndexHNSW):
        return index, False
    options = faiss.GpuMultipleClonerOptions()
    options.shard = gpu_count() > 1 and index_bytes > GPU_SHARD_BYTES
    if isinstance(index, faiss.IndexIVFPQ) and index.pq.M > 48:
        # GPU IVFPQ keeps its lookup tables in shared memory; more than 48 sub-quantizers only fit in float16.
        options.useFloat16LookupTables = True
    return faiss.index_cpu_to_all_gpus(index, co=options), True


class SearchKnobs:
    """Sets nprobe (IVF) or efSearch (HNSW) on a CPU or GPU index, only when the value changes."""

    def __init__(self, index: faiss.Index, on_gpu: bool) -> None:
        self.index = index
        self.on_gpu = on_gpu
        self._current: dict[str, int] = {}
        self._cpu_ivf = None if on_gpu else _ivf_or_none(index)
        self._hnsw = index.hnsw if isinstance(index, faiss.IndexHNSW) else None

    def set(self, name: str, value: int) -> None:
        """Set ``nprobe`` or ``efSearch`` to ``value`` (ignored by indexes without that knob)."""
        if self._current.get(name) == value:
            return
        if name == "nprobe" and self._cpu_ivf is not None:
            self._cpu_ivf.nprobe = value
        elif name == "efSearch" and self._hnsw is not None:
            self._hnsw.efSearch = value
        elif name == "nprobe" and self.on_gpu:
            faiss.GpuParameterSpace().set_index_parameter(self.index, "nprobe", value)
        self._current[name] = value


def _ivf_or_none(index: faiss.Index) -> faiss.IndexIVF | None:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def serialized_size(index: faiss.Index) -> int:
    """Bytes of the serialized index: a close measure of its memory footprint."""
    return int(faiss.serialize_index(index).nbytes)
