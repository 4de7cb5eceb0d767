"""Per-group index builds: groups too small for the requested index, and requests no group can build."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rablip.errors import ConfigError, RablipError
from rablip.retrieval import faiss_backend, group_build
from rablip.retrieval.group_build import IndexRequest, build_group_indexes
from rablip.retrieval.groups import GroupIndexes
from rablip.retrieval.index import Index, build_index
from rablip.retrieval.shards import write_shard, write_shards_manifest

REPO = Path(__file__).resolve().parents[2]
DIM = 16
FINGERPRINT = "enc-small"


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread():
    threads = faiss_backend.faiss.omp_get_max_threads()
    faiss_backend.faiss.omp_set_num_threads(1)
    yield
    faiss_backend.faiss.omp_set_num_threads(threads)


def _unit_rows(count: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((count, DIM))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _embeddings(root: Path, counts: dict[str, int]) -> tuple[Path, dict[str, np.ndarray]]:
    rows = {}
    for seed, (group, count) in enumerate(counts.items()):
        rows[group] = _unit_rows(count, seed)
        write_shard(root / "emb" / group, 0, rows[group], [f"{group}-{row}" for row in range(count)],
                    update_manifest=False)
        write_shards_manifest(root / "emb" / group, encoder_fingerprint=FINGERPRINT)
    return root / "emb", rows


def test_a_group_too_small_for_ivfpq_gets_an_exact_index(tmp_path, monkeypatch):
    warnings = []
    monkeypatch.setattr(group_build.log, "warning", lambda message, *args: warnings.append(message % args))
    embeddings, rows = _embeddings(tmp_path, {"image": 6})
    request = IndexRequest(index_type="ivfpq", pq_m=4, nbits=8)
    layout = build_group_indexes(embeddings, tmp_path / "index", FINGERPRINT, {"image": 6}, request)
    manifest = json.loads((tmp_path / "index" / "image" / "manifest.json").read_text())
    assert manifest["index_type"] == "flat" and manifest["count"] == 6
    assert json.loads(layout.read_text())["request"]["index_type"] == "ivfpq"
    assert warnings == ["the image group has 6 items, fewer than the 256 that ivfpq with retrieval.nbits=8 needs "
                        "to train: its index is exact (flat) instead"]
    queries = _unit_rows(5, seed=9)
    indexes = GroupIndexes.load(tmp_path / "index", expected_fingerprint=FINGERPRINT)
    assert indexes.indexes["image"].index_type == "flat"
    hits = indexes.search(("image",), queries, 3)
    exact = np.argsort(-(queries @ rows["image"].T), axis=1, kind="stable")[:, :3]
    assert [[item_id for item_id, _ in query_hits] for query_hits in hits] == [
        [f"image-{row}" for row in query_rows] for query_rows in exact]
    np.testing.assert_allclose([[score for _, score in query_hits] for query_hits in hits],
                               np.take_along_axis(queries @ rows["image"].T, exact, axis=1), rtol=1e-5)
    # Building again with the same request keeps the index (the layout is rewritten byte for byte).
    before = layout.read_bytes()
    build_group_indexes(embeddings, tmp_path / "index", FINGERPRINT, {"image": 6}, request)
    assert layout.read_bytes() == before


def test_a_group_big_enough_still_gets_ivfpq(tmp_path):
    embeddings, _ = _embeddings(tmp_path, {"image": 6, "text": 300})
    build_group_indexes(embeddings, tmp_path / "index", FINGERPRINT, {"image": 6, "text": 300},
                        IndexRequest(index_type="ivfpq", pq_m=4, nbits=8))
    text = json.loads((tmp_path / "index" / "text" / "manifest.json").read_text())
    assert (text["index_type"], text["build_params"]["nlist"], text["build_params"]["m"]) == ("ivfpq", 7, 4)
    image = json.loads((tmp_path / "index" / "image" / "manifest.json").read_text())
    assert image["index_type"] == "flat"
    assert Index.load(tmp_path / "index" / "text").index_type == "ivfpq"


def test_pq_m_not_dividing_the_width_names_the_key_and_builds_nothing(tmp_path):
    embeddings, _ = _embeddings(tmp_path, {"image": 6})
    with pytest.raises(ConfigError, match=r"retrieval.pq_m = 32 does not divide the embedding width 16 .*"
                                          r"one of 1, 2, 4, 8, 16"):
        build_group_indexes(embeddings, tmp_path / "index", FINGERPRINT, {"image": 6},
                            IndexRequest(index_type="ivfpq", pq_m=32))
    assert not (tmp_path / "index").exists()
    with pytest.raises(ConfigError, match=r"retrieval.nbits = 0"):
        build_group_indexes(embeddings, tmp_path / "index", FINGERPRINT, {"image": 6},
                            IndexRequest(index_type="ivfpq", pq_m=4, nbits=0))


def test_build_index_refuses_too_few_rows_for_pq_with_what_to_change(tmp_path):
    np.save(tmp_path / "emb.npy", _unit_rows(6, seed=0))
    with pytest.raises(RablipError, match=r"needs at least 256 training rows, but has 6 .*--index-type flat.*"
                                          r"lower --nbits to 2 or less"):
        build_index(tmp_path / "emb.npy", tmp_path / "x", index_type="ivfpq", m=4, nbits=8)
    with pytest.raises(RablipError, match=r"--train-size 3 is smaller than nlist 4"):
        build_index(tmp_path / "emb.npy", tmp_path / "x", index_type="ivfflat", nlist=4, train_size=3)
    with pytest.raises(RablipError, match=r"needs --m to divide the embedding width 16; 32 does not"):
        build_index(tmp_path / "emb.npy", tmp_path / "x", index_type="ivfpq", m=32)
    assert not (tmp_path / "x").exists()


def test_build_cli_too_few_rows_for_pq_exits_2_with_one_message(tmp_path):
    np.save(tmp_path / "emb.npy", _unit_rows(6, seed=0))
    result = subprocess.run([sys.executable, "scripts/build_index.py", "--embeddings", str(tmp_path / "emb.npy"),
                             "--index-type", "ivfpq", "--m", "4", "--out", str(tmp_path / "index")],
                            cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ivfpq with --nbits 8") and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert not (tmp_path / "index").exists()
