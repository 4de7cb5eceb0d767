"""RORA-VLM on the synthetic world through its configs (configs/experiment/synthetic_rora_{finetune,eval}.yaml):
a small world with its tiny LLaVA (``make_synthetic(..., parts=(..., "llava"))``), a fresh retrieval encoder on
the tiny InstructBLIP and its index, then a few LoRA fine-tuning steps with two-stage snippets, refinement and one
noise snippet, and an evaluation that writes the OK-VQA-format predictions and metrics. Only paths, sizes and step
counts are overridden."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import torch
import yaml

import rablip.models.llava as llava_module
import rablip.stages.finetune as finetune_module
from rablip.benchmarks import load_split
from rablip.config import load_config
from rablip.data.kb import KBStore
from rablip.models.factory import build_retrieval_encoder, load_generator
from rablip.models.lora import ADAPTER_FILES
from rablip.models.processing import build_collator
from rablip.models.processor_files import copy_processor_files
from rablip.stages.encode_kb import encode_knowledge_base
from rablip.stages.evaluate import evaluate
from rablip.stages.finetune import finetune
from rablip.synthetic.files import TINY_CHECKPOINT_DIR, TINY_LLAVA_DIR
from tests.retrieval.tiny_world import PRETRAIN_CONFIG, TEST_WORLD, build_world, one_thread, world_overrides

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "configs" / "experiment"
WORLD = (*TEST_WORLD, "world.align_images=0", "world.train_images_per_entity=1", "world.eval_images_per_entity=1")
TOP_M = 16  # the configs' own: a quarter of the tiny LLaVA's 64 tokens per 64 px image


def rora_config(name: str, tmp: Path, *extra: str):
    return load_config(str(EXPERIMENTS / f"{name}.yaml"), [
        f"data.root={tmp / 'world'}", f"model.fusion.checkpoint={tmp / 'encoder'}", "retrieval.shard_rows=8",
        "retrieval.encode_batch_size=8", "train.max_steps=3", "train.warmup_steps=1", "train.batch_size=4",
        "train.save_every=1000", "train.eval_every=0", "eval.batch_size=8", "eval.max_new_tokens=3", *extra])


def test_synthetic_world_runs_rora_finetune_and_eval_with_snippets_refinement_and_noise(tmp_path, monkeypatch):
    world = build_world(tmp_path / "world", *WORLD, parts=("world", "kb", "checkpoint", "llava"))
    assert json.loads((world / TINY_LLAVA_DIR / "config.json").read_text())["model_type"] == "llava"
    seen = {"kept": [], "plans": []}
    refine, plan = llava_module.refinement_indices, finetune_module.plan_references

    def kept(*args, **kwargs):
        seen["kept"].append(tuple((indices := refine(*args, **kwargs)).shape))
        return indices

    def planned(*args, **kwargs):
        seen["plans"].append(result := plan(*args, **kwargs))
        return result

    monkeypatch.setattr(llava_module, "refinement_indices", kept)
    monkeypatch.setattr(finetune_module, "plan_references", planned)
    runs = tmp_path / "runs"
    with one_thread():
        # a fresh retrieval encoder on the world's tiny InstructBLIP, saved with its processor files (LLaVA has none)
        pretrain_cfg = load_config(str(PRETRAIN_CONFIG), world_overrides(tmp_path))
        torch.manual_seed(0)
        build_retrieval_encoder(pretrain_cfg, load_generator(pretrain_cfg)).save_pretrained(tmp_path / "encoder")
        copy_processor_files(world / TINY_CHECKPOINT_DIR, tmp_path / "encoder")
        eval_cfg = rora_config("synthetic_rora_eval", tmp_path, f"run.output_dir={runs / 'eval'}",
                               f"eval.checkpoint={runs / 'finetune' / 'final'}")
        encode_knowledge_base(eval_cfg, show_progress=False)

        ft_cfg = rora_config("synthetic_rora_finetune", tmp_path, f"run.output_dir={runs / 'finetune'}")
        assert (ft_cfg.retrieval.mode, ft_cfg.retrieval.k, ft_cfg.noise.random_snippets) == ("two_stage", 2, 1)
        # the tiny LLaVA's LLM trains fully (lora.r 0; configs/model/tiny_llava.yaml keeps LoRA as the option)
        assert (ft_cfg.model.refine.enabled, ft_cfg.model.refine.top_m, ft_cfg.model.lora.r) == (True, TOP_M, 0)
        assert finetune(ft_cfg) == 0
        trained = len(seen["kept"])
        assert trained >= 3  # one refinement per training step at least
        assert evaluate(eval_cfg) == 0
        assert len(seen["kept"]) > trained  # and at evaluation
        collator = build_collator(eval_cfg, load_generator(eval_cfg, runs / "finetune" / "final"), 3, "generate")
        assert (collator.num_query_tokens, collator.emit_question_ids) == (TOP_M, True)

    # refinement kept top_m of the 64 tokens of every image slot
    assert all(shape[-1] == TOP_M for shape in seen["kept"])
    # noise-resilient training: two ranked snippets, then one random item that is none of them
    assert seen["plans"] and all(len(p.ids) == 3 and p.ids[-1] not in p.ids[:2] and not p.relevant[-1]
                                 for p in seen["plans"])
    final = runs / "finetune" / "final"
    assert (final / "model.safetensors").is_file() and not any((final / file).exists() for file in ADAPTER_FILES)
    last = json.loads((runs / "finetune" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 3 and math.isfinite(last["loss"])
    for run in ("finetune", "eval"):
        saved = yaml.safe_load((runs / run / "config.yaml").read_text())
        assert saved["model"]["refine"]["enabled"] and saved["retrieval"]["mode"] == "two_stage"

    # two-stage retrieval cached snippets: image anchors with their entity's text items
    kb = KBStore.open(ft_cfg.data.kb.store_dir)
    for cache in (runs / "finetune" / "retrieval_train.jsonl", runs / "eval" / "retrieval_test.jsonl"):
        snippets = [item for line in cache.read_text().splitlines() for item in json.loads(line)["items"]]
        assert snippets and all("texts" in item for item in snippets) and any(item["texts"] for item in snippets)
        for item in snippets:
            anchor, *texts = kb.get_many([item["id"], *item["texts"]])
            assert anchor.image and all(text.modality == "text" and text.title == anchor.title for text in texts)

    # the OK-VQA-format predictions and metrics
    examples = load_split(eval_cfg.data, "test")
    predictions = json.loads((runs / "eval" / "predictions.json").read_text())
    assert sorted(p["question_id"] for p in predictions) == sorted(int(ex.id) for ex in examples)
    assert all(isinstance(p["answer"], str) for p in predictions)
    metrics = json.loads((runs / "eval" / "metrics.json").read_text())
    assert metrics["num_questions"] == len(examples)


def test_demo_runs_rora_by_default_and_skip_rora_leaves_it_out(monkeypatch):
    spec = importlib.util.spec_from_file_location("demo", ROOT / "scripts" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "demo", demo)
    monkeypatch.setattr(sys, "path", list(sys.path))  # it puts the repository and scripts/ first
    spec.loader.exec_module(demo)
    skipped = {job.name: job for job in demo.plan(Path("/out"), 0, 12, None, None, rora=False)}
    rora = {job.name: job for job in demo.plan(Path("/out"), 0, 12, None, None)}
    assert not any("rora" in name or name == "llava" for name in skipped)
    # the tiny LLaVA builds into the world beside the InstructBLIP checkpoint, both after the world's files
    assert rora["llava"].argv[rora["llava"].argv.index("--only") + 1] == "llava" and rora["llava"].after == ["world"]
    assert set(rora) - set(skipped) == {"llava", "finetune_rora", "eval_rora", "eval_rora_noisy", "eval_rora_hard_noisy"}
    assert all(rora[name].argv == job.argv for name, job in skipped.items())
    assert f"{EXPERIMENTS.name}/synthetic_rora_finetune.yaml" in " ".join(rora["finetune_rora"].argv)
    assert rora["finetune_rora"].after == ["index", "llava"]
    for name in ("eval_rora", "eval_rora_noisy", "eval_rora_hard_noisy"):
        assert rora[name].after == ["finetune_rora"]
        assert "configs/experiment/synthetic_rora_eval.yaml" in rora[name].argv
        assert "eval.checkpoint=/out/finetune_rora/final" in rora[name].argv
    # the noisy evaluations as the other retrieval variants': half the references swapped, no k sweep
    assert {"eval.noisy_fraction=0.5", "eval.k_sweep=[]"} <= set(rora["eval_rora_noisy"].argv)
    assert "eval.noisy_mode=hard" not in rora["eval_rora_noisy"].argv
    assert "eval.noisy_mode=hard" in rora["eval_rora_hard_noisy"].argv
