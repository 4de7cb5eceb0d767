"""A LLaVA checkpoint goes through the stages unchanged: run_finetune's stage fine-tunes the projector
with LoRA on the LLM on tiny WebQA files (gold references, rablip's prompt: each image's block followed
by its snippet) and writes a trainable-only checkpoint with peft's adapter files; the evaluation stage
loads it (adapter merged) and scores the val split."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open

from rablip.config import load_config
from rablip.data.kb_build import build_kb_from_config
from rablip.models.lora import ADAPTER_FILES
from rablip.models.processor_files import load_tokenizer
from rablip.stages.evaluate import evaluate
from rablip.stages.finetune import finetune
from rablip.synthetic.webqa_files import webqa_texts, write_webqa
from tests.models.tiny_llava import build_tiny_llava
from tests.retrieval.tiny_world import one_thread
from tests.test_webqa_chain import tiny_generator

EXPERIMENTS = Path(__file__).resolve().parents[2] / "configs" / "experiment"
LLAVA = ("model.trainable=[language_projection]", "model.lora.r=4", "model.lora.alpha=8.0",
         "model.lora.target_modules=[q_proj,v_proj]", "model.multi_image=per_slot", "prompt.template=rablip")


def config(name: str, root: Path, checkpoint: Path, *extra: str):
    """configs/experiment/<name>.yaml on the WebQA files under root/data/webqa, LLaVA settings, tiny sizes."""
    return load_config(str(EXPERIMENTS / f"{name}.yaml"), [
        f"data.root={root}", f"model.checkpoint={checkpoint}", *LLAVA, "retrieval.source=gold",
        "train.epochs=0", "train.max_steps=2", "train.warmup_steps=1", "train.lr=1e-3", "train.batch_size=2",
        "train.save_every=1000", "train.eval_every=0", "eval.batch_size=4", "eval.num_beams=1",
        "eval.max_new_tokens=3", "data.max_input_length=128", *extra])


def test_llava_finetune_then_eval(tmp_path):
    files = write_webqa(tmp_path / "data" / "webqa", n_questions=8, n_test=2, seed=2)
    assert webqa_texts(files.train_val, files.test)
    # the LLM tokenizer (with <image>) of a tiny generator trained on the WebQA texts
    tokenizer = load_tokenizer(tiny_generator(files, tmp_path / "ib", "llama"))
    llava = build_tiny_llava(tmp_path / "llava", seed=3, tokenizer=tokenizer)
    runs = tmp_path / "runs"
    with one_thread():
        build_kb_from_config(config("webqa_finetune", tmp_path, llava).data.kb, show_progress=False)
        assert finetune(config("webqa_finetune", tmp_path, llava, f"run.output_dir={runs / 'ft'}")) == 0
        final = runs / "ft" / "final"
        assert all((final / file).is_file() for file in ADAPTER_FILES)
        with safe_open(str(final / "model.safetensors"), framework="pt") as handle:
            assert {key.split(".")[1] for key in handle.keys()} == {"multi_modal_projector"}
        eval_cfg = config("webqa_eval", tmp_path, llava, f"run.output_dir={runs / 'eval'}",
                          f"eval.checkpoint={final}", "retrieval.rerank_model=false")
        assert evaluate(eval_cfg) == 0
    metrics = json.loads((runs / "eval" / "metrics.json").read_text())
    assert metrics["num_questions"] == len(files.val_guids)
    assert 0.0 <= metrics["scores"]["qa_acc"] <= 1.0
