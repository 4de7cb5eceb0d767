"""The re-ranker stage (``run_pretrain.py train.stage=rerank``): on the tiny world with a fresh encoder
and its index, only the head trains, it is saved beside the encoder (whose files stay bit-identical)
and loaded by the retriever, and training lowers the listwise loss on the training questions."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from rablip.benchmarks import load_split
from rablip.config import load_config
from rablip.errors import ConfigError, RablipError
from rablip.models.fusion_checkpoint import CONFIG_FILE, WEIGHTS_FILE
from rablip.models.rerank import HEAD_FILE, FusionReranker, load_rerank_head
from rablip.retrieval.cache import cache_key
from rablip.retrieval.components import encoder_fingerprint
from rablip.retrieval.retriever import Retriever
from rablip.stages.encode_kb import encode_knowledge_base
from rablip.stages.pretrain import pretrain
from rablip.stages.rerank import (
    Candidates,
    RerankSamples,
    candidate_features,
    collate,
    listwise_loss,
    query_texts,
)
from tests.retrieval.tiny_world import PRETRAIN_CONFIG, make_tiny_world, one_thread, world_overrides

ROOT = Path(__file__).resolve().parents[2]
STAGE = ["train.stage=rerank", "train.max_steps=40", "train.warmup_steps=0", "train.lr=0.01", "train.batch_size=8",
         "train.save_every=1000", "train.eval_every=20"]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny world, a fresh encoder and its index; the stage run once on them."""
    tmp = tmp_path_factory.mktemp("rerank_stage")
    with one_thread():
        cfg = make_tiny_world(tmp)
        encode_knowledge_base(cfg, show_progress=False)
        encoder_dir = Path(cfg.model.fusion.checkpoint)
        before = {name: _digest(encoder_dir / name) for name in (CONFIG_FILE, WEIGHTS_FILE)}
        stage_cfg = load_config(str(PRETRAIN_CONFIG), world_overrides(tmp) + STAGE + [f"run.output_dir={tmp / 'rr'}"])
        assert pretrain(stage_cfg) == 0
    return {"tmp": tmp, "cfg": cfg, "stage_cfg": stage_cfg, "encoder_dir": encoder_dir, "before": before}


def _with(cfg, **retrieval):
    return dataclasses.replace(cfg, retrieval=dataclasses.replace(cfg.retrieval, **retrieval))


def test_only_the_head_is_written_and_the_encoder_files_stay_bit_identical(trained):
    encoder_dir = trained["encoder_dir"]
    assert {name: _digest(encoder_dir / name) for name in (CONFIG_FILE, WEIGHTS_FILE)} == trained["before"]
    installed, final = encoder_dir / HEAD_FILE, trained["tmp"] / "rr" / "final" / HEAD_FILE
    assert installed.is_file() and final.read_bytes() == installed.read_bytes()
    head = load_file(str(installed))
    encoder = Retriever.from_config(trained["cfg"]).encoder
    assert set(head) == {"weight", "bias"} and head["weight"].shape == encoder.match_head.weight.shape
    # The head moved away from the ITM head it started from; the ITM head itself did not move.
    assert not torch.allclose(head["weight"], encoder.match_head.weight)
    checkpoints = sorted((trained["tmp"] / "rr" / "checkpoints").glob("step-*"))
    assert set(load_file(str(checkpoints[-1] / "model.safetensors"))) == {"head.weight", "head.bias"}


def test_the_retriever_scores_with_the_saved_head_when_rerank_model_is_on(trained):
    cfg = trained["cfg"]
    saved = load_file(str(trained["encoder_dir"] / HEAD_FILE))
    with one_thread():
        plain = Retriever.from_config(cfg)
        reranking = Retriever.from_config(_with(cfg, rerank_model=True))
        assert plain.reranker is None and reranking.reranker.trained
        torch.testing.assert_close(reranking.reranker.head.weight.detach(), saved["weight"])
        # Its hits carry the trained head's log-odds of (question, item), best first.
        example = next(ex for ex in load_split(cfg.data, "val") if ex.relevant_ids)
        image = reranking.load_item_image(example.image, example.id)
        hits = reranking.retrieve([image], [example.question], k=3)[0]
        fused, rows = reranking.pair_features([image], [example.question], [[item_id for item_id, _ in hits]])
        head = torch.nn.Linear(fused.shape[1], 2)
        head.load_state_dict(saved)
        with torch.no_grad():
            logits = head(fused)
        expected = (logits[:, 1] - logits[:, 0]).tolist()
    assert [item_id for _, item_id in rows] == [item_id for item_id, _ in hits]
    assert [score for _, score in hits] == pytest.approx(expected, abs=1e-5)
    assert [score for _, score in hits] == sorted((score for _, score in hits), reverse=True)


def test_without_a_saved_head_the_itm_head_scores(trained, tmp_path):
    encoder = Retriever.from_config(trained["cfg"]).encoder
    assert FusionReranker.from_pretrained(encoder, tmp_path).head is None
    assert FusionReranker.from_pretrained(encoder, trained["encoder_dir"]).trained


