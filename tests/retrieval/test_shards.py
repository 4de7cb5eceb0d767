"""Embedding shards: atomic writes, the manifest, memory-mapped chunked reading and the id map."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rablip.errors import DataError
from rablip.retrieval import shards as shards_module
from rablip.retrieval.shards import (
    MANIFEST_NAME,
    list_finished_shards,
    open_embeddings,
    write_shard,
    write_shards_manifest,
)


def _rows(count: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)


def _ids(start: int, count: int) -> list[str]:
    return [f"kb-{row}" for row in range(start, start + count)]


@pytest.fixture()
def three_shards(tmp_path):
    rows = _rows(25)
    for shard, (start, stop) in enumerate([(0, 10), (10, 17), (17, 25)]):
        write_shard(tmp_path / "emb", shard, rows[start:stop], _ids(start, stop - start), encoder_fingerprint="enc-a")
    return tmp_path / "emb", rows


def test_manifest_lists_shards_with_counts_dim_dtype_and_fingerprint(three_shards):
    directory, _ = three_shards
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    assert [entry["name"] for entry in manifest["shards"]] == ["shard_00000", "shard_00001", "shard_00002"]
    assert [entry["rows"] for entry in manifest["shards"]] == [10, 7, 8]
    assert (manifest["dim"], manifest["dtype"], manifest["count"]) == (8, "float32", 25)
    assert manifest["encoder_fingerprint"] == "enc-a"


def test_chunks_cross_shard_boundaries_and_match_the_rows(three_shards):
    directory, rows = three_shards
    source = open_embeddings(directory)
    assert (source.count, source.dim, source.encoder_fingerprint) == (25, 8, "enc-a")
    chunks = list(source.iter_chunks(6))
    assert [start for start, _ in chunks] == [0, 6, 12, 18, 24]
    assert [chunk.shape[0] for _, chunk in chunks] == [6, 6, 6, 6, 1]
    assert all(chunk.dtype == np.float32 and chunk.flags.c_contiguous for _, chunk in chunks)
    np.testing.assert_array_equal(np.concatenate([chunk for _, chunk in chunks]), rows)
    assert all(isinstance(array, np.memmap) for array in source.arrays)


def test_gather_and_global_id_map(three_shards):
    directory, rows = three_shards
    source = open_embeddings(directory)
    wanted = np.array([[24, 0], [11, 11], [16, 17]])
    np.testing.assert_array_equal(source.gather(wanted), rows[wanted])
    assert list(source.iter_ids()) == _ids(0, 25)
    assert [source.id_of(row) for row in (0, 9, 10, 16, 17, 24)] == ["kb-0", "kb-9", "kb-10", "kb-16", "kb-17", "kb-24"]


def test_float16_shards_are_read_as_float32(tmp_path):
    rows = _rows(5).astype(np.float16)
    write_shard(tmp_path, 0, rows, _ids(0, 5))
    source = open_embeddings(tmp_path)
    assert source.dtype == "float16"
    (_, chunk), = source.iter_chunks(100)
    assert chunk.dtype == np.float32
    np.testing.assert_array_equal(chunk, rows.astype(np.float32))


def test_interrupted_shard_write_is_not_listed(tmp_path, monkeypatch):
    directory = tmp_path / "emb"
    write_shard(directory, 0, _rows(4), _ids(0, 4))
    real_save = np.save

    def save_then_die(handle, array):
        real_save(handle, array[: len(array) // 2])  # half the bytes reach the temporary file
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(shards_module.np, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        write_shard(directory, 1, _rows(4, seed=1), _ids(4, 4))
    monkeypatch.undo()
    assert list_finished_shards(directory) == ["shard_00000"]
    assert not (directory / "shard_00001.npy").exists()
    assert not list(directory.glob("*.tmp"))
    assert [entry["name"] for entry in json.loads((directory / MANIFEST_NAME).read_text())["shards"]] == ["shard_00000"]
    assert open_embeddings(directory).count == 4


def test_killed_writer_leftovers_are_ignored_by_the_manifest(tmp_path):
    directory = tmp_path / "emb"
    write_shard(directory, 0, _rows(3), _ids(0, 3), update_manifest=False)
    # A process killed mid-shard leaves a temporary array and possibly the ids file, never the .npy.
    (directory / ".shard_00001.npy.abc.tmp").write_bytes(b"\x93NUMPY partial")
    (directory / "shard_00001.ids.txt").write_text("kb-3\n")
    assert list_finished_shards(directory) == ["shard_00000"]
    write_shards_manifest(directory, encoder_fingerprint="enc")
    assert open_embeddings(directory).count == 3


def test_single_npy_with_and_without_ids(tmp_path):
    rows = _rows(6)
    np.save(tmp_path / "emb.npy", rows)
    source = open_embeddings(tmp_path / "emb.npy")
    assert list(source.iter_ids()) == ["0", "1", "2", "3", "4", "5"]
    (tmp_path / "ids.txt").write_text("".join(f"q{row}\n" for row in range(6)))
    assert open_embeddings(tmp_path / "emb.npy", tmp_path / "ids.txt").id_of(5) == "q5"
    (tmp_path / "short.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match="short.txt has 2 lines but the embeddings have 6 rows"):
        open_embeddings(tmp_path / "emb.npy", tmp_path / "short.txt")


def test_bad_inputs_are_refused_with_a_clear_message(tmp_path):
    with pytest.raises(DataError, match="not a non-empty single-line string"):
        write_shard(tmp_path, 0, _rows(2), ["ok", "two\nlines"])
    with pytest.raises(DataError, match="2 ids for 3 embedding rows"):
        write_shard(tmp_path, 0, _rows(3), ["a", "b"])
    with pytest.raises(DataError, match="dtype int64 is not supported"):
        write_shard(tmp_path, 0, np.zeros((2, 2), np.int64), ["a", "b"])
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match="has no shards.json"):
        open_embeddings(tmp_path / "empty_dir")
    np.save(tmp_path / "flat.npy", np.zeros(4, np.float32))
    with pytest.raises(DataError, match="expected a 2-D"):
        open_embeddings(tmp_path / "flat.npy")
    with pytest.raises(DataError, match="not found"):
        open_embeddings(tmp_path / "missing.npy")
