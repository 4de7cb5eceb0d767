"""RORA-VLM's E-VQA chain end to end, at tiny size, with the E-VQA configs as they are.

An Encyclopedic-VQA in the official file formats (rablip/synthetic/evqa_files.py: split CSVs, Landmarks and
iNaturalist question images, the Wikipedia KB JSON with its image map) goes through the chain that
configs/experiment/evqa_finetune.yaml documents: build the KB store (evqa_wiki) -> pre-train the retrieval
encoder from a tiny InstructBLIP (infoseek_pretrain.yaml's settings pointed at the E-VQA data: LLaVA has no
Q-Former) -> encode the KB and build the index -> evqa_finetune (a tiny LLaVA: LoRA, and again with full
fine-tuning; two-stage snippets, one noise snippet, visual token refinement) -> evqa_eval (val, scored), and
``rablip-score evqa`` on the written predictions gives the same numbers. Only paths, sizes and step counts
are overridden.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

import rablip.models.llava as llava_module
import rablip.stages.finetune as finetune_module
from rablip.benchmarks.cli import score_main
from rablip.config import load_config
from rablip.data.kb_build import build_kb_from_config
from rablip.models.lora import ADAPTER_FILES
from rablip.models.processor_files import load_tokenizer
from rablip.stages.encode_kb import encode_knowledge_base
from rablip.stages.evaluate import evaluate
from rablip.stages.finetune import finetune
from rablip.stages.pretrain import pretrain
from rablip.synthetic.evqa_files import write_evqa
from rablip.synthetic.settings import TinyModelSection
from rablip.synthetic.tiny_model import build_generator_for_texts
from tests.models.tiny_llava import build_tiny_llava
from tests.retrieval.tiny_world import one_thread

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "configs" / "experiment"
TINY = {"image_size": 32, "patch_size": 8, "vision_hidden_size": 32, "vision_intermediate_size": 64,
        "vision_backend": "hf", "qformer_hidden_size": 32, "qformer_intermediate_size": 64, "num_query_tokens": 4,
        "llm_hidden_size": 32, "llm_intermediate_size": 64, "llm_copy_init": False, "llm_type": "llama",
        "tokenizer_vocab_size": 300}
LLAVA_IMAGE_SIZE = 42  # 3 x 3 = 9 tokens per image, refined to 4
KB = ("data.kb.root=data/evqa/kb_images", "data.kb.evqa_image_map=data/evqa/kb_images/image_map.tsv")
SPLIT = ("inat_root=data/inat2021", "inat_annotations=[data/inat2021/train.json,data/inat2021/val.json]",
         "landmarks_root=data/landmarks/train")
# infoseek_pretrain.yaml's data section is InfoSeek's: point it at the E-VQA files (configs/data/evqa.yaml).
EVQA_DATA = ("data.dataset=evqa", "data.train.path=data/evqa/train.csv", "data.train.image_root=",
             *(f"data.train.{each}" for each in SPLIT), "data.val.path=data/evqa/val.csv", "data.val.qtypes=",
             "data.val.image_root=", *(f"data.val.{each}" for each in SPLIT), "data.kb.format=evqa_wiki",
             "data.kb.path=data/evqa/encyclopedic_kb_wiki.json", "data.kb.store_dir=data/evqa/kb_store",
             "data.extra_pairs.share=0", "data.extra_pairs.path=")


def chain_config(name: str, root: Path, checkpoint: Path, *extra: str):
    """configs/experiment/<name>.yaml pointed at the E-VQA files under ``root`` with tiny sizes."""
    runs = root / "runs"
    return load_config(str(EXPERIMENTS / f"{name}.yaml"), [
        f"data.root={root}", f"model.checkpoint={checkpoint}", f"model.fusion.checkpoint={runs / 'pretrain' / 'final'}",
        "model.fusion.layers=1", "model.fusion.dim=16", *KB, f"retrieval.index_dir={root / 'data' / 'evqa' / 'index'}",
        "retrieval.index_type=flat", "retrieval.shard_rows=16", "retrieval.encode_batch_size=8",
        "train.epochs=0", "train.max_steps=3",
        "train.warmup_steps=1", "train.batch_size=4", "train.grad_accum=1", "train.save_every=1000",
        "train.eval_every=0", "eval.batch_size=4", "eval.num_beams=1", "eval.max_new_tokens=4",
        "data.max_input_length=256", "data.qformer_max_length=96", *extra])


LLAVA_FT = ("data.train.path=data/evqa/train.csv", "model.refine.top_m=4", "model.lora.r=4", "model.lora.alpha=8.0",
            "model.lora.target_modules=[q_proj,v_proj]")


@pytest.fixture
def spies(monkeypatch):
    """Record the LLaVA refinement selections (each forward with model.refine on makes one) and the training
    reference plans (ranked snippets, then the noise snippet)."""
    seen = {"refine": [], "plans": []}
    refine, plan = llava_module.refinement_indices, finetune_module.plan_references

    def counted(*args, **kwargs):
        seen["refine"].append(1)
        return refine(*args, **kwargs)

    def planned(*args, **kwargs):
        seen["plans"].append(result := plan(*args, **kwargs))
        return result

    monkeypatch.setattr(llava_module, "refinement_indices", counted)
    monkeypatch.setattr(finetune_module, "plan_references", planned)
    return seen


def test_evqa_chain_lora_and_full_finetune_with_snippets_then_scores_val(tmp_path, spies):
    files = write_evqa(tmp_path, n_entities=6, n_questions=12, seed=1)
    encoder_generator = build_generator_for_texts(files.texts, tmp_path / "ib", TinyModelSection(**TINY))
    llava = build_tiny_llava(tmp_path / "llava", seed=3, tokenizer=load_tokenizer(encoder_generator),
                             image_size=LLAVA_IMAGE_SIZE)
    runs = tmp_path / "runs"
    with one_thread():
        pretrain_cfg = chain_config("infoseek_pretrain", tmp_path, encoder_generator, *EVQA_DATA,
                                    f"run.output_dir={runs / 'pretrain'}")
        build_kb_from_config(pretrain_cfg.data.kb, show_progress=False)
        assert pretrain(pretrain_cfg) == 0
        eval_cfg = chain_config("evqa_eval", tmp_path, llava, f"run.output_dir={runs / 'eval'}",
                                f"eval.checkpoint={runs / 'lora' / 'final'}", "model.refine.top_m=4")
        encode_knowledge_base(eval_cfg, show_progress=False)
        assert (tmp_path / "data" / "evqa" / "index" / "text").is_dir()  # stage 2 has text items to search

        lora_cfg = chain_config("evqa_finetune", tmp_path, llava, f"run.output_dir={runs / 'lora'}", *LLAVA_FT)
        assert (lora_cfg.retrieval.mode, lora_cfg.noise.random_snippets, lora_cfg.model.refine.enabled) == (
            "two_stage", 1, True)
        assert finetune(lora_cfg) == 0
        assert all((runs / "lora" / "final" / file).is_file() for file in ADAPTER_FILES)
        trained_calls = len(spies["refine"])
        assert trained_calls >= 3  # one per training step at least
        # Noise-resilient training: two ranked snippets, then one random item with an image (none of them).
        assert spies["plans"] and all(plan.relevant == [True, True, False] for plan in spies["plans"])
        assert all(("#image=" in plan.ids[-1] or "#section=0" in plan.ids[-1]) and plan.ids[-1] not in plan.ids[:2]
                   for plan in spies["plans"])

        full_cfg = chain_config("evqa_finetune", tmp_path, llava, f"run.output_dir={runs / 'full'}", *LLAVA_FT,
                                "model.lora.r=0", "model.trainable=[language_projection,language_model]")
        assert finetune(full_cfg) == 0
        assert not any((runs / "full" / "final" / file).exists() for file in ADAPTER_FILES)
        for run, parts in (("lora", {"multi_modal_projector"}), ("full", {"multi_modal_projector", "language_model"})):
            with safe_open(str(runs / run / "final" / "model.safetensors"), framework="pt") as handle:
                assert parts <= {key.split(".")[1] for key in handle.keys()} <= parts | {"weight"}  # lm_head.weight

        assert evaluate(eval_cfg) == 0
        assert len(spies["refine"]) > trained_calls  # and at evaluation
        full_eval = chain_config("evqa_eval", tmp_path, llava, f"run.output_dir={runs / 'eval_full'}",
                                 f"eval.checkpoint={runs / 'full' / 'final'}", "model.refine.top_m=4")
        assert evaluate(full_eval) == 0

    # The cached two-stage results: every snippet is an image anchor with its entity's text items beside it.
    cached = [json.loads(line) for path in (runs / "lora" / "retrieval_train.jsonl", runs / "eval" / "retrieval_val.jsonl")
              for line in path.read_text().splitlines()]
    snippets = [item for record in cached for item in record["items"]]
    assert snippets and all("texts" in item for item in snippets)
    assert any(item["texts"] for item in snippets)
    for item in snippets:
        assert "#image=" in item["id"] or "#section=0" in item["id"]  # stage 1: items with an image
        page = item["id"].split("#")[0]
        assert all(text.startswith(page + "#section=") for text in item["texts"])  # stage 2: that entity's texts

    for run in ("eval", "eval_full"):
        metrics = json.loads((runs / run / "metrics.json").read_text())
        assert metrics["num_questions"] == len(files.val_types)
        scores = metrics["scores"]
        assert scores["single_hop"] is not None and 0.0 <= scores["single_hop"] <= 100.0
        assert 0.0 <= scores["overall"] <= 100.0
        assert scores["counts"]["multi_answer"] == scores["counts"]["2_hop"] == 1 and scores["counts"]["templated"] >= 3
        predictions = runs / run / "predictions.jsonl"
        records = [json.loads(line) for line in predictions.read_text().splitlines()]
        assert [record["question_id"] for record in records] == list(range(len(files.val_types)))
        assert all(set(record) == {"question_id", "prediction"} for record in records)
        out = runs / run / "rescored.json"
        assert score_main(["evqa", "--data", str(files.val), "--predictions", str(predictions),
                           "--output", str(out)]) == 0
        assert json.loads(out.read_text())["single_hop"] == scores["single_hop"]
    assert {"templated", "multi_answer", "2_hop"} <= set(files.val_types)
