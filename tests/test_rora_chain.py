"""The RORA-VLM (InfoSeek) command chain end to end, at tiny size, with the release defaults of the InfoSeek configs.

An InfoSeek in the official file formats with a WIT-style KB (rablip/synthetic/infoseek_files.py) goes through
every step of the chain that configs/experiment/infoseek_pretrain.yaml documents: build the KB store ->
infoseek_pretrain (the retrieval encoder, from a tiny InstructBLIP) -> encode the KB and build the index
(infoseek_instructblip_eval.yaml) -> infoseek_finetune (a tiny LLaVA: LoRA with refinement, two-stage snippets
and a noise snippet; then full fine-tuning of the LLM) -> infoseek_eval (val, scored). The configs are used as
they are, with only paths, sizes and step counts overridden (top_m: the tiny LLaVA has 4 tokens per image), and
one index setting: retrieval.index_type=ivfflat, since ivfpq's 8-bit codebooks need 256 training rows per group
and this KB has 6 image and 18 text items (the IVF path and rerank_exact still run).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml
from safetensors import safe_open

from rablip.config import load_config
from rablip.data.kb import KBStore
from rablip.data.kb_build import build_kb_from_config
from rablip.models.factory import load_generator
from rablip.models.lora import ADAPTER_FILES
from rablip.models.processing import build_collator
from rablip.models.processor_files import load_tokenizer
from rablip.stages.encode_kb import encode_knowledge_base
from rablip.stages.evaluate import evaluate
from rablip.stages.finetune import FinetuneDataset, finetune
from rablip.stages.pretrain import pretrain
from rablip.synthetic.infoseek_files import infoseek_texts, write_infoseek
from rablip.synthetic.settings import TinyModelSection
from rablip.synthetic.tiny_model import build_generator_for_texts
from tests.models.tiny_llava import build_tiny_llava
from tests.retrieval.tiny_world import one_thread
from tests.test_webqa_chain import TINY

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "configs" / "experiment"
TOP_M = 2
LORA = ("model.lora.r=4", "model.lora.alpha=8.0", "model.lora.target_modules=[q_proj,v_proj]")


def chain_config(name: str, root: Path, checkpoint: Path, *extra: str):
    """configs/experiment/<name>.yaml pointed at ``root`` (root/data/infoseek, root/data/wit) with tiny sizes."""
    runs = root / "runs" / "infoseek"
    overrides = [
        f"data.root={root}", f"model.checkpoint={checkpoint}",
        f"model.fusion.checkpoint={runs / 'pretrain' / 'final'}", "model.fusion.layers=1", "model.fusion.dim=16",
        f"retrieval.index_dir={root / 'data' / 'wit' / 'index'}", "retrieval.shard_rows=16", "retrieval.encode_batch_size=8", "retrieval.index_type=ivfflat",
        "train.epochs=0", "train.max_steps=2", "train.warmup_steps=1", "train.batch_size=4", "train.grad_accum=1",
        "train.save_every=1000", "train.eval_every=0", "eval.batch_size=4", "eval.num_beams=1",
        "eval.max_new_tokens=3", "data.max_input_length=256", "data.qformer_max_length=96", *extra]
    return load_config(str(EXPERIMENTS / f"{name}.yaml"), overrides)


def test_rora_chain_pretrains_encodes_finetunes_llava_and_scores_infoseek_val(tmp_path, monkeypatch):
    files = write_infoseek(tmp_path / "data", n_entities=6, n_questions=12, seed=1)
    plans = []  # (the question's entity from infoseek_train_withkb.jsonl, its reference plan)
    plan = FinetuneDataset.plan

    def recorded(self, example, rng):
        plans.append((example.extra.get("entity_text"), self.kb, result := plan(self, example, rng)))
        return result

    monkeypatch.setattr(FinetuneDataset, "plan", recorded)
    runs = tmp_path / "runs" / "infoseek"
    instructblip = build_generator_for_texts(infoseek_texts(files), tmp_path / "ib",
                                             TinyModelSection(**TINY, llm_type="llama", tokenizer_vocab_size=300))
    llava = build_tiny_llava(tmp_path / "llava", seed=3, tokenizer=load_tokenizer(instructblip))
    with one_thread():
        pretrain_cfg = chain_config("infoseek_pretrain", tmp_path, instructblip, "data.extra_pairs.share=0",
                                    f"run.output_dir={runs / 'pretrain'}")
        build_kb_from_config(pretrain_cfg.data.kb, show_progress=False)
        assert pretrain(pretrain_cfg) == 0
        encode_knowledge_base(chain_config("infoseek_instructblip_eval", tmp_path, instructblip,
                                           f"run.output_dir={runs / 'encode'}"), show_progress=False)

        lora_cfg = chain_config("infoseek_finetune", tmp_path, llava, *LORA, f"model.refine.top_m={TOP_M}",
                                f"run.output_dir={runs / 'finetune'}")
        assert (lora_cfg.retrieval.mode, lora_cfg.noise.random_snippets, lora_cfg.model.refine.enabled) == (
            "two_stage", 1, True)
        assert finetune(lora_cfg) == 0
        full_cfg = chain_config("infoseek_finetune", tmp_path, llava, "model.lora.r=0", f"model.refine.top_m={TOP_M}",
                                "model.trainable=[language_projection,language_model]",
                                f"run.output_dir={runs / 'finetune_full'}")
        assert finetune(full_cfg) == 0
        # noise-resilient training: the last of the three references is a random snippet that is never of the
        # question's own entity (its InfoSeek entity label)
        assert plans and all(entity for entity, _, _ in plans)
        for entity, kb, planned in plans:
            assert len(planned.ids) == 3 and planned.relevant[-1] is False
            assert kb[planned.ids[-1]].title != entity

        eval_cfg = chain_config("infoseek_eval", tmp_path, llava, f"model.refine.top_m={TOP_M}",
                                f"run.output_dir={runs / 'eval'}", f"eval.checkpoint={runs / 'finetune' / 'final'}")
        assert evaluate(eval_cfg) == 0
        # refinement is on in the fine-tuned generator: its processor emits top_m image tokens per image and the
        # question's ids for the relevance scores
        collator = build_collator(eval_cfg, load_generator(eval_cfg, runs / "finetune" / "final"), 3, "generate")
        assert (collator.num_query_tokens, collator.emit_question_ids) == (TOP_M, True)

    lora_final, full_final = runs / "finetune" / "final", runs / "finetune_full" / "final"
    assert all((lora_final / file).is_file() for file in ADAPTER_FILES)
    assert not any((full_final / file).is_file() for file in ADAPTER_FILES)
    groups = {}
    for run, final in (("lora", lora_final), ("full", full_final)):
        with safe_open(str(final / "model.safetensors"), framework="pt") as handle:
            groups[run] = {".".join(key.split(".")[:2]) for key in handle.keys()}
    # trainable-only checkpoints: LoRA saves the projector beside its adapter, full fine-tuning the LLM too
    assert groups["lora"] == {"model.multi_modal_projector"}
    assert {"model.multi_modal_projector", "model.language_model"} <= groups["full"]
    for run in ("finetune", "finetune_full"):
        last = json.loads((runs / run / "metrics.jsonl").read_text().splitlines()[-1])
        assert last["step"] == 2 and math.isfinite(last["loss"])
    for run in ("finetune", "finetune_full", "eval"):
        saved = yaml.safe_load((runs / run / "config.yaml").read_text())
        assert saved["model"]["refine"] == {**saved["model"]["refine"], "enabled": True, "top_m": TOP_M}
        assert saved["retrieval"]["mode"] == "two_stage"

    # two-stage retrieval cached snippets: anchors (image items) with text items of the anchor's entity
    kb = KBStore.open(lora_cfg.data.kb.store_dir)
    for cache, ids in ((runs / "finetune" / "retrieval_train.jsonl", files.train_ids),
                       (runs / "eval" / "retrieval_val.jsonl", files.val_ids)):
        cached = [json.loads(line) for line in cache.read_text().splitlines()]
        assert [record["id"] for record in cached] == ids
        snippets = [item for record in cached for item in record["items"]]
        assert all("texts" in item for item in snippets) and any(item["texts"] for item in snippets)
        for item in snippets:
            anchor, *texts = kb.get_many([item["id"], *item["texts"]])
            assert anchor.image and anchor.title in files.entities
            assert all(text.modality == "text" and text.title == anchor.title for text in texts)

    metrics = json.loads((runs / "eval" / "metrics.json").read_text())
    assert metrics["num_questions"] == len(files.val_ids)
    for key in ("unseen_question", "unseen_entity", "score"):
        assert 0.0 <= metrics["scores"][key] <= 100.0
    assert metrics["scores"]["counts"] == {"unseen_question": 6, "unseen_entity": 6}
    assert set(metrics["scores"]["per_type"]["unseen_entity"]) == {"string", "numerical", "time"}
    predictions = [json.loads(line) for line in (runs / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert [p["data_id"] for p in predictions] == files.val_ids
    assert all(set(p) == {"data_id", "prediction"} and isinstance(p["prediction"], str) for p in predictions)
