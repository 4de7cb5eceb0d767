"""``scripts/bench/gpu.py --reduced`` end to end on the CPU: every section runs and reports positive numbers,
and the GPU cells say they were not measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and value > 0


def test_gpu_bench_reduced_runs_every_section(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled",
           "TOKENIZERS_PARALLELISM": "false"}
    completed = subprocess.run([sys.executable, "scripts/bench/gpu.py", "--reduced", "--out", str(out)], cwd=ROOT,
                               env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-4000:]
    result = json.loads((out / "gpu.json").read_text())
    assert result["reduced"] is True and result["skipped"] == []
    assert set(result["versions"]) >= {"torch", "transformers", "faiss"}
    on_gpu = torch.cuda.is_available()
    assert result["device"] == (torch.cuda.get_device_name(0) if on_gpu else "cpu")

    finetune = {(row["model"], row["k"]): row for row in result["finetune"]["rows"]}
    assert set(finetune) == {("rablip", 0), ("transformers", 0), ("rablip", 2)}
    for row in finetune.values():
        assert _positive(row["step_seconds"]) and _positive(row["flops_per_step"])
        assert len(row["all_step_seconds"]) == result["finetune"]["rounds"]
    # the same k = 0 batch gives both models the same FLOPs; two references add vision, Q-Former and LLM work
    assert finetune[("rablip", 0)]["flops_per_step"] == finetune[("transformers", 0)]["flops_per_step"]
    assert finetune[("rablip", 2)]["flops_per_step"] > finetune[("rablip", 0)]["flops_per_step"]
    if result["peak_tflops"] is None:
        assert all(row["mfu"] is None for row in finetune.values())

    generate = {(row["model"], row["k"]): row for row in result["generate"]["rows"]}
    assert set(generate) == {("rablip", 0), ("transformers", 0), ("rablip", 2)}
    assert result["generate"]["num_beams"] == 5 and result["generate"]["max_new_tokens"] == 10
    for row in generate.values():
        assert _positive(row["questions_per_second"]) and row["answers"] == result["generate"]["questions"]

    kb = result["kb_encoding"]
    assert _positive(kb["items_per_second"]) and kb["embedded"] == kb["items"]

    faiss = result["faiss"]
    cells = {(row["index"], row["width"]) for row in faiss["rows"]}
    assert cells == {(index, width) for index in ("flat", "ivfpq") for width in (32, 64)}
    for row in faiss["rows"]:
        assert _positive(row["build_seconds"]["cpu"])
        for batch in (1, 64):
            search = row["search_ms"][f"batch_{batch}"]
            assert _positive(search["cpu"])
            if not faiss["gpu_available"]:
                assert search["gpu"].startswith("not measured")
        if not faiss["gpu_available"]:
            assert row["build_seconds"]["gpu"].startswith("not measured")
    if not on_gpu:
        assert not faiss["gpu_available"] and faiss["rows"][0]["build_seconds"]["gpu"] == "not measured: no GPU"

    table = (out / "gpu.md").read_text()
    assert table in completed.stdout and "### 4. FAISS" in table and "smoke run" in table
