"""Build a FAISS index directory from knowledge-base embeddings.

    python scripts/build_index.py --embeddings PATH --index-type flat|ivfflat|ivfpq|hnsw
        [--nlist N --m M --nbits B --hnsw-m M] [--ids IDS.txt] [--train-size N]
        [--encoder-fingerprint FP] [--nprobe N] --out DIR

PATH is a ``.npy`` file (rows are items; without ``--ids`` the item ids are the row numbers) or an
embedding shard directory with ``shards.json`` (its ids and encoder fingerprint are used). Rows are
added in chunks straight from the memory-mapped files. Defaults: nlist about 4 * sqrt(items),
m = one PQ sub-quantizer per 4 dimensions up to 64, nbits 8, HNSW M 32, a training sample of 40 rows
per centroid, nprobe about nlist / 32 (at least 8). ivfpq needs --m to divide the width and at least
2**nbits training rows (use flat for fewer items). ``--out`` must not exist; it appears only once the
build has finished (``manifest.json`` written last). Impossible settings exit with 2 and one message.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rablip.errors import RablipError  # noqa: E402
from rablip.retrieval.faiss_backend import INDEX_TYPES, gpu_count  # noqa: E402
from rablip.retrieval.index import build_index  # noqa: E402
from rablip.utils.cli import run_main  # noqa: E402
from rablip.utils.io import read_json  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line of this script."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embeddings", required=True, help=".npy file or embedding shard directory")
    parser.add_argument("--index-type", required=True, choices=INDEX_TYPES)
    parser.add_argument("--out", required=True, help="index directory to create (must not exist)")
    parser.add_argument("--ids", help="ids file for a .npy input: one item id per line, in row order")
    parser.add_argument("--nlist", type=int, help="IVF inverted lists (default about 4 * sqrt(items))")
    parser.add_argument("--m", type=int, help="PQ sub-quantizers; must divide the width (default dim/4, <= 64)")
    parser.add_argument("--nbits", type=int, default=8, help="bits per PQ sub-quantizer code")
    parser.add_argument("--hnsw-m", type=int, default=32, help="HNSW neighbours per node")
    parser.add_argument("--ef-construction", type=int, default=80, help="HNSW build breadth")
    parser.add_argument("--train-size", type=int, help="rows sampled for training (default 40 per centroid)")
    parser.add_argument("--encoder-fingerprint", help="encoder checkpoint fingerprint to record "
                        "(default: the one in shards.json)")
    parser.add_argument("--nprobe", type=int, help="default IVF lists visited per query, stored in the manifest")
    parser.add_argument("--ef-search", type=int, default=128, help="default HNSW search breadth")
    parser.add_argument("--chunk-size", type=int, default=65_536, help="rows read and added at a time")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training sample")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    """Build the index and print what was built."""
    args = parse_args(argv)
    for name in ("nlist", "m", "nbits", "hnsw_m", "ef_construction", "train_size", "nprobe", "ef_search",
                 "chunk_size"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise RablipError(f"--{name.replace('_', '-')} must be positive, got {value}.")
    out_dir = build_index(
        args.embeddings, args.out, index_type=args.index_type, nlist=args.nlist, m=args.m, nbits=args.nbits,
        hnsw_m=args.hnsw_m, ef_construction=args.ef_construction, train_size=args.train_size,
        encoder_fingerprint=args.encoder_fingerprint, chunk_size=args.chunk_size, seed=args.seed,
        ids_path=args.ids, nprobe=args.nprobe, ef_search=args.ef_search, show_progress=True,
    )
    manifest = read_json(out_dir / "manifest.json", "index manifest")
    where = f"{gpu_count()} GPUs available for search" if gpu_count() else "CPU"
    print(f"{manifest['index_type']} index of {manifest['count']} items (dim {manifest['dim']}) built in "
          f"{manifest['build_seconds']:.1f} s at {out_dir} ({where})")
    return 0


if __name__ == "__main__":
    run_main(main)
