"""run_eval on WebQA with a tiny generator: eval.split=test writes the leaderboard submission
(``{guid: {"sources": [...], "answer": ...}}``) and scores nothing; val is scored as before. The
references are each question's listed sources (a static retrieval file), images read from imgs.tsv
through the KB store."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from rablip.benchmarks.webqa import load_webqa
from rablip.config import load_config
from rablip.models.factory import build_retrieval_encoder, load_generator
from rablip.retrieval.candidates import listed_sources
from rablip.retrieval.static import read_retrieval, write_retrieval
from rablip.stages.encode_kb import encode_knowledge_base
from rablip.stages.evaluate import evaluate
from tests.data.test_webqa_kb import webqa_world
from tests.retrieval.tiny_world import one_thread

EVAL_CONFIG = "configs/experiment/synthetic_eval.yaml"


@pytest.fixture(scope="module")
def webqa(tmp_path_factory):
    """A tiny generator checkpoint (in a synthetic world dir), a WebQA and its KB store."""
    return webqa_world(tmp_path_factory.mktemp("webqa_eval"), n_questions=6, n_test=4, seed=1)


def eval_config(root, files, split: str, out, static_file):
    return load_config(EVAL_CONFIG, _overrides(root, files, split, out) + [
        "retrieval.source=static", f"retrieval.static_file={static_file}"])


def _overrides(root, files, split: str, out) -> list[str]:
    split_path = files.test if split == "test" else files.train_val
    return [
        f"data.root={root / 'world'}", "data.dataset=webqa", f"data.{split}.path={split_path}",
        f"data.{split}.annotations=", f"data.{split}.split={'val' if split == 'val' else ''}",
        "data.kb.format=webqa", f"data.kb.path={files.train_val}", f"data.kb.extra_paths=[{files.test}]",
        f"data.kb.webqa_images_tsv={files.tsv}", f"data.kb.store_dir={root / 'store'}", "data.kb.root=",
        f"run.output_dir={out}", "eval.checkpoint=", f"eval.split={split}", "eval.k_sweep=[]", "eval.batch_size=4",
        "eval.max_new_tokens=4", "retrieval.k=2", "eval.report=false"]


def listed_ranking(examples, path):
    """A retrieval results file ranking each question's listed sources in listed order."""
    write_retrieval(path, ((ex.id, [(item_id, 1.0 - 0.1 * rank) for rank, item_id in enumerate(listed_sources(ex))])
                           for ex in examples))
    return path


def test_test_split_writes_the_leaderboard_submission_and_is_not_scored(webqa, tmp_path, caplog):
    root, files = webqa
    examples = load_webqa(files.test)
    static = listed_ranking(examples, tmp_path / "retrieval.jsonl")
    out = tmp_path / "eval"
    with one_thread(), caplog.at_level(logging.INFO, logger="rablip.eval"):
        assert evaluate(eval_config(root, files, "test", out, static)) == 0
    submission = json.loads((out / "predictions.json").read_text())
    assert list(submission) == files.test_guids
    for example in examples:
        entry = submission[example.id]
        assert set(entry) == {"sources", "answer"} and isinstance(entry["answer"], str)
        # The chosen sources: the first two references, among the question's own txt_Facts / img_Facts.
        assert entry["sources"] == example.extra["candidate_ids"][:2]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["num_questions"] == len(examples)
    assert "scores" not in metrics and "main_score" not in metrics
    assert any("scoring skipped" in record.getMessage() and "predictions.json" in record.getMessage()
               for record in caplog.records)


def test_val_split_is_still_scored(webqa, tmp_path):
    root, files = webqa
    examples = load_webqa(files.train_val, "val")
    static = listed_ranking(examples, tmp_path / "retrieval.jsonl")
    out = tmp_path / "eval"
    with one_thread():
        assert evaluate(eval_config(root, files, "val", out, static)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "val" and set(json.loads((out / "predictions.json").read_text())) == set(files.val_guids)
    assert metrics["scores"]["qa_acc"] is not None and "main_score" in metrics
    assert "webqa_retrieval_f1" in metrics["retrieval"]


@pytest.mark.parametrize("split", ["test", "val"])
def test_live_index_with_candidates_scope_answers_from_each_questions_own_sources(webqa, tmp_path, split):
    """The KB (images read from imgs.tsv) encoded by a fresh tiny encoder; retrieval.scope=candidates."""
    root, files = webqa
    out = tmp_path / "eval"
    live = [f"model.fusion.checkpoint={root / 'encoder'}", f"retrieval.index_dir={root / 'index'}",
            "retrieval.source=index", "retrieval.scope=candidates", "retrieval.shard_rows=8",
            "retrieval.encode_batch_size=4"]
    cfg = load_config(EVAL_CONFIG, _overrides(root, files, split, out) + live)
    with one_thread():
        if not (root / "index").is_dir():
            torch.manual_seed(0)
            build_retrieval_encoder(cfg, load_generator(cfg)).save_pretrained(str(root / "encoder"))
            encode_knowledge_base(cfg, show_progress=False)
        assert evaluate(cfg) == 0
    examples = load_webqa(files.test if split == "test" else files.train_val, None if split == "test" else "val")
    ranked = read_retrieval(out / f"retrieval_{split}.jsonl")
    submission = json.loads((out / "predictions.json").read_text())
    for example in examples:
        listed = listed_sources(example)
        ids = [item_id for item_id, _ in ranked[example.id]]
        assert ids and set(ids) <= set(listed) and len(ids) == min(len(listed), 10)
        assert submission[example.id]["sources"] == ids[:2]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["recipe"]["config"]["retrieval"]["scope"] == "candidates"
    assert ("scores" in metrics) == (split == "val")
