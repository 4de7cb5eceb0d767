"""The WebQA table's command chain end to end, at tiny size, with the release defaults of the WebQA configs.

A WebQA in the official file formats (rablip/synthetic/webqa_files.py) goes through every step of the chain that
configs/experiment/webqa_pretrain.yaml documents: build the KB store -> webqa_pretrain -> encode the KB and
build the index -> webqa_finetune -> webqa_rerank -> webqa_eval (val, scored; test, the leaderboard
submission). The configs are used as they are, with only paths, sizes and step counts overridden, so the
release's defaults (prompt.template=release, askg.answer_refs=gold, multi_image=concat, retrieval.scope=
candidates, the re-ranker) are what runs; once with a tiny T5 and once with a tiny decoder-only LLaMA.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rablip.config import load_config
from rablip.data.kb_build import build_kb_from_config
from rablip.stages.encode_kb import encode_knowledge_base
from rablip.stages.evaluate import evaluate
from rablip.stages.finetune import finetune
from rablip.stages.pretrain import pretrain
from rablip.stages.rerank import train_reranker
from rablip.synthetic.settings import TinyModelSection
from rablip.synthetic.tiny_model import build_generator_for_texts
from rablip.synthetic.webqa_files import webqa_texts, write_webqa
from tests.retrieval.tiny_world import one_thread

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "configs" / "experiment"
TINY = {"image_size": 32, "patch_size": 8, "vision_hidden_size": 32, "vision_intermediate_size": 64,
        "vision_backend": "hf", "qformer_hidden_size": 32, "qformer_intermediate_size": 64, "num_query_tokens": 4,
        "llm_hidden_size": 32, "llm_intermediate_size": 64, "llm_copy_init": False}


def tiny_generator(files, out: Path, llm_type: str) -> Path:
    """A tiny InstructBLIP with tokenizers trained on the WebQA texts, saved as a transformers dir."""
    return build_generator_for_texts(webqa_texts(files.train_val, files.test), out,
                                     TinyModelSection(**TINY, llm_type=llm_type, tokenizer_vocab_size=400))


def chain_config(name: str, root: Path, generator: Path, *extra: str):
    """configs/experiment/<name>.yaml pointed at ``root`` (the WebQA files under root/data/webqa) with tiny sizes."""
    runs = root / "runs" / "webqa"
    overrides = [
        f"data.root={root}", f"model.checkpoint={generator}", f"model.fusion.checkpoint={runs / 'pretrain' / 'final'}",
        "model.fusion.layers=1", "model.fusion.dim=16", f"retrieval.index_dir={root / 'data' / 'webqa' / 'index'}",
        "retrieval.shard_rows=16", "retrieval.encode_batch_size=8", "train.epochs=0", "train.max_steps=3",
        "train.warmup_steps=1", "train.batch_size=4", "train.save_every=1000", "train.eval_every=0",
        "eval.batch_size=4", "eval.num_beams=1", "eval.max_new_tokens=4", "data.max_input_length=128",
        "data.qformer_max_length=96", *extra]
    return load_config(str(EXPERIMENTS / f"{name}.yaml"), overrides)


@pytest.mark.parametrize("llm_type", ["t5", "llama"])
def test_webqa_chain_trains_reranks_scores_val_and_writes_the_test_submission(tmp_path, llm_type):
    files = write_webqa(tmp_path / "data" / "webqa", n_questions=12, n_test=3, seed=1)
    generator = tiny_generator(files, tmp_path / "model", llm_type)
    runs = tmp_path / "runs" / "webqa"
    with one_thread():
        build_kb_from_config(chain_config("webqa_pretrain", tmp_path, generator).data.kb, show_progress=False)
        pretrain_cfg = chain_config("webqa_pretrain", tmp_path, generator, f"run.output_dir={runs / 'pretrain'}")
        assert pretrain(pretrain_cfg) == 0
        eval_cfg = chain_config("webqa_eval", tmp_path, generator, f"run.output_dir={runs / 'eval'}",
                                f"eval.checkpoint={runs / 'finetune' / 'final'}")
        encode_knowledge_base(eval_cfg, show_progress=False)

        finetune_cfg = chain_config("webqa_finetune", tmp_path, generator, f"run.output_dir={runs / 'finetune'}")
        assert (finetune_cfg.prompt.template, finetune_cfg.askg.answer_refs, finetune_cfg.model.multi_image) == (
            "release", "gold", "concat")
        assert finetune(finetune_cfg) == 0

        rerank_cfg = chain_config("webqa_rerank", tmp_path, generator, f"run.output_dir={runs / 'rerank'}",
                                  f"eval.checkpoint={runs / 'finetune' / 'final'}")
        assert train_reranker(rerank_cfg) == 0
        assert (runs / "pretrain" / "final" / "rerank_head.safetensors").is_file()

        assert (eval_cfg.retrieval.scope, eval_cfg.retrieval.rerank_model) == ("candidates", True)
        assert evaluate(eval_cfg) == 0
        test_cfg = chain_config("webqa_eval", tmp_path, generator, f"run.output_dir={runs / 'test'}",
                                f"eval.checkpoint={runs / 'finetune' / 'final'}", "eval.split=test")
        assert evaluate(test_cfg) == 0

    metrics = json.loads((runs / "eval" / "metrics.json").read_text())
    assert metrics["num_questions"] == len(files.val_guids)
    assert 0.0 <= metrics["scores"]["retrieval_f1"] <= 1.0 and 0.0 <= metrics["scores"]["qa_acc"] <= 1.0
    assert metrics["retrieval"]["questions"] == len(files.val_guids) and "webqa_retrieval_f1" in metrics["retrieval"]
    submission = json.loads(next((runs / "test").glob("predictions*.json")).read_text())
    assert set(submission) == set(files.test_guids)
    test_records = json.loads(files.test.read_text())
    for guid, entry in submission.items():
        assert set(entry) == {"sources", "answer"} and isinstance(entry["answer"], str)
        listed = {fact.get("snippet_id") or str(fact["image_id"])
                  for key in ("txt_Facts", "img_Facts") for fact in test_records[guid][key]}
        assert 1 <= len(entry["sources"]) <= 2 and set(entry["sources"]) <= listed  # scope=candidates
