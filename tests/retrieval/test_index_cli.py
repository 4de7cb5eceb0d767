"""The two index command lines: scripts/build_index.py and python -m rablip.retrieval.search."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rablip.retrieval import search as search_cli
from rablip.utils.cli import run_main

REPO = Path(__file__).resolve().parents[2]
DIM = 16
COUNT = 300
_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, env=_ENV, capture_output=True, text=True, timeout=120)


def _unit_rows(count: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((count, DIM))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    """An ivfflat index built through the build CLI from a .npy file and an ids file."""
    root = tmp_path_factory.mktemp("cli")
    np.save(root / "emb.npy", _unit_rows(COUNT, seed=0))
    (root / "ids.txt").write_text("".join(f"doc-{row}\n" for row in range(COUNT)))
    result = _run("scripts/build_index.py", "--embeddings", str(root / "emb.npy"), "--ids", str(root / "ids.txt"),
                  "--index-type", "ivfflat", "--nlist", "4", "--encoder-fingerprint", "enc-1",
                  "--out", str(root / "index"))
    assert result.returncode == 0, result.stderr
    assert "ivfflat index of 300 items (dim 16)" in result.stdout
    return root / "index"


def test_build_cli_writes_a_complete_index_dir(index_dir):
    manifest = json.loads((index_dir / "manifest.json").read_text())
    assert manifest["encoder_fingerprint"] == "enc-1"
    assert manifest["build_params"]["nlist"] == 4
    assert (index_dir / "ids.txt").read_text().splitlines()[299] == "doc-299"


def test_search_cli_writes_int64_rows_of_shape_queries_by_k(index_dir, tmp_path):
    queries = _unit_rows(COUNT, seed=0)[:7]
    np.save(tmp_path / "q.npy", queries)
    result = _run("-m", "rablip.retrieval.search", "--index", str(index_dir), "--queries", str(tmp_path / "q.npy"),
                  "--k", "5", "--nprobe", "4", "--rerank-exact", "--output", str(tmp_path / "out" / "top.npy"))
    assert result.returncode == 0, result.stderr
    rows = np.load(tmp_path / "out" / "top.npy")
    assert rows.shape == (7, 5) and rows.dtype == np.int64
    np.testing.assert_array_equal(rows[:, 0], np.arange(7))
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_search_cli_bad_input_exits_2_without_traceback(index_dir, tmp_path):
    np.save(tmp_path / "wide.npy", np.zeros((3, DIM + 1), np.float32))
    result = _run("-m", "rablip.retrieval.search", "--index", str(index_dir), "--queries", str(tmp_path / "wide.npy"),
                  "--k", "5", "--output", str(tmp_path / "top.npy"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "width 17" in result.stderr and not (tmp_path / "top.npy").exists()


def _bad_search_arguments(index_dir: Path, tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    np.save(tmp_path / "one_d.npy", np.zeros(DIM, np.float32))
    np.save(tmp_path / "ok.npy", np.zeros((2, DIM), np.float32))
    base = ["--index", str(index_dir), "--output", str(tmp_path / "top.npy")]
    return {
        "missing queries": (base + ["--queries", str(tmp_path / "nope.npy"), "--k", "3"], "queries file not found"),
        "non-2D queries": (base + ["--queries", str(tmp_path / "one_d.npy"), "--k", "3"], "expected 2-D"),
        "k zero": (base + ["--queries", str(tmp_path / "ok.npy"), "--k", "0"], "--k must be a positive integer"),
        "missing index": (["--index", str(tmp_path / "no_index"), "--output", str(tmp_path / "top.npy"),
                           "--queries", str(tmp_path / "ok.npy"), "--k", "3"], "index directory not found"),
        "foreign index": (base + ["--queries", str(tmp_path / "ok.npy"), "--k", "3", "--encoder-fingerprint", "enc-2"],
                          "Re-encode the knowledge base"),
    }


@pytest.mark.parametrize("case", ["missing queries", "non-2D queries", "k zero", "missing index", "foreign index"])
def test_search_cli_bad_inputs_exit_2_with_one_message(index_dir, tmp_path, capsys, case):
    argv, expected = _bad_search_arguments(index_dir, tmp_path)[case]
    with pytest.raises(SystemExit) as exit_info:
        run_main(search_cli.main, argv)
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("error: ") and expected in stderr and "Traceback" not in stderr
    assert not (tmp_path / "top.npy").exists()


def test_build_cli_bad_input_exits_2(tmp_path):
    result = _run("scripts/build_index.py", "--embeddings", str(tmp_path / "missing.npy"), "--index-type", "flat",
                  "--out", str(tmp_path / "index"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: embeddings file not found") and "Traceback" not in result.stderr
    assert not (tmp_path / "index").exists()
