"""FAISS index directories: build, load checks, search, exact re-ranking."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rablip.errors import RablipError
from rablip.retrieval import faiss_backend, index_manifest
from rablip.retrieval.index import Index, build_index
from rablip.retrieval.shards import write_shard

DIM = 32
COUNT = 1500
SMALL = {"nlist": 16, "m": 16, "nbits": 6, "hnsw_m": 8, "ef_construction": 40}


def _clustered(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, DIM))
    rows = centres[rng.integers(0, 40, count)] + 0.5 * rng.standard_normal((count, DIM))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread():
    """One OpenMP thread: on a loaded shared machine, faiss's thread spinning slows small builds 30x."""
    threads = faiss_backend.faiss.omp_get_max_threads()
    faiss_backend.faiss.omp_set_num_threads(1)
    yield
    faiss_backend.faiss.omp_set_num_threads(threads)


@pytest.fixture()
def warnings_logged(monkeypatch):
    """Warnings of the index loader, captured instead of printed."""
    messages = []
    monkeypatch.setattr(index_manifest._logger, "warning", lambda message, *args: messages.append(message % args))
    return messages


@pytest.fixture(scope="module")
def embeddings():
    return _clustered(COUNT, seed=0)


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory, embeddings):
    directory = tmp_path_factory.mktemp("shards")
    for shard, start in enumerate(range(0, COUNT, 600)):
        rows = embeddings[start : start + 600]
        write_shard(directory, shard, rows, [f"item-{row}" for row in range(start, start + len(rows))],
                    encoder_fingerprint="encoder-A")
    return directory


@pytest.fixture(scope="module")
def built(tmp_path_factory, shard_dir):
    """One index of each type, built once for the module."""
    root = tmp_path_factory.mktemp("indexes")
    return {kind: build_index(shard_dir, root / kind, index_type=kind, chunk_size=500, **SMALL)
            for kind in faiss_backend.INDEX_TYPES}


@pytest.mark.parametrize("kind", faiss_backend.INDEX_TYPES)
def test_round_trip_finds_each_item_itself(built, embeddings, kind):
    index = Index.load(built[kind], expected_fingerprint="encoder-A")
    probe_rows = np.arange(0, COUNT, 15)
    scores, rows = index.search(embeddings[probe_rows], 5)
    assert scores.shape == rows.shape == (len(probe_rows), 5)
    assert scores.dtype == np.float32 and rows.dtype == np.int64
    assert np.mean(rows[:, 0] == probe_rows) >= 0.9
    assert index.ids_for(rows[:2, :1]) == [[f"item-{rows[0, 0]}"], [f"item-{rows[1, 0]}"]]
    manifest = json.loads((built[kind] / "manifest.json").read_text())
    assert (manifest["index_type"], manifest["count"], manifest["dim"]) == (kind, COUNT, DIM)
    assert manifest["metric"] == "inner_product" and manifest["encoder_fingerprint"] == "encoder-A"
    assert not list(built[kind].parent.glob(f".{kind}.building-*"))


def test_exact_rerank_gives_the_exact_ordering_of_the_candidates(built, embeddings):
    index = Index.load(built["ivfpq"])
    queries = _clustered(20, seed=5)
    k, factor = 5, 3
    scores, rows = index.search(queries, k, nprobe=4, rerank_exact=True, rerank_factor=factor)
    _, candidates = index.faiss_index.search(queries, k * factor)  # raw faiss, nprobe still 4
    exact_scores = np.einsum("qkd,qd->qk", embeddings[candidates], queries)
    expected = np.take_along_axis(candidates, np.argsort(-exact_scores, axis=1)[:, :k], axis=1)
    assert not np.array_equal(rows, index.search(queries, k, nprobe=4)[1])  # re-ranking changed something
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_allclose(scores, np.einsum("qkd,qd->qk", embeddings[rows], queries), rtol=1e-5)
    # With every item as a candidate, re-ranking a compressed index reproduces exact (flat) search.
    _, flat_rows = Index.load(built["flat"]).search(queries, k)
    _, all_rows = index.search(queries, k, nprobe=SMALL["nlist"], rerank_exact=True, rerank_factor=COUNT)
    np.testing.assert_array_equal(all_rows, flat_rows)


def test_nprobe_is_settable_at_search_time(built, embeddings):
    index = Index.load(built["ivfflat"])
    _, all_lists = index.search(embeddings[:50], 10, nprobe=SMALL["nlist"])
    _, exact = Index.load(built["flat"]).search(embeddings[:50], 10)
    np.testing.assert_array_equal(all_lists, exact)
    index.search(embeddings[:1], 1, nprobe=2)
    assert faiss_backend.faiss.extract_index_ivf(index.faiss_index).nprobe == 2


