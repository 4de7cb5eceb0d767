"""Search an index directory with a file of query embeddings and save the top-k rows.

    python -m rablip.retrieval.search --index DIR --queries Q.npy --k K [--nprobe N] [--ef-search E]
        [--rerank-exact [--rerank-factor F]] [--encoder-fingerprint FP] [--allow-foreign]
        --output OUT.npy [--scores-output SCORES.npy]

``Q.npy`` is a (queries, dim) float array of L2-normalised query embeddings. ``OUT.npy`` receives
the top-k row positions as an int64 (queries, k) array (-1 where fewer than k items exist),
written atomically; row positions map to item ids through the index's ``ids.txt``. Bad input
(a missing file, a wrong width, non-2-D queries, k <= 0) prints one message and exits with 2.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from rablip.errors import RablipError
from rablip.retrieval.index import Index
from rablip.utils.cli import run_main
from rablip.utils.io import atomic_write


def save_npy_atomically(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` through a temporary file and a rename (never half-written)."""
    atomic_write(path, lambda handle: np.save(handle, array))


def load_queries(path: str | os.PathLike) -> np.ndarray:
    """The query matrix from a ``.npy`` file, refusing anything that is not a 2-D float array."""
    path = Path(path)
    if not path.is_file():
        raise RablipError(f"queries file not found: {path}. Give a .npy file of (queries, dim) embeddings.")
    try:
        queries = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise RablipError(f"queries file {path} is not a readable .npy array: {err}") from None
    if queries.ndim != 2:
        raise RablipError(f"queries file {path} holds an array of shape {queries.shape}; expected 2-D "
                          "(queries, dim). Reshape a single query to (1, dim).")
    if not np.issubdtype(queries.dtype, np.floating):
        raise RablipError(f"queries file {path} has dtype {queries.dtype}; expected float32 embeddings.")
    return queries


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line of this module."""
    parser = argparse.ArgumentParser(prog="python -m rablip.retrieval.search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, help="index directory made by scripts/build_index.py")
    parser.add_argument("--queries", required=True, help=".npy file of (queries, dim) query embeddings")
    parser.add_argument("--k", required=True, type=int, help="results per query")
    parser.add_argument("--output", required=True, help=".npy file for the int64 (queries, k) result rows")
    parser.add_argument("--scores-output", help="optional .npy file for the float32 (queries, k) scores")
    parser.add_argument("--nprobe", type=int, help="IVF lists visited per query (default: stored at build)")
    parser.add_argument("--ef-search", type=int, help="HNSW search breadth (default: stored at build)")
    parser.add_argument("--rerank-exact", action="store_true", help="re-score candidates with exact embeddings")
    parser.add_argument("--rerank-factor", type=int, default=4, help="candidates per result for re-ranking")
    parser.add_argument("--encoder-fingerprint", help="refuse an index built by another encoder")
    parser.add_argument("--allow-foreign", action="store_true",
                        help="accept a foreign, unchecked or manifest-less index (with a warning)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    """Load the index, search the queries, write the result rows (and scores)."""
    args = parse_args(argv)
    if args.k <= 0:
        raise RablipError(f"--k must be a positive integer, got {args.k}.")
    for name in ("nprobe", "ef_search", "rerank_factor"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise RablipError(f"--{name.replace('_', '-')} must be positive, got {value}.")
    queries = load_queries(args.queries)
    index = Index.load(args.index, expected_fingerprint=args.encoder_fingerprint, allow_foreign=args.allow_foreign)
    scores, rows = index.search(queries, args.k, nprobe=args.nprobe, ef_search=args.ef_search,
                                rerank_exact=args.rerank_exact, rerank_factor=args.rerank_factor)
    save_npy_atomically(args.output, rows.astype(np.int64, copy=False))
    if args.scores_output:
        save_npy_atomically(args.scores_output, scores.astype(np.float32, copy=False))
    return 0


if __name__ == "__main__":
    run_main(main)