def test_training_lowers_the_listwise_loss_on_the_training_questions(trained):
    cfg = trained["cfg"]
    with one_thread():
        retriever = Retriever.from_config(cfg)
        examples = [ex for ex in load_split(cfg.data, "train") if ex.relevant_ids]
        questions = [q for q in candidate_features(cfg, retriever, examples, add_relevant=True)
                     if q.relevant.any() and not q.relevant.all()]
        assert questions
        batch = collate([RerankSamples(questions, seed=0)[(i, 0)] for i in range(len(questions))])
        initial = FusionReranker(retriever.encoder, own_head=True)  # what the stage started from
        final = FusionReranker.from_pretrained(retriever.encoder, trained["encoder_dir"])
        with torch.no_grad():
            loss_before, logged_before = listwise_loss(initial, batch)
            loss_after, logged_after = listwise_loss(final, batch)
    assert float(loss_after) < float(loss_before) - 0.05
    assert logged_after["positive_first"] >= logged_before["positive_first"]


def test_a_head_of_another_encoder_or_width_is_refused(trained, tmp_path):
    encoder_dir = trained["encoder_dir"]
    hidden = load_file(str(encoder_dir / HEAD_FILE))["weight"].shape[1]
    assert load_rerank_head(encoder_dir, hidden, encoder_fingerprint(encoder_dir)) is not None
    with pytest.raises(RablipError, match="trained on the encoder with fingerprint"):
        load_rerank_head(encoder_dir, hidden, "0" * 64)
    with pytest.raises(RablipError, match="needs"):
        load_rerank_head(encoder_dir, hidden + 1)
    (tmp_path / HEAD_FILE).write_bytes(b"not safetensors")
    with pytest.raises(RablipError, match="cannot be read"):
        load_rerank_head(tmp_path, hidden)


def test_the_retrieval_cache_key_follows_the_trained_head(trained, tmp_path):
    cfg = trained["cfg"]
    examples = load_split(cfg.data, "val")
    moved = tmp_path / "encoder"
    moved.mkdir()
    for name in (CONFIG_FILE, WEIGHTS_FILE, HEAD_FILE):
        (moved / name).write_bytes((trained["encoder_dir"] / name).read_bytes())
    on = _with(dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, fusion=dataclasses.replace(cfg.model.fusion, checkpoint=str(moved)))), rerank_model=True)
    off = _with(on, rerank_model=False)
    key_on, key_off = cache_key(on, "val", examples), cache_key(off, "val", examples)
    (moved / HEAD_FILE).unlink()
    assert cache_key(on, "val", examples) != key_on  # the ITM head now scores: other results
    assert cache_key(off, "val", examples) == key_off  # the retriever alone never reads the head


def test_listwise_loss_and_padding_on_a_known_case():
    class FirstFeature(torch.nn.Module):
        def forward(self, fused: torch.Tensor) -> torch.Tensor:
            return fused[:, 0]

    batch = collate([torch.tensor([[2.0, 9.0], [0.0, 9.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0], [3.0, 0.0]])])
    assert batch["features"].shape == (2, 3, 2) and batch["mask"].tolist() == [[True, True, False], [True] * 3]
    loss, logged = listwise_loss(FirstFeature(), batch)
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + 1 + math.exp(2))) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert logged["positive_first"] == 0.5


def test_samples_put_a_drawn_positive_first_and_every_negative_after():
    features = torch.arange(10, dtype=torch.float16).view(5, 2)
    relevant = torch.tensor([False, True, False, True, False])
    samples = RerankSamples([Candidates(list("abcde"), features, relevant)], seed=0)
    drawn = set()
    for epoch in range(20):
        row = samples[(0, epoch)]
        assert row.shape == (4, 2) and row[1:].tolist() == features[[0, 2, 4]].tolist()
        drawn.add(tuple(row[0].tolist()))
    assert drawn == {tuple(features[1].tolist()), tuple(features[3].tolist())}


def test_two_stage_retrieval_and_unknown_stages_are_refused(tmp_path):
    two_stage = load_config(str(PRETRAIN_CONFIG), world_overrides(tmp_path) + ["retrieval.mode=two_stage"])
    with pytest.raises(ConfigError, match="two_stage"):
        query_texts(two_stage, [])
    with pytest.raises(ConfigError, match="train.stage"):
        load_config(str(PRETRAIN_CONFIG), world_overrides(tmp_path) + ["train.stage=rernak"])


@pytest.mark.parametrize("config", ["synthetic_rerank", "webqa_rerank"])
def test_the_rerank_configs_select_the_stage(config):
    result = subprocess.run([sys.executable, "run_pretrain.py", "--config", f"configs/experiment/{config}.yaml",
                             "--print-config"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["train"]["stage"] == "rerank" and printed["retrieval"]["source"] == "index"
