"""The retriever's modes, re-ranking, the uninstructed flag, the split cache and retrieval metrics.

Two kinds of index are used. The *controlled* index holds hand-made item embeddings equal to (or
the negation of) query embeddings the real encoder produces, so each mode's outcome is known in
advance: these tests prove the plumbing (which query is embedded, which group is searched, how the
question is expanded, how lists are merged and re-ranked), not retrieval quality. The *world* index
is the tiny synthetic world encoded by the untrained encoder: its recall is poor and is not
asserted; it checks the pieces work together on a real store.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from rablip.benchmarks import load_split
from rablip.data.images import ImageLoader
from rablip.data.kb import KBStore
from rablip.data.kb_writer import build_kb_store
from rablip.data.records import KBItem
from rablip.errors import RablipError
from rablip.models.fusion import MultimodalRetrievalEncoder
from rablip.models.rerank import FusionReranker
from rablip.retrieval.cache import cache_depth, cache_paths, retrieve_split_cached
from rablip.retrieval.components import encoder_fingerprint, retrieval_batcher
from rablip.retrieval.group_build import IndexRequest, build_group_indexes
from rablip.retrieval.groups import GroupIndexes
from rablip.retrieval.retriever import Retriever, expand_question
from rablip.retrieval.shards import write_shard, write_shards_manifest
from rablip.stages.encode_kb import encode_knowledge_base
from rablip.utils.io import read_json
from tests.retrieval.tiny_world import PRETRAIN_CONFIG, make_tiny_world, one_thread, world_overrides

QUESTION = "What food does this creature live on?"


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("retriever")
    with one_thread():
        cfg = make_tiny_world(tmp)
        encode_knowledge_base(cfg, show_progress=False)
        yield tmp, cfg


@pytest.fixture(scope="module")
def controlled(world):
    """A store of 3 image and 3 text items whose embeddings are set from real query embeddings."""
    tmp, cfg = world
    names = [entity["name"] for entity in read_json(f"{cfg.data.root}/world.json")["entities"]]
    beta, alpha, gamma, delta = names[:4]
    items = [KBItem("img-beta", "image+text", _png((200, 20, 20)), "a red creature", beta),
             KBItem("img-alpha", "image", _png((20, 20, 200)), "", alpha),
             KBItem("img-gamma", "image+text", _png((20, 200, 20)), "a green creature", gamma),
             KBItem("txt-beta", "text", None, f"{beta} eats seeds", beta),
             KBItem("txt-alpha", "text", None, f"{alpha} eats fish", alpha),
             KBItem("txt-delta", "text", None, f"{delta} eats leaves", delta)]
    store = KBStore.open(build_kb_store(items, tmp / "controlled_store", show_progress=False))
    encoder = MultimodalRetrievalEncoder.from_pretrained(cfg.model.fusion.checkpoint).eval()
    batcher = retrieval_batcher(cfg)
    example = load_split(cfg.data, "val")[0]
    image = ImageLoader(None).load(example.image, example.id)
    probe = Retriever(encoder, batcher, GroupIndexes(tmp, {}, {}), kb=store)
    q = {"image": probe.embed_queries([image], [""])[0],
         "beta": probe.embed_queries([None], [expand_question(QUESTION, [beta])])[0],
         "alpha": probe.embed_queries([None], [expand_question(QUESTION, [alpha])])[0],
         "fused": probe.embed_queries([image], [QUESTION])[0]}
    # The outcomes below are only distinguishable if these queries differ.
    assert float(q["beta"] @ q["alpha"]) < 0.9999 and float(q["image"] @ q["beta"]) < 0.9999
    fingerprint = encoder_fingerprint(cfg.model.fusion.checkpoint)
    embeddings = tmp / "controlled_embeddings"
    write_shard(embeddings / "image", 0, np.stack([q["image"], -q["image"], q["beta"]]),
                ["img-beta", "img-alpha", "img-gamma"], update_manifest=False)
    write_shard(embeddings / "text", 0, np.stack([q["beta"], q["alpha"], q["fused"]]),
                ["txt-beta", "txt-alpha", "txt-delta"], update_manifest=False)
    for group in ("image", "text"):
        write_shards_manifest(embeddings / group, encoder_fingerprint=fingerprint)
    index_dir = build_group_indexes(embeddings, tmp / "controlled_index", fingerprint, {"image": 3, "text": 3},
                                    IndexRequest()).parent
    indexes = GroupIndexes.load(index_dir, expected_fingerprint=fingerprint)

    def make(mode: str, **kwargs) -> Retriever:
        return Retriever(encoder, batcher, indexes, mode, kb=store, **kwargs)

    return {"make": make, "image": image, "names": (beta, alpha, gamma, delta), "store": store,
            "encoder": encoder, "batcher": batcher}


def test_two_stage_expands_with_the_top_image_title_and_searches_text_items_only(controlled):
    beta = controlled["names"][0]
    with one_thread():
        result = controlled["make"]("two_stage").retrieve_two_stage([controlled["image"]], [QUESTION], k=2)[0]
    assert result.image_hits[0][0] == "img-beta" and result.image_hits[0][1] == pytest.approx(1.0, abs=1e-4)
    assert result.entity_names == [beta]
    assert result.expanded_question == expand_question(QUESTION, [beta]) and beta in result.expanded_question
    # img-gamma's embedding equals the stage-2 query too: only a text-only search leaves it out.
    assert [item_id for item_id, _ in result.text_hits] == ["txt-beta", "txt-alpha"]
    assert result.text_hits[0][1] == pytest.approx(1.0, abs=1e-4), "stage 2 must be the text-only expanded query"


def test_two_stage_uses_as_many_distinct_names_as_asked(controlled):
    beta, _, gamma, _ = controlled["names"]
    with one_thread():
        retriever = controlled["make"]("two_stage", expansion_entities=2)
        result = retriever.retrieve_two_stage([controlled["image"]], [QUESTION], k=1)[0]
        # retrieve() ranks the snippet anchors: the best image hit of each entity (tests/retrieval/test_snippets.py)
        assert retriever.retrieve([controlled["image"]], [QUESTION], 1) == [result.image_hits[:1]]
    assert result.entity_names == [beta, gamma]


def test_image_mode_searches_image_items_with_the_image_only_query(controlled):
    with one_thread():
        hits = controlled["make"]("image").retrieve([controlled["image"]], [QUESTION], k=3)[0]
    assert [item_id for item_id, _ in hits] == ["img-beta", "img-gamma", "img-alpha"]
    assert hits[0][1] == pytest.approx(1.0, abs=1e-4)


def test_ra_blip_mode_merges_both_groups_by_score(controlled):
    with one_thread():
        hits = controlled["make"]("ra_blip").retrieve([controlled["image"]], [QUESTION], k=6)[0]
    assert hits[0][0] == "txt-delta" and hits[0][1] == pytest.approx(1.0, abs=1e-4)
    assert sorted(item_id for item_id, _ in hits) == sorted(
        ["img-beta", "img-alpha", "img-gamma", "txt-beta", "txt-alpha", "txt-delta"])
    scores = [score for _, score in hits]
    assert scores == sorted(scores, reverse=True)


def test_exact_rerank_keeps_the_exact_order_of_a_flat_index(controlled):
    with one_thread():
        plain = controlled["make"]("ra_blip").retrieve([controlled["image"]], [QUESTION], k=5)
        exact = controlled["make"]("ra_blip", rerank_exact=True).retrieve([controlled["image"]], [QUESTION], k=5)
    # img-gamma and txt-beta hold the same embedding: equal scores may come in either order (k=5 keeps both).
    def tie_order(hits):
        return sorted(hits, key=lambda hit: (-round(hit[1], 4), hit[0]))

    assert [i for i, _ in tie_order(plain[0])] == [i for i, _ in tie_order(exact[0])]
    np.testing.assert_allclose([s for _, s in plain[0]], [s for _, s in exact[0]], atol=1e-5)


def test_model_rerank_orders_candidates_by_the_rerankers_scores(controlled):
    encoder, batcher, store = controlled["encoder"], controlled["batcher"], controlled["store"]
    reranker = FusionReranker(encoder)
    with one_thread():
        hits = controlled["make"]("ra_blip", reranker=reranker, rerank_factor=3).retrieve(
            [controlled["image"]], [QUESTION], k=2)[0]
        ids = ["img-beta", "img-alpha", "img-gamma", "txt-beta", "txt-alpha", "txt-delta"]
        items = store.get_many(ids)
        images = [ImageLoader(None).load(store.image_of(i), i.id) if i.modality != "text" else None for i in items]
        with torch.no_grad():
            expected = reranker.rerank_scores(batcher.queries([controlled["image"]] * 6, [QUESTION] * 6),
                                              batcher.items(items, images)).tolist()
    best = sorted(zip(ids, expected), key=lambda pair: -pair[1])[:2]
    assert [item_id for item_id, _ in hits] == [item_id for item_id, _ in best]
    np.testing.assert_allclose([s for _, s in hits], [s for _, s in best], atol=1e-4)


def test_image_modes_refuse_questions_without_an_image(controlled):
    for mode in ("image", "two_stage"):
        with pytest.raises(RablipError, match="no image"):
            controlled["make"](mode).retrieve([None], [QUESTION], k=1)


def test_world_two_stage_expands_with_stage_one_titles(world):
    _, cfg = world
    from rablip.config import load_config

    two_stage = load_config(str(PRETRAIN_CONFIG), world_overrides(world[0]) + ["retrieval.mode=two_stage"])
    examples = load_split(cfg.data, "val")[:6]
    loader = ImageLoader(None)
    with one_thread():
        retriever = Retriever.from_config(two_stage)
        results = retriever.retrieve_two_stage([loader.load(ex.image, ex.id) for ex in examples],
                                               [ex.question for ex in examples], k=3)
    store = retriever.kb
    for example, result in zip(examples, results):
        top_title = store[result.image_hits[0][0]].title
        assert result.entity_names == [top_title] and top_title in result.expanded_question
        assert example.question in result.expanded_question
        assert all(item.modality != "text" for item in store.get_many([i for i, _ in result.image_hits]))
        assert len(result.text_hits) == 3
        assert all(item.modality == "text" for item in store.get_many([i for i, _ in result.text_hits]))


def test_uninstructed_flag_reaches_the_encoder_and_changes_fused_queries(world):
    tmp, cfg = world
    from rablip.config import load_config

    uninstructed_cfg = load_config(str(PRETRAIN_CONFIG), world_overrides(tmp) + ["retrieval.instruct_queries=false"])
    example = load_split(cfg.data, "val")[0]
    image = ImageLoader(None).load(example.image, example.id)
    with one_thread():
        instructed = Retriever.from_config(cfg)
        uninstructed = Retriever.from_config(uninstructed_cfg)
        assert instructed.encoder.instruct_queries and not uninstructed.encoder.instruct_queries
        a = instructed.embed_queries([image], [example.question])
        b = uninstructed.embed_queries([image], [example.question])
        # Image-only queries carry no instruction either way.
        np.testing.assert_allclose(instructed.embed_queries([image], [""]), uninstructed.embed_queries([image], [""]),
                                   atol=1e-6)
    assert not np.allclose(a, b, atol=1e-4)


def test_split_cache_is_written_reused_and_recomputed_when_settings_change(world):
    tmp, cfg = world
    from rablip.config import load_config

    run_dir = tmp / "cache_run"
    run_dir.mkdir()
    examples = load_split(cfg.data, "val")
    with one_thread():
        first = retrieve_split_cached(cfg, "val", examples, run_dir)
    results_path, meta_path = cache_paths(run_dir, "val")
    assert set(first) == {ex.id for ex in examples}
    assert all(len(hits) == cache_depth(cfg) for hits in first.values())
    # Tamper with the cached scores: a reused cache returns them, a recomputed one would not.
    lines = [json.loads(line) for line in results_path.read_text().splitlines()]
    lines[0]["items"][0]["score"] = 123.0
    results_path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    reused = retrieve_split_cached(cfg, "val", examples, run_dir)
    assert reused[lines[0]["id"]][0][1] == 123.0
    changed = load_config(str(PRETRAIN_CONFIG), world_overrides(tmp) + ["retrieval.k=6"])
    with one_thread():
        recomputed = retrieve_split_cached(changed, "val", examples, run_dir)
    assert recomputed[lines[0]["id"]][0][1] != 123.0 and len(recomputed[lines[0]["id"]]) == 12
    assert read_json(meta_path)["depth"] == 12
