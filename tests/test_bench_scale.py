"""The published-size builders and ``scripts/bench/scale.py`` / ``memory_budget.py``, at reduced size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from rablip.synthetic.published import (
    PUBLISHED,
    published_config,
    published_parameter_count,
    write_published_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}

# The published counts (reference/published_sizes.md) and the embedding table the published files of the
# untied Flan-T5 checkpoints hold once more than transformers' model counts (their float32 shard sizes / 4).
PUBLISHED_BILLIONS = {"instructblip_flant5xl": (4.02, 32128 * 2048), "instructblip_flant5xxl": (12.31, 32128 * 4096),
                      "instructblip_vicuna7b": (7.91, 0), "blip2_opt2.7b": (3.74, 0), "llava15_7b": (7.06, 0)}


@pytest.mark.parametrize("name", sorted(PUBLISHED_BILLIONS))
def test_parameter_counts_are_the_published_ones(name):
    billions, duplicate_table = PUBLISHED_BILLIONS[name]
    count = published_parameter_count(name)
    assert round((count + duplicate_table) / 1e9, 2) == billions
    if name == "instructblip_flant5xl":
        assert count == 3_957_170_944  # transformers' own InstructBLIP at these sizes


def test_published_layout_loads_in_both_families_and_keeps_ids(tmp_path):
    checkpoint = write_published_checkpoint("instructblip_flant5xl", tmp_path / "ckpt", reduced=True)
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["model_type"] == "instructblip" and config["image_token_index"] == 32100
    assert config["text_config"]["vocab_size"] == 32128 and config["qformer_config"]["vocab_size"] == 30523
    assert published_config("instructblip_flant5xl").text_config.d_model == 2048
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    assert tokenizer.convert_tokens_to_ids("<image>") == 32100
    assert len(AutoTokenizer.from_pretrained(checkpoint / "qformer_tokenizer")) == 30523
    assert (checkpoint / "preprocessor_config.json").is_file()
    with pytest.raises(ValueError, match="unknown published model"):
        published_config("instructblip_flant5xxxl")


def test_scale_bench_runs_the_entry_points_at_reduced_size(tmp_path):
    out = tmp_path / "scale"
    result = subprocess.run([sys.executable, "scripts/bench/scale.py", "--model", "instructblip_flant5xl", "--reduced",
                             "--out", str(out), "--steps", "2", "--questions", "2", "--activations",
                             "--eval-repeats", "1"],
                            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    scale = json.loads((out / "scale.json").read_text())
    for key in ("model", "parameters", "trainable_parameters", "checkpoint_bytes", "load_seconds", "load_peak_rss_mib",
                "step_seconds_k0", "step_seconds_k2", "step_peak_rss_mib", "eval_seconds_per_question",
                "transformers_step_seconds", "transformers_step_peak_rss_mib", "transformers_eval_seconds_per_question"):
        assert scale[key], key
    # rablip's model = transformers' own plus the slot tables (concat: 8 type rows + 8 x patches position rows)
    assert scale["parameters"] == scale["transformers_parameters"] + scale["slot_table_parameters"]
    assert scale["slot_table_parameters"] == 8 * 64 + 8 * 17 * 64
    activations = scale["activation_bytes_per_example"]
    assert 0 < activations["k0"] < activations["k2"] < activations["k5"]
    # the fine-tuning runs went through run_finetune.py: k=2 read its references' features from the cache
    assert (out / "world" / "kb_store.vision_features").is_dir()
    assert json.loads((out / "runs" / "eval" / "metrics.json").read_text())["num_questions"] == 2

    table = subprocess.run([sys.executable, "scripts/bench/memory_budget.py", "--scale", str(out), "--gpus", "4"],
                           cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert table.returncode == 0, table.stderr[-2000:]
    rows = [line for line in table.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split("|")[1].strip() for row in rows] == list(PUBLISHED)
    assert all("(c)" in row for row in rows)  # reduced-size activations are not the published ones' measurement
    assert all("not measured" in row for row in rows)
