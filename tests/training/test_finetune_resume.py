"""``run_finetune.py`` on a tiny synthetic world, end to end: killed (SIGKILL) or stopped (SIGTERM)
mid-run and resumed, it ends with ``final/model.safetensors`` byte-identical to an uninterrupted run;
metrics.jsonl logs the loss, its QA and ASKG parts and the selection accuracy."""

import os
import shutil
import signal

import pytest

from tests.retrieval.tiny_world import FINETUNE_WORLD, build_world
from tests.training.launch import (
    FINETUNE,
    checkpoint_steps,
    final_bytes,
    finetune_args,
    has_checkpoint,
    metrics_lines,
    run,
    start,
    wait_for,
)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """An uninterrupted 16-step run on a world (data, KB store, tiny model) built once."""
    root = tmp_path_factory.mktemp("finetune")
    build_world(root / "world", *FINETUNE_WORLD)
    result = run(FINETUNE, finetune_args(root / "world", root / "baseline"))
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "world", root / "baseline"


def copy_world(baseline, tmp_path):
    world = tmp_path / "world"
    shutil.copytree(baseline[0], world)
    return world


def test_sigkill_after_first_checkpoint_then_resume_is_bit_identical(baseline, tmp_path):
    world, out = copy_world(baseline, tmp_path), tmp_path / "killed"
    process = start(FINETUNE, finetune_args(world, out), log=tmp_path / "killed.log")
    wait_for(lambda: has_checkpoint(out), process, timeout=90)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL
    assert not (out / "final").exists(), "the run finished before it was killed"
    assert 0 < checkpoint_steps(out)[-1] < 16

    resumed = run(FINETUNE, finetune_args(world, out, "run.resume=true"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    assert final_bytes(out) == final_bytes(baseline[1])


def test_sigterm_saves_exits_143_without_traceback_and_resumes(baseline, tmp_path):
    world, out = copy_world(baseline, tmp_path), tmp_path / "stopped"
    log = tmp_path / "stopped.log"
    process = start(FINETUNE, finetune_args(world, out, "train.save_every=1000"), log=log)
    wait_for(lambda: len(metrics_lines(out)) >= 2, process, timeout=90)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143
    output = log.read_text()
    assert "Traceback" not in output and "checkpoint saved" in output
    steps = checkpoint_steps(out)
    assert len(steps) == 1 and 2 <= steps[0] < 16 and steps[0] == metrics_lines(out)[-1]["step"]

    resumed = run(FINETUNE, finetune_args(world, out, "train.save_every=1000", "run.resume=true"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"(step {steps[0]})" in resumed.stderr
    assert final_bytes(out) == final_bytes(baseline[1])


def test_metrics_log_loss_parts_with_askg(baseline):
    records = metrics_lines(baseline[1])
    assert [r["step"] for r in records] == list(range(1, 17))
    for record in records:
        assert {"step", "loss", "lr", "samples_per_sec", "qa_loss", "askg_loss", "selection_acc"} <= set(record)
        assert record["samples_per_sec"] > 0 and 0.0 <= record["selection_acc"] <= 1.0
        assert record["qa_loss"] > 0 and record["askg_loss"] > 0 and record["loss"] > 0
    assert records[0]["lr"] == pytest.approx(3e-3 / 4)  # warm-up: step 1 of 4 (train.lr 3e-3)
