"""Benchmark: rablip's FAISS indexes on clustered synthetic embeddings, against exact search and raw faiss.

    python scripts/bench/retrieval.py [--sizes 100000 1000000] [--dim 256] [--clusters 4096]
        [--noise 0.75] [--queries 1000] [--types flat ivfflat ivfpq hnsw] [--seed 0]
        [--threads 1] [--rounds 3] [--nprobe-sweep 16 32 64 128]

For each size, items are drawn around ``--clusters`` random centres on the unit sphere (centre plus
Gaussian noise of norm about ``--noise``, normalised) and written in chunks as embedding shards in a
temporary directory; queries are fresh draws around the same centres. Each index type is built
with :func:`rablip.retrieval.index.build_index` at its defaults and loaded with ``Index.load``.
Measured per index: build time, bytes per item (serialized index / items), queries per second at
batch 1 and 64 through ``Index.search`` and through the raw faiss index in the same run (the
wrapper's overhead ratio), 1-recall@10 (the exact nearest item is among the 10 results) and
10-recall@10 (overlap with the exact top 10) against exact inner-product search, each without
and with exact re-ranking (``rerank_factor`` 4). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rablip.retrieval.faiss_backend import serialized_size  # noqa: E402
from rablip.retrieval.index import Index, build_index  # noqa: E402
from rablip.retrieval.shards import write_shard, write_shards_manifest  # noqa: E402

K = 10
BATCH = 64
SINGLE_QUERIES = 200
GENERATION_CHUNK = 100_000


def _normalise(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def clustered_rows(centres: np.ndarray, count: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """``count`` unit vectors, each a random centre plus Gaussian noise of norm about ``noise``."""
    picks = rng.integers(0, centres.shape[0], size=count)
    offsets = rng.standard_normal((count, centres.shape[1]), dtype=np.float32) * (noise / np.sqrt(centres.shape[1]))
    return _normalise(centres[picks] + offsets)


def write_synthetic_shards(directory: Path, count: int, centres: np.ndarray, noise: float, seed: int) -> None:
    """Write ``count`` clustered items as embedding shards of at most GENERATION_CHUNK rows."""
    rng = np.random.default_rng(seed)
    for shard, start in enumerate(range(0, count, GENERATION_CHUNK)):
        rows = clustered_rows(centres, min(GENERATION_CHUNK, count - start), noise, rng)
        ids = [f"item-{row:09d}" for row in range(start, start + rows.shape[0])]
        write_shard(directory, shard, rows, ids, encoder_fingerprint="synthetic-bench", update_manifest=False)
    write_shards_manifest(directory, encoder_fingerprint="synthetic-bench")


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> tuple[float, float]:
    """(1-recall@K, K-recall@K) of ``found`` rows against the ``exact`` top-K rows."""
    first_hit = np.mean([exact[q, 0] in found[q, :K] for q in range(found.shape[0])])
    overlap = np.mean([len(set(found[q, :K]) & set(exact[q, :K])) / K for q in range(found.shape[0])])
    return float(first_hit), float(overlap)


TIMING_ROUNDS = 3
"""Timed passes per measurement (the best is kept); set by --rounds."""


def queries_per_second(search, queries: np.ndarray, batch: int) -> float:
    """Best of TIMING_ROUNDS passes of ``search(batch_of_queries)`` over ``queries``."""
    best = float("inf")
    for _ in range(TIMING_ROUNDS):
        started = time.perf_counter()
        for start in range(0, queries.shape[0], batch):
            search(queries[start : start + batch])
        best = min(best, time.perf_counter() - started)
    return queries.shape[0] / best


def paired_queries_per_second(searches: tuple, queries: np.ndarray, batch: int) -> tuple[float, float]:
    """Queries per second of two search functions timed call by call in alternating order.

    The machine is shared, so the two are interleaved batch by batch (and the order flips every
    batch) to see the same load; each total is the best of TIMING_ROUNDS passes.
    """
    best = [float("inf"), float("inf")]
    for _ in range(TIMING_ROUNDS):
        totals = [0.0, 0.0]
        for position, start in enumerate(range(0, queries.shape[0], batch)):
            batch_queries = queries[start : start + batch]
            for which in ((0, 1) if position % 2 == 0 else (1, 0)):
                started = time.perf_counter()
                searches[which](batch_queries)
                totals[which] += time.perf_counter() - started
        best = [min(best[i], totals[i]) for i in range(2)]
    return queries.shape[0] / best[0], queries.shape[0] / best[1]


def measure(index: Index, queries: np.ndarray, exact: np.ndarray) -> dict[str, float]:
    """Recall, speed (wrapper and raw faiss) and size of one loaded index."""
    raw = index.faiss_index
    index.search(queries[:1], K)  # sets the default nprobe / efSearch on the faiss index for raw calls
    result: dict[str, float] = {}
    for batch, subset in ((1, queries[:SINGLE_QUERIES]), (BATCH, queries)):
        result[f"qps{batch}"], result[f"raw_qps{batch}"] = paired_queries_per_second(
            (lambda q: index.search(q, K), lambda q: raw.search(q, K)), subset, batch)
    result["rerank_qps64"] = queries_per_second(lambda q: index.search(q, K, rerank_exact=True), queries, BATCH)
    _, found = index.search(queries, K)
    _, reranked = index.search(queries, K, rerank_exact=True)
    result["r1"], result["r10"] = recall_at_k(found, exact)
    result["rr1"], result["rr10"] = recall_at_k(reranked, exact)
    result["bytes_per_item"] = serialized_size(raw) / index.count
    return result


def nprobe_sweep(index: Index, queries: np.ndarray, exact: np.ndarray, nprobes: list[int]) -> list[str]:
    """Rows of recall (plain and re-ranked) and batch-64 speed at each nprobe of an IVF index."""
    rows = []
    for nprobe in nprobes:
        qps = queries_per_second(lambda q, n=nprobe: index.search(q, K, nprobe=n), queries, BATCH)
        _, found = index.search(queries, K, nprobe=nprobe)
        _, reranked = index.search(queries, K, nprobe=nprobe, rerank_exact=True)
        r1, r10 = recall_at_k(found, exact)
        rr1, rr10 = recall_at_k(reranked, exact)
        rows.append(f"| {index.count:,} | {index.index_type} | {nprobe} | {qps:.0f} | {r1:.3f} | {r10:.3f} | "
                    f"{rr1:.3f} | {rr10:.3f} |")
    return rows


def bench_size(count: int, args: argparse.Namespace, work: Path) -> tuple[list[str], list[str]]:
    """Main-table rows and nprobe-sweep rows for one collection size."""
    rng = np.random.default_rng(args.seed)
    centres = _normalise(rng.standard_normal((args.clusters, args.dim), dtype=np.float32))
    shards = work / f"shards_{count}"
    started = time.perf_counter()
    write_synthetic_shards(shards, count, centres, args.noise, args.seed + 1)
    print(f"[{count}] generated shards in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    queries = clustered_rows(centres, args.queries, args.noise, np.random.default_rng(args.seed + 2))
    exact = None
    rows, sweep_rows = [], []
    for index_type in ["flat"] + [t for t in args.types if t != "flat"]:
        started = time.perf_counter()
        out = build_index(shards, work / f"{index_type}_{count}", index_type=index_type, seed=args.seed)
        build_seconds = time.perf_counter() - started
        index = Index.load(out, expected_fingerprint="synthetic-bench")
        if exact is None:
            _, exact = index.faiss_index.search(queries, K)
        if index_type not in args.types:
            continue
        stats = measure(index, queries, exact)
        params = index.manifest["build_params"]
        knob = {"ivfflat": f"nlist {params['nlist']}, nprobe {index.default_nprobe}",
                "ivfpq": f"nlist {params['nlist']}, m {params['m']}x{params['nbits']}b, nprobe {index.default_nprobe}",
                "hnsw": f"M {params['hnsw_m']}, efC {params['ef_construction']}, efS {index.default_ef_search}",
                "flat": "exact"}[index_type]
        rows.append(
            f"| {count:,} | {index_type} ({knob}) | {build_seconds:.1f} | {stats['bytes_per_item']:.1f} | "
            f"{stats['qps1']:.0f} / {stats['raw_qps1']:.0f} ({stats['raw_qps1'] / stats['qps1']:.3f}) | "
            f"{stats['qps64']:.0f} / {stats['raw_qps64']:.0f} ({stats['raw_qps64'] / stats['qps64']:.3f}) | "
            f"{stats['r1']:.3f} | {stats['r10']:.3f} | {stats['rr1']:.3f} | {stats['rr10']:.3f} | "
            f"{stats['rerank_qps64']:.0f} |"
        )
        print(rows[-1], file=sys.stderr)
        if index_type in ("ivfflat", "ivfpq") and args.nprobe_sweep:
            sweep_rows += nprobe_sweep(index, queries, exact, args.nprobe_sweep)
            print("\n".join(sweep_rows[-len(args.nprobe_sweep):]), file=sys.stderr)
        index.close()
        shutil.rmtree(out)
    shutil.rmtree(shards)
    return rows, sweep_rows


def main() -> None:
    """Run every size and print the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--clusters", type=int, default=4096)
    parser.add_argument("--noise", type=float, default=0.75)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--types", nargs="+", default=["flat", "ivfflat", "ivfpq", "hnsw"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="faiss OpenMP threads (1: on a shared machine, spinning threads distort timings; "
                        "0: faiss's default)")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes per measurement; the best is kept")
    parser.add_argument("--nprobe-sweep", type=int, nargs="*", default=[],
                        help="also report recall and speed of the IVF indexes at these nprobe values")
    parser.add_argument("--work-dir", help="where to write shards and indexes (default: a temporary directory)")
    args = parser.parse_args()
    global TIMING_ROUNDS
    TIMING_ROUNDS = args.rounds
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="rablip-bench-retrieval-"))
    work.mkdir(parents=True, exist_ok=True)
    header = (
        "| items | index (defaults) | build s | bytes/item | QPS batch 1: rablip / raw (raw/rablip) | "
        "QPS batch 64: rablip / raw (raw/rablip) | 1-R@10 | 10-R@10 | 1-R@10 rerank | 10-R@10 rerank | "
        "QPS batch 64 rerank |\n|---|---|---|---|---|---|---|---|---|---|---|"
    )
    rows, sweep_rows = [], []
    try:
        for count in args.sizes:
            size_rows, size_sweep_rows = bench_size(count, args, work)
            rows += size_rows
            sweep_rows += size_sweep_rows
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(header)
    print("\n".join(rows))
    if sweep_rows:
        print("\n| items | index | nprobe | QPS batch 64 | 1-R@10 | 10-R@10 | 1-R@10 rerank | 10-R@10 rerank |")
        print("|---|---|---|---|---|---|---|---|")
        print("\n".join(sweep_rows))


if __name__ == "__main__":
    main()
