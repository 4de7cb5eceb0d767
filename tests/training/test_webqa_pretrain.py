"""Pre-training the fusion encoder on WebQA (configs/experiment/webqa_pretrain.yaml's stage): WebQA
questions have no image, so a question pair's query is the question text alone, and its targets are
the question's positive facts; every image fact's image finds its own fact. A tiny run goes end to end
on the WebQA KB store, whose images are read from imgs.tsv."""

from __future__ import annotations

import dataclasses

import pytest
from PIL import Image

from rablip.benchmarks import load_split
from rablip.config import load_config
from rablip.data.kb import KBStore
from rablip.models.factory import build_retrieval_encoder, load_generator
from rablip.models.retrieval_processing import RetrievalBatcher
from rablip.stages import pretrain as pretrain_stage
from rablip.stages.pretrain import PairDataset, build_pairs, make_retrieval_evaluator, pretrain
from tests.data.test_webqa_kb import webqa_world
from tests.retrieval.tiny_world import PRETRAIN_CONFIG, one_thread, world_overrides


@pytest.fixture(scope="module")
def webqa(tmp_path_factory):
    return webqa_world(tmp_path_factory.mktemp("webqa_pretrain"), n_questions=9, n_test=2, seed=2)


def webqa_config(root, files, *extra: str):
    return load_config(str(PRETRAIN_CONFIG), world_overrides(root) + [
        "data.dataset=webqa", f"data.train.path={files.train_val}", "data.train.split=train",
        f"data.val.path={files.train_val}", "data.val.split=val", "data.kb.format=webqa",
        f"data.kb.path={files.train_val}", f"data.kb.store_dir={root / 'store'}", "data.kb.root=",
        f"data.kb.webqa_images_tsv={files.tsv}", "train.item_pairs=self", *extra])


def test_webqa_pairs_query_with_the_question_text_alone(webqa):
    root, files = webqa
    cfg = webqa_config(root, files)
    kb = KBStore.open(cfg.data.kb.store_dir)
    examples = load_split(cfg.data, "train")
    pairs = build_pairs(examples, kb, "self")
    question_pairs = [pair for pair in pairs if pair.from_question]
    assert [pair.record_id for pair in question_pairs] == files.train_guids
    assert sum(1 for pair in pairs if not pair.from_question) == len(files.image_ids)
    dataset = PairDataset(cfg, pairs, kb)
    for pair in question_pairs:
        example = next(ex for ex in examples if ex.id == pair.record_id)
        query_image, question, item, item_image = dataset[(pairs.index(pair), 0)]
        assert query_image is None and question == example.question and item.id in example.relevant_ids
        assert (item_image is None) == (item.modality == "text")
    item_pair = next(pair for pair in pairs if not pair.from_question)
    query_image, question, item, item_image = dataset[(pairs.index(item_pair), 0)]
    assert item.id == item_pair.record_id and isinstance(item_image, Image.Image) and query_image is item_image


def test_pretraining_runs_on_webqa(webqa):
    root, files = webqa
    cfg = webqa_config(root, files, "train.max_steps=2", "train.batch_size=4", "train.save_every=100",
                       "eval.batch_size=8")
    with one_thread():
        assert pretrain(cfg) == 0
    assert (root / "run" / "final").is_dir() and any((root / "run" / "final").glob("*.safetensors"))


def test_candidates_scope_evaluates_among_each_questions_sources_without_walking_the_corpus(webqa, monkeypatch):
    root, files = webqa
    cfg = webqa_config(root, files, "retrieval.scope=candidates")
    kb = KBStore.open(cfg.data.kb.store_dir)
    generator = load_generator(cfg)
    batcher = RetrievalBatcher.from_checkpoint(generator.config.base_checkpoint, cfg.data.qformer_max_length)

    class Model:
        encoder = build_retrieval_encoder(cfg, generator)

    def no_walk(*args, **kwargs):
        raise AssertionError("candidates scope must embed only the listed sources")

    monkeypatch.setattr(kb, "iter_batches", no_walk)
    with one_thread():
        scores = make_retrieval_evaluator(cfg, batcher, kb)(Model())
    # Every val question lists at most 10 sources, its positives among them: all are found within 10.
    assert scores["recall@10"] == 100.0 and 0 < scores["mrr"] <= 1


def test_evaluator_scores_nothing_without_labelled_val_questions(webqa, monkeypatch):
    """InfoSeek's val questions name no relevant item: the evaluator returns {} instead of failing."""
    root, files = webqa
    cfg = webqa_config(root, files)
    kb = KBStore.open(cfg.data.kb.store_dir)
    generator = load_generator(cfg)
    batcher = RetrievalBatcher.from_checkpoint(generator.config.base_checkpoint, cfg.data.qformer_max_length)
    unlabelled = [dataclasses.replace(ex, relevant_ids=[]) for ex in load_split(cfg.data, "val")]
    monkeypatch.setattr(pretrain_stage, "load_split", lambda data, split: unlabelled)

    class Model:
        encoder = build_retrieval_encoder(cfg, generator)

    assert make_retrieval_evaluator(cfg, batcher, kb)(Model()) == {}
