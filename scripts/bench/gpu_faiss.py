"""Section 4 of ``scripts/bench/gpu.py``: FAISS on the CPU against FAISS on the GPU, on the same vectors.

For each item count and width: random unit vectors (float32, L2-normalised, as the fusion encoder's
embeddings are), and for each index type, built with rablip's own constructor
(:func:`rablip.retrieval.faiss_backend.make_index`, inner product) and rablip's settings:

- ``flat``: ``IndexFlatIP`` (exact);
- ``ivfpq``: ``IndexIVFPQ`` with ``retrieval.nlist`` lists (lowered to items // 39 as rablip's group
  builder lowers it), ``retrieval.pq_m`` sub-quantizers of ``retrieval.nbits`` bits, trained on
  max(40 x nlist, 40 x 2^nbits) rows (rablip's default training size), searched with ``retrieval.nprobe``.

Build seconds: train + add of all vectors, on the CPU index, and (GPU) on a fresh index moved to the GPU
with ``faiss.index_cpu_to_gpu`` before training. Search: the CPU-built index, and that same index cloned to
the GPU; median milliseconds of one ``search(queries, k)`` call per batch size, over ``repeats`` distinct
query batches after one warm-up call. GPU cells are measured only when ``faiss.get_num_gpus() > 0``.
"""

from __future__ import annotations

import statistics
import time

import faiss
import numpy as np

from rablip.config.retrieval_schema import RetrievalConfig
from rablip.retrieval import faiss_backend as backend

INDEX_TYPES = ("flat", "ivfpq")


def faiss_gpu_note() -> str | None:
    """None when faiss can use a GPU, else the text of the GPU cells (why they were not measured)."""
    if backend.gpu_count() > 0:
        return None
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if cuda:
        return "not measured: this faiss has no GPU support (faiss-cpu); install faiss-gpu"
    return "not measured: no GPU"


def random_unit(count: int, dim: int, seed: int, chunk: int = 1_000_000) -> np.ndarray:
    """``count`` x ``dim`` float32 unit vectors, Gaussian directions, generated in chunks (no float64 copy)."""
    rng = np.random.default_rng(seed)
    out = np.empty((count, dim), dtype=np.float32)
    for start in range(0, count, chunk):
        block = rng.standard_normal((min(chunk, count - start), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:start + block.shape[0]] = block
    return out


def ivf_settings(count: int, dim: int, config: RetrievalConfig) -> dict[str, int]:
    """nlist (``retrieval.nlist``, at most count // 39), m, nbits, nprobe and the training rows for ``count`` items."""
    nlist = max(1, min(config.nlist, count // 39))
    m = config.pq_m if dim % config.pq_m == 0 else backend.default_pq_m(dim)
    train_rows = min(count, max(40 * nlist, 40 * 2**config.nbits))
    return {"nlist": nlist, "m": m, "nbits": config.nbits, "nprobe": min(config.nprobe, nlist), "train_rows": train_rows}


def _new_index(index_type: str, dim: int, settings: dict[str, int]) -> faiss.Index:
    return backend.make_index(index_type, dim, nlist=settings["nlist"], m=settings["m"], nbits=settings["nbits"],
                              hnsw_m=32)


def _build(index: faiss.Index, data: np.ndarray, train_rows: int) -> float:
    """Seconds to train ``index`` (when it needs it) on the first ``train_rows`` rows and add all ``data``."""
    begin = time.perf_counter()
    if not index.is_trained:
        index.train(data[:train_rows])
    index.add(data)
    return time.perf_counter() - begin


def _gpu_options(index: faiss.Index) -> faiss.GpuClonerOptions:
    options = faiss.GpuClonerOptions()
    if isinstance(index, faiss.IndexIVFPQ) and index.pq.M > 48:
        options.useFloat16LookupTables = True  # as rablip's to_search_device: GPU IVFPQ's shared-memory limit
    return options


def _search_ms(index: faiss.Index, queries: list[np.ndarray], k: int) -> float:
    """Median milliseconds of ``index.search(batch, k)`` over ``queries`` (after one warm-up call)."""
    index.search(queries[0], k)
    times = []
    for batch in queries:
        begin = time.perf_counter()
        index.search(batch, k)
        times.append(1000 * (time.perf_counter() - begin))
    return statistics.median(times)


def measure_faiss(sizes: list[int], widths: list[int], *, batches: list[int], config: RetrievalConfig, k: int = 10,
                  repeats: int = 10, seed: int = 0) -> dict:
    """Build seconds and search milliseconds of every index type x size x width, CPU and (if any) GPU."""
    note = faiss_gpu_note()
    resources = faiss.StandardGpuResources() if note is None else None
    rows = []
    for dim in widths:
        for count in sizes:
            data = random_unit(count, dim, seed)
            queries = {b: [random_unit(b, dim, seed + 1000 * b + r) for r in range(repeats)] for b in batches}
            settings = ivf_settings(count, dim, config)
            for index_type in INDEX_TYPES:
                cpu_index = _new_index(index_type, dim, settings)
                cpu_build = _build(cpu_index, data, settings["train_rows"])
                backend.SearchKnobs(cpu_index, False).set("nprobe", settings["nprobe"])
                search: dict[str, dict[str, float | str]] = {
                    f"batch_{b}": {"cpu": _search_ms(cpu_index, queries[b], k), "gpu": note or ""} for b in batches}
                gpu_build: float | str = note or ""
                if resources is not None:
                    fresh = _new_index(index_type, dim, settings)
                    gpu_build = _build(faiss.index_cpu_to_gpu(resources, 0, fresh, _gpu_options(fresh)), data,
                                       settings["train_rows"])
                    on_gpu = faiss.index_cpu_to_gpu(resources, 0, cpu_index, _gpu_options(cpu_index))
                    backend.SearchKnobs(on_gpu, True).set("nprobe", settings["nprobe"])
                    for b in batches:
                        search[f"batch_{b}"]["gpu"] = _search_ms(on_gpu, queries[b], k)
                    del on_gpu
                row = {"index": index_type, "items": count, "width": dim, "build_seconds": {"cpu": cpu_build,
                       "gpu": gpu_build}, "search_ms": search}
                if index_type == "ivfpq":
                    row["settings"] = settings
                rows.append(row)
                del cpu_index
            del data
    return {"k": k, "repeats": repeats, "batches": batches, "gpu_available": note is None,
            "faiss_threads": faiss.omp_get_max_threads(), "rows": rows}
