"""Encoding the knowledge base: group shards with fingerprinted manifests and indexes, resume,
process partitioning, shared image encoding, and the encode_kb CLI."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from rablip.config import load_config
from rablip.data.images import ImageLoader
from rablip.data.kb import KBStore
from rablip.data.kb_writer import build_kb_store
from rablip.data.records import KBItem
from rablip.errors import RablipError
from rablip.models.factory import generator_checkpoint_dir
from rablip.models.fusion import MultimodalRetrievalEncoder
from rablip.models.processor_files import copy_processor_files, processor_dir
from rablip.retrieval.components import encoder_fingerprint, retrieval_batcher
from rablip.retrieval.embed import embed_items
from rablip.retrieval.encode import (
    ShardPlan,
    check_encoding_record,
    encode_shards,
    encoding_record,
    finish_shards,
)
from rablip.retrieval.groups import GROUP_MODALITIES, GROUPS, read_layout
from rablip.retrieval.shards import open_embeddings, shard_name
from rablip.stages.encode_kb import encode_knowledge_base
from rablip.utils.io import read_json
from tests.retrieval.tiny_world import (
    PRETRAIN_CONFIG,
    ROOT,
    make_tiny_world,
    one_thread,
    subprocess_env,
    world_overrides,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("encode")
    with one_thread():
        cfg = make_tiny_world(tmp)
        summary = encode_knowledge_base(cfg, show_progress=False)
        yield tmp, cfg, summary


def _embeddings(directory, group):
    source = open_embeddings(directory / group)
    ids = list(source.iter_ids())
    return ids, source.read_range(0, source.count)


def test_encoding_writes_group_shards_and_indexes_with_the_encoder_fingerprint(world):
    _, cfg, summary = world
    fingerprint = encoder_fingerprint(cfg.model.fusion.checkpoint)
    store = KBStore.open(cfg.data.kb.store_dir)
    modality = {item.id: item.modality for batch in store.iter_batches(64) for item in batch}
    assert summary.fingerprint == fingerprint and sum(summary.counts.values()) == len(store)
    layout = read_layout(cfg.retrieval.index_dir)
    assert layout["encoder_fingerprint"] == fingerprint
    for group in GROUPS:
        shards = read_json(summary.embeddings_dir / group / "shards.json")
        assert shards["encoder_fingerprint"] == fingerprint
        assert len(shards["shards"]) == ShardPlan(len(store), 8).num_shards
        index_manifest = read_json(summary.index_dir / group / "manifest.json")
        assert index_manifest["encoder_fingerprint"] == fingerprint
        ids = (summary.index_dir / group / "ids.txt").read_text().split()
        assert ids and all(modality[i] in GROUP_MODALITIES[group] for i in ids)
        assert layout["groups"][group]["count"] == len(ids) == index_manifest["count"]


def test_shard_embeddings_equal_the_plain_item_encoding(world):
    _, cfg, summary = world
    store = KBStore.open(cfg.data.kb.store_dir)
    encoder = MultimodalRetrievalEncoder.from_pretrained(cfg.model.fusion.checkpoint).eval()
    loader = ImageLoader(store.root)  # the plain path: item images resolved under the KB root, one by one
    for group in GROUPS:
        ids, stored = _embeddings(summary.embeddings_dir, group)
        expected = embed_items(encoder, retrieval_batcher(cfg), store.get_many(ids[:5]), loader.load)
        np.testing.assert_allclose(stored[:5], expected, atol=1e-5)


def test_resume_recomputes_only_the_missing_shard(world):
    tmp, cfg, summary = world
    copy_dir = tmp / "resume_embeddings"
    shutil.copytree(summary.embeddings_dir, copy_dir)
    last = shard_name(ShardPlan(sum(summary.counts.values()), 8).num_shards - 1)
    for group in GROUPS:
        (copy_dir / group / f"{last}.npy").unlink()
        (copy_dir / group / f"{last}.ids.txt").unlink()
        (copy_dir / group / "shards.json").unlink()
    kept = {p: p.stat().st_ino for p in copy_dir.rglob("shard_*.npy")}
    from rablip.config import load_config
    from tests.retrieval.tiny_world import PRETRAIN_CONFIG

    resumed_cfg = load_config(str(PRETRAIN_CONFIG), world_overrides(tmp) + [
        f"retrieval.embeddings_dir={copy_dir}", f"retrieval.index_dir={tmp / 'resume_index'}"])
    resumed = encode_knowledge_base(resumed_cfg, show_progress=False)
    last_number = int(last.split("_")[1])
    assert resumed.report.encoded == [last_number]
    assert resumed.report.skipped == list(range(last_number))
    assert all(path.stat().st_ino == inode for path, inode in kept.items()), "finished shards were rewritten"
    for group in GROUPS:
        ids, embeddings = _embeddings(copy_dir, group)
        full_ids, full = _embeddings(summary.embeddings_dir, group)
        assert ids == full_ids
        np.testing.assert_allclose(embeddings, full, atol=1e-6)


def test_two_processes_encode_disjoint_contiguous_shards_that_equal_one_process(world):
    tmp, cfg, summary = world
    plan = ShardPlan(37, 8)
    covered = [list(plan.shards_of(i, 3)) for i in range(3)]
    assert sum(covered, []) == list(range(plan.num_shards))
    store = KBStore.open(cfg.data.kb.store_dir)
    encoder = MultimodalRetrievalEncoder.from_pretrained(cfg.model.fusion.checkpoint).eval()
    out = tmp / "two_processes"
    reports = [encode_shards(encoder, retrieval_batcher(cfg), store, out, shard_rows=8, batch_size=4,
                             process_index=rank, num_processes=2) for rank in range(2)]
    assert set(reports[0].encoded).isdisjoint(reports[1].encoded)
    finish_shards(out, ShardPlan(len(store), 8), summary.fingerprint)
    for group in GROUPS:
        ids, embeddings = _embeddings(out, group)
        full_ids, full = _embeddings(summary.embeddings_dir, group)
        assert ids == full_ids
        np.testing.assert_allclose(embeddings, full, atol=1e-6)


def test_finish_refuses_when_a_shard_is_missing(world, tmp_path):
    _, cfg, summary = world
    store = KBStore.open(cfg.data.kb.store_dir)
    encoder = MultimodalRetrievalEncoder.from_pretrained(cfg.model.fusion.checkpoint).eval()
    encode_shards(encoder, retrieval_batcher(cfg), store, tmp_path, shard_rows=8, batch_size=8,
                  process_index=0, num_processes=2)
    with pytest.raises(RablipError, match="not finished"):
        finish_shards(tmp_path, ShardPlan(len(store), 8), summary.fingerprint)


def test_shards_of_another_encoder_are_refused(world):
    _, cfg, summary = world
    store = KBStore.open(cfg.data.kb.store_dir)
    record = encoding_record(ShardPlan(len(store), 8), "another-encoder", store)
    with pytest.raises(RablipError, match="encoder_fingerprint"):
        check_encoding_record(summary.embeddings_dir, record, write=False)


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_identical_images_are_encoded_once(world, tmp_path):
    _, cfg, _ = world
    red, blue = _png((200, 10, 10)), _png((10, 10, 200))
    items = [KBItem("a", "image+text", red, "a red thing", "Red"), KBItem("b", "image", red, "", "Red"),
             KBItem("c", "image+text", blue, "a blue thing", "Blue"), KBItem("d", "text", None, "facts", "Red")]
    store = KBStore.open(build_kb_store(items, tmp_path / "store", show_progress=False))
    encoder = MultimodalRetrievalEncoder.from_pretrained(cfg.model.fusion.checkpoint).eval()
    vision_rows = []
    hook = encoder.vision_model.register_forward_pre_hook(
        lambda module, args, kwargs: vision_rows.append(kwargs["pixel_values"].shape[0]), with_kwargs=True)
    report = encode_shards(encoder, retrieval_batcher(cfg), store, tmp_path / "emb", shard_rows=4, batch_size=4)
    hook.remove()
    assert vision_rows == [2], "the red image of items a and b must go through the vision encoder once"
    assert report.image_rows == 3 and report.unique_images == 2
    finish_shards(tmp_path / "emb", ShardPlan(len(store), 4), "fingerprint")
    source = open_embeddings(tmp_path / "emb" / "image")
    assert list(source.iter_ids()) == ["a", "b", "c"]
    with torch.no_grad():
        plain = embed_items(encoder, retrieval_batcher(cfg), store.get_many(["a", "b", "c"]), ImageLoader(None).load)
    np.testing.assert_allclose(source.read_range(0, 3), plain, atol=1e-5)


def test_cli_encodes_and_indexes_then_exits_0(world):
    tmp, _, _ = world
    out = tmp / "cli"
    args = world_overrides(tmp) + [f"retrieval.index_dir={out}", "retrieval.index_type=hnsw"]
    result = subprocess.run([sys.executable, "scripts/encode_kb.py", "--config",
                             "configs/experiment/synthetic_pretrain.yaml", *args],
                            capture_output=True, text=True, cwd=ROOT, env=subprocess_env())
    assert result.returncode == 0, result.stderr
    assert "encoded 36 knowledge items (image 18, text 18)" in result.stdout
    layout = json.loads((out / "retrieval_index.json").read_text())
    assert layout["request"]["index_type"] == "hnsw"
    assert read_json(out / "image" / "manifest.json")["index_type"] == "hnsw"


def test_cli_ivfpq_on_small_groups_builds_exact_indexes_and_a_bad_pq_m_exits_2(world):
    tmp, _, _ = world
    out = tmp / "cli_ivfpq"

    def encode(*extra: str) -> subprocess.CompletedProcess:
        args = world_overrides(tmp) + ["retrieval.index_type=ivfpq", *extra]
        return subprocess.run([sys.executable, "scripts/encode_kb.py", "--config",
                               "configs/experiment/synthetic_pretrain.yaml", *args],
                              capture_output=True, text=True, cwd=ROOT, env=subprocess_env())

    result = encode(f"retrieval.index_dir={out}", "retrieval.pq_m=1")
    assert result.returncode == 0, result.stderr
    assert read_layout(out)["request"]["index_type"] == "ivfpq"
    # 18 items per group are fewer than the 256 PQ centroids of 8-bit codes: each group is exact instead.
    assert [read_json(out / group / "manifest.json")["index_type"] for group in GROUPS] == ["flat", "flat"]
    assert "its index is exact (flat) instead" in result.stderr
    bad = encode(f"retrieval.index_dir={tmp / 'cli_bad_pq'}", f"retrieval.embeddings_dir={out / 'embeddings'}",
                 "retrieval.pq_m=1000003")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("error: retrieval.pq_m = 1000003 does not divide the "
                                                          "embedding width")
    assert not (tmp / "cli_bad_pq" / "retrieval_index.json").exists()


def test_cli_without_an_encoder_exits_2_with_one_message(world):
    tmp, _, _ = world
    args = world_overrides(tmp) + [f"model.fusion.checkpoint={tmp / 'missing'}", f"retrieval.index_dir={tmp / 'x'}"]
    result = subprocess.run([sys.executable, "scripts/encode_kb.py", "--config",
                             "configs/experiment/synthetic_pretrain.yaml", *args],
                            capture_output=True, text=True, cwd=ROOT, env=subprocess_env())
    assert result.returncode == 2
    assert "model.fusion.checkpoint" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp / "x" / "retrieval_index.json").exists()


def test_the_batcher_comes_from_the_encoder_dir_when_it_holds_processor_files(world, tmp_path):
    # Pre-training copies the processors beside the encoder; a generator without a Q-Former (LLaVA) has none.
    _, cfg, _ = world
    encoder_dir = shutil.copytree(cfg.model.fusion.checkpoint, tmp_path / "encoder")
    copy_processor_files(processor_dir(generator_checkpoint_dir(cfg)), encoder_dir)
    moved = load_config(str(PRETRAIN_CONFIG), world_overrides(world[0]) + [
        f"model.fusion.checkpoint={encoder_dir}", f"model.checkpoint={tmp_path / 'no-qformer-generator'}"])
    batcher, reference = retrieval_batcher(moved), retrieval_batcher(cfg)
    batch, expected = batcher.queries([None], ["what colour is it?"]), reference.queries([None], ["what colour is it?"])
    assert all(torch.equal(batch[key], expected[key]) for key in expected)
    with pytest.raises(RablipError, match="no-qformer-generator"):  # without them: the generator's, as before
        retrieval_batcher(load_config(str(PRETRAIN_CONFIG), world_overrides(world[0]) + [
            f"model.checkpoint={tmp_path / 'no-qformer-generator'}"]))
