"""``retrieval.scope: candidates``: each WebQA question is ranked among its own listed sources only,
exactly by inner product with their stored embeddings; the scope is refused where it cannot apply and
is part of the retrieval cache key."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from rablip.benchmarks.webqa import load_webqa
from rablip.config import load_config
from rablip.data.images import ImageLoader
from rablip.data.kb import KBStore
from rablip.data.kb_build import build_kb_from_config
from rablip.data.records import QAExample
from rablip.errors import ConfigError
from rablip.retrieval.cache import cache_key
from rablip.retrieval.candidates import check_scope, listed_sources, retrieve_candidates
from rablip.retrieval.group_build import IndexRequest, build_group_indexes
from rablip.retrieval.groups import GROUPS, GroupIndexes
from rablip.retrieval.shards import write_shard, write_shards_manifest
from rablip.synthetic.webqa_files import write_webqa
from tests.data.test_webqa_kb import kb_config

DIM = 16
FINGERPRINT = "test-encoder"


class FixedQueries:
    """The part of a Retriever that candidate scoring uses, with given query embeddings."""

    reranker = None
    rerank_factor = 4

    def __init__(self, indexes: GroupIndexes, vectors: dict[str, np.ndarray]) -> None:
        self.indexes = indexes
        self.vectors = vectors

    def embed_queries(self, images, texts) -> np.ndarray:
        assert all(image is None for image in images)  # WebQA questions have no image
        return np.stack([self.vectors[text] for text in texts]).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A WebQA KB store, random unit embeddings per item, and its group indexes."""
    tmp = tmp_path_factory.mktemp("candidates")
    files = write_webqa(tmp / "webqa", n_questions=12, n_test=4, seed=3)
    store = KBStore.open(build_kb_from_config(kb_config(files, tmp / "store"), show_progress=False))
    rng = np.random.default_rng(0)
    embedding = {}
    for item_id in store.ids():
        vector = rng.normal(size=DIM)
        embedding[item_id] = (vector / np.linalg.norm(vector)).astype(np.float32)
    counts = {}
    for group in GROUPS:
        ids = [item.id for batch in store.iter_batches(64) for item in batch
               if (item.modality == "text") == (group == "text")]
        write_shard(tmp / "emb" / group, 0, np.stack([embedding[i] for i in ids]), ids,
                    encoder_fingerprint=FINGERPRINT, update_manifest=False)
        write_shards_manifest(tmp / "emb" / group, encoder_fingerprint=FINGERPRINT)
        counts[group] = len(ids)
    build_group_indexes(tmp / "emb", tmp / "index", FINGERPRINT, counts, IndexRequest())
    indexes = GroupIndexes.load(tmp / "index", expected_fingerprint=FINGERPRINT, use_gpu=False)
    return tmp, files, store, embedding, indexes


def outside_item(example: QAExample, embedding: dict[str, np.ndarray]) -> str:
    """An item that is not among the question's listed sources."""
    listed = set(listed_sources(example))
    return next(item_id for item_id in sorted(embedding) if item_id not in listed)


@pytest.mark.parametrize("which", ["train_val", "test"])
def test_candidates_rank_only_the_questions_own_sources_exactly(corpus, which):
    tmp, files, store, embedding, indexes = corpus
    examples = load_webqa(getattr(files, which))
    # Each question's query is an item outside its list: global search finds that item first.
    vectors = {ex.question: embedding[outside_item(ex, embedding)] for ex in examples}
    queries = np.stack([vectors[ex.question] for ex in examples])
    global_hits = indexes.search(GROUPS, queries, 1)
    assert [hits[0][0] for hits in global_hits] == [outside_item(ex, embedding) for ex in examples]

    results = retrieve_candidates(FixedQueries(indexes, vectors), examples, 3, ImageLoader())
    assert list(results) == [ex.id for ex in examples]
    for ex in examples:
        listed = listed_sources(ex)
        assert listed  # WebQA lists sources for every question
        if which == "test":
            assert listed == ex.extra["candidate_ids"]
        else:
            assert set(listed) == set(ex.relevant_ids) | set(ex.extra["negative_ids"])
        expected = sorted(listed, key=lambda i: -float(embedding[i] @ vectors[ex.question]))[:3]
        assert [item_id for item_id, _ in results[ex.id]] == expected
        for item_id, score in results[ex.id]:
            assert score == pytest.approx(float(embedding[item_id] @ vectors[ex.question]), abs=1e-5)


def test_a_question_without_sources_gets_nothing_and_unknown_sources_are_left_out(corpus, caplog):
    tmp, files, store, embedding, indexes = corpus
    known = sorted(embedding)[:2]
    lonely = QAExample(id="none", image=None, question="q0", answers=[], extra={})
    partly = QAExample(id="some", image=None, question="q1", answers=[],
                       extra={"candidate_ids": [known[0], "not-stored", known[1]]})
    vectors = {"q0": embedding[known[0]], "q1": embedding[known[1]]}
    with caplog.at_level(logging.WARNING, logger="rablip.retrieval"):
        results = retrieve_candidates(FixedQueries(indexes, vectors), [lonely, partly], 5, ImageLoader())
    assert results["none"] == []
    assert [item_id for item_id, _ in results["some"]] == [known[1], known[0]]
    warnings = " ".join(record.getMessage() for record in caplog.records)
    assert "1 question(s) list no sources" in warnings and "not-stored" in warnings


def test_candidates_scope_is_refused_where_it_cannot_apply_and_keys_the_cache(corpus):
    tmp, files, store, embedding, indexes = corpus
    with pytest.raises(ConfigError, match="retrieval.scope=candidates.*data.dataset=okvqa"):
        check_scope(load_config(None, ["retrieval.scope=candidates", "data.dataset=okvqa"]))
    with pytest.raises(ConfigError, match="retrieval.scope=candidates.*retrieval.mode=two_stage"):
        check_scope(load_config(None, ["retrieval.scope=candidates", "data.dataset=webqa",
                                       "retrieval.mode=two_stage"]))
    with pytest.raises(ConfigError, match="retrieval.scope"):
        load_config(None, ["retrieval.scope=nearby"])
    check_scope(load_config(None, ["retrieval.scope=candidates", "data.dataset=webqa"]))

    examples = load_webqa(files.train_val)
    base = ["data.dataset=webqa", f"retrieval.index_dir={tmp / 'index'}"]
    keys = {scope: cache_key(load_config(None, base + [f"retrieval.scope={scope}"]), "val", examples)
            for scope in ("global", "candidates")}
    assert keys["global"] != keys["candidates"]
    # Under candidates the listed sources are part of the key: another list, another ranking.
    changed = [QAExample(ex.id, ex.image, ex.question, ex.answers, relevant_ids=ex.relevant_ids,
                         extra={**ex.extra, "negative_ids": ex.extra["negative_ids"][1:]}) for ex in examples]
    candidates_cfg = load_config(None, base + ["retrieval.scope=candidates"])
    assert cache_key(candidates_cfg, "val", changed) != keys["candidates"]
    global_cfg = load_config(None, base)
    assert cache_key(global_cfg, "val", changed) == keys["global"]