def test_adding_in_chunks_equals_adding_at_once(tmp_path, shard_dir):
    for kind in ("flat", "ivfflat"):
        chunked = build_index(shard_dir, tmp_path / f"{kind}-chunked", index_type=kind, chunk_size=97, **SMALL)
        whole = build_index(shard_dir, tmp_path / f"{kind}-whole", index_type=kind, chunk_size=10**6, **SMALL)
        assert (chunked / "index.faiss").read_bytes() == (whole / "index.faiss").read_bytes()


def test_foreign_encoder_is_refused_and_accepted_with_override(built, warnings_logged):
    with pytest.raises(RablipError, match="encoder 'encoder-A'.*fingerprint 'encoder-B'.*rebuild the index"):
        Index.load(built["flat"], expected_fingerprint="encoder-B")
    assert warnings_logged == []
    index = Index.load(built["flat"], expected_fingerprint="encoder-B", allow_foreign=True)
    assert len(index) == COUNT and "encoder-B" in warnings_logged[0]


def test_tampered_index_file_is_refused_with_a_checksum_message(tmp_path, shard_dir, warnings_logged):
    out = build_index(shard_dir, tmp_path / "flat", index_type="flat")
    data = bytearray((out / "index.faiss").read_bytes())
    data[-5] ^= 0xFF  # a byte inside the stored vectors
    (out / "index.faiss").write_bytes(bytes(data))
    with pytest.raises(RablipError, match=r"checksum mismatch for .*index.faiss.*rebuild the index"):
        Index.load(out)
    assert len(Index.load(out, allow_foreign=True)) == COUNT
    assert "checksum mismatch" in warnings_logged[0]


def test_directory_without_manifest_is_refused(tmp_path, shard_dir, warnings_logged):
    out = build_index(shard_dir, tmp_path / "flat", index_type="flat")
    (out / "manifest.json").unlink()  # what a build killed before its last step would leave
    with pytest.raises(RablipError, match="has no manifest.json: its build did not finish"):
        Index.load(out)
    assert Index.load(out, allow_foreign=True).ids_for(np.array([[3]])) == [["item-3"]]
    assert "no manifest.json" in warnings_logged[0]


def test_failed_build_leaves_nothing_behind(tmp_path, shard_dir, monkeypatch):
    def die(self, chunk):
        raise KeyboardInterrupt("killed while adding")

    monkeypatch.setattr(faiss_backend.ChunkAdder, "add", die)
    with pytest.raises(KeyboardInterrupt):
        build_index(shard_dir, tmp_path / "out", index_type="flat")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_and_bad_parameters_are_refused(tmp_path, shard_dir, built):
    with pytest.raises(RablipError, match="already exists"):
        build_index(shard_dir, built["flat"], index_type="flat")
    with pytest.raises(RablipError, match="unknown index type 'lsh'"):
        build_index(shard_dir, tmp_path / "x", index_type="lsh")
    with pytest.raises(RablipError, match="needs --m to divide the embedding width 32"):
        build_index(shard_dir, tmp_path / "x", index_type="ivfpq", m=5)
    with pytest.raises(RablipError, match="differs from 'encoder-A'"):
        build_index(shard_dir, tmp_path / "x", index_type="flat", encoder_fingerprint="encoder-B")


def test_bad_queries_are_refused(built):
    index = Index.load(built["flat"])
    with pytest.raises(RablipError, match="width 7 but index .* holds width 32"):
        index.search(np.zeros((2, 7), np.float32), 3)
    with pytest.raises(RablipError, match="2-D"):
        index.search(np.zeros(DIM, np.float32), 3)
    with pytest.raises(RablipError, match="k must be a positive integer"):
        index.search(np.zeros((1, DIM), np.float32), 0)


def test_npy_source_ids_and_missing_rerank_embeddings(tmp_path, embeddings):
    np.save(tmp_path / "emb.npy", embeddings[:200])
    plain = Index.load(build_index(tmp_path / "emb.npy", tmp_path / "plain", index_type="flat"))
    assert plain.ids_for(np.array([[7, -1]])) == [["7", ""]]
    (tmp_path / "ids.txt").write_text("".join(f"doc{row}\n" for row in range(200)))
    named = Index.load(build_index(tmp_path / "emb.npy", tmp_path / "named", index_type="hnsw",
                                   ids_path=tmp_path / "ids.txt", hnsw_m=8))
    _, rows = named.search(embeddings[7:8], 1, rerank_exact=True)
    assert named.ids_for(rows) == [["doc7"]]
    (tmp_path / "emb.npy").unlink()
    moved = Index.load(tmp_path / "named")
    with pytest.raises(RablipError, match="exact re-ranking needs the embeddings"):
        moved.search(embeddings[:1], 1, rerank_exact=True)
