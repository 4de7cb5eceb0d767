"""Build the per-group FAISS indexes of an encoded knowledge base and the layout file over them.

Each non-empty group's shard directory (``<embeddings_dir>/<group>``) becomes an index directory
``<index_dir>/<group>`` through :func:`rablip.retrieval.index.build_index`, carrying the encoder
fingerprint of the shards. A group whose index was already built from the same shards with the same
request (index type and parameters) is left alone, so re-running an encoding that had finished does
not change the index (nor invalidate retrieval caches keyed by it: the layout is written again with
the same bytes). ``retrieval_index.json``, the index directory's manifest, is removed first and
written last.

A group too small for the request is built with what it can train: IVF gets fewer lists
(``nlist`` at most items // 39), and ``ivfpq`` on fewer items than its ``2**nbits`` PQ centroids
becomes an exact ``flat`` index (one warning; such a group gains nothing from compression). Each
group's ``manifest.json`` records the type built, the layout the request. A request no group can
build (``retrieval.pq_m`` not dividing the embedding width) is a :class:`ConfigError` before any
index changes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from rablip.errors import ConfigError
from rablip.retrieval.faiss_backend import divisors, pq_min_train_rows
from rablip.retrieval.groups import GROUPS, LAYOUT_NAME, layout_record
from rablip.retrieval.index import build_index
from rablip.retrieval.index_manifest import MANIFEST_NAME, sha256_of_file
from rablip.retrieval.shards import MANIFEST_NAME as SHARDS_MANIFEST
from rablip.utils.artefacts import rewrite_in_place
from rablip.utils.io import read_json
from rablip.utils.logging import get_logger

log = get_logger("rablip.retrieval")
MIN_ROWS_PER_LIST = 39
"""faiss k-means wants about 39 training rows per inverted list."""


@dataclass(frozen=True)
class IndexRequest:
    """The index asked for (``retrieval.index_type`` and its parameters)."""

    index_type: str = "flat"
    nlist: int = 1024
    pq_m: int = 32
    nbits: int = 8
    hnsw_m: int = 32
    nprobe: int = 16
    seed: int = 0


def check_request(request: IndexRequest, dim: int, where: Path) -> None:
    """Refuse a request faiss cannot build for embeddings of width ``dim`` (read from ``where``)."""
    if request.index_type != "ivfpq":
        return
    if request.pq_m < 0 or (request.pq_m and dim % request.pq_m):
        raise ConfigError(
            f"retrieval.pq_m = {request.pq_m} does not divide the embedding width {dim} ({where}): "
            "retrieval.index_type ivfpq cuts each embedding into retrieval.pq_m equal parts. Set retrieval.pq_m "
            f"to one of {', '.join(map(str, divisors(dim)))}, or choose another retrieval.index_type.")
    if not 1 <= request.nbits <= 16:
        raise ConfigError(f"retrieval.nbits = {request.nbits}: ivfpq codes have 1 to 16 bits (8 is usual).")


def _index_type_for(request: IndexRequest, count: int, group: str) -> str:
    """The requested type, or ``flat`` for a group with fewer items than ivfpq's PQ centroids."""
    needed = pq_min_train_rows(request.nbits)
    if request.index_type == "ivfpq" and count < needed:
        log.warning("the %s group has %d items, fewer than the %d that ivfpq with retrieval.nbits=%d needs to "
                    "train: its index is exact (flat) instead", group, count, needed, request.nbits)
        return "flat"
    return request.index_type


def _nlist_for(request: IndexRequest, index_type: str, count: int, group: str) -> int:
    """The requested nlist, lowered for a group too small to train that many lists."""
    cap = max(1, count // MIN_ROWS_PER_LIST)
    if index_type in ("ivfflat", "ivfpq") and request.nlist > cap:
        log.warning("the %s group has %d items: nlist lowered from %d to %d", group, count, request.nlist, cap)
        return cap
    return request.nlist


def _is_current(index_dir: Path, group: str, shards_sha: str, request: IndexRequest, previous: dict | None) -> bool:
    if previous is None or not (index_dir / group / MANIFEST_NAME).is_file():
        return False
    entry = previous.get("groups", {}).get(group) or {}
    return (previous.get("request") == asdict(request) and entry.get("shards_sha256") == shards_sha
            and entry.get("manifest_sha256") == sha256_of_file(index_dir / group / MANIFEST_NAME))


def build_group_indexes(embeddings_dir: str | Path, index_dir: str | Path, fingerprint: str, counts: dict[str, int],
                        request: IndexRequest, show_progress: bool = False) -> Path:
    """Build (or keep) ``<index_dir>/<group>`` for every group with items; write the layout; return its path.

    The layout is the index directory's manifest: it is removed before any group index changes and
    written again last (:func:`rablip.utils.artefacts.rewrite_in_place`), so an interrupted build
    leaves no layout that names indexes it does not describe.
    """
    embeddings_dir, index_dir = Path(embeddings_dir), Path(index_dir)
    for group in GROUPS:
        if counts.get(group):
            shards_manifest = embeddings_dir / group / SHARDS_MANIFEST
            check_request(request, int(read_json(shards_manifest, "embedding shards manifest").get("dim", 0)),
                          shards_manifest)
    index_dir.mkdir(parents=True, exist_ok=True)
    layout_path = index_dir / LAYOUT_NAME
    previous = read_json(layout_path, "retrieval index layout") if layout_path.is_file() else None
    with rewrite_in_place(index_dir, LAYOUT_NAME) as build:
        shards_sha = {}
        for group in GROUPS:
            if not counts.get(group):
                continue
            shards_sha[group] = sha256_of_file(embeddings_dir / group / SHARDS_MANIFEST)
            if _is_current(index_dir, group, shards_sha[group], request, previous):
                log.info("the %s index in %s is up to date; kept", group, index_dir / group)
                continue
            index_type = _index_type_for(request, counts[group], group)
            build_index(embeddings_dir / group, index_dir / group, index_type=index_type,
                        nlist=_nlist_for(request, index_type, counts[group], group), m=request.pq_m,
                        nbits=request.nbits, hnsw_m=request.hnsw_m, nprobe=request.nprobe, encoder_fingerprint=fingerprint,
                        seed=request.seed, overwrite=True, show_progress=show_progress)
        build.commit(layout_record(index_dir, fingerprint, counts, embeddings_dir, request=asdict(request),
                                   shards_sha256=shards_sha))
    return layout_path
