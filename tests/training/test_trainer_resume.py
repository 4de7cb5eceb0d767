"""The trainer on the toy task: a run killed or stopped mid-way and resumed ends bit-identical to an
uninterrupted one; SIGTERM saves a checkpoint at the current step and exits 143 without a traceback."""

import json
import os
import signal

from tests.training.launch import (
    TOY,
    checkpoint_steps,
    final_bytes,
    has_checkpoint,
    metrics_lines,
    run,
    start,
    wait_for,
)

STEPS = 24
BASE = [f"train.max_steps={STEPS}", "train.warmup_steps=3", "train.lr=0.05", "train.batch_size=6",
        "train.grad_accum=2", "log.every=1", "data.num_workers=0"]


def uninterrupted(tmp_path, extra=()):
    out = tmp_path / "uninterrupted"
    result = run(TOY, [*BASE, *extra, f"run.output_dir={out}"])
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def test_sigkill_after_first_checkpoint_then_resume_is_bit_identical(tmp_path):
    reference = uninterrupted(tmp_path, ["train.save_every=4"])
    out = tmp_path / "killed"
    args = [*BASE, "train.save_every=4", f"run.output_dir={out}"]
    process = start(TOY, ["--sleep", "0.03", *args], log=tmp_path / "killed.log")
    wait_for(lambda: has_checkpoint(out), process)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL
    assert not (out / "final").exists(), "the run finished before it was killed"
    killed_at = checkpoint_steps(out)[-1]
    assert 0 < killed_at < STEPS

    resumed = run(TOY, [*args, "run.resume=true"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert final_bytes(out) == final_bytes(reference)
    state = json.loads((out / "checkpoints" / f"step-{STEPS:08d}" / "trainer_state.json").read_text())
    assert state["step"] == STEPS and state["micro_steps"] == 2 * STEPS
    assert not list((out / "checkpoints").glob(".tmp-*"))
    # Steps logged between the checkpoint and the kill are logged again by the resumed run, once.
    assert [r["step"] for r in metrics_lines(out)] == [r["step"] for r in metrics_lines(reference)]


def test_sigterm_saves_current_step_exits_143_and_resumes(tmp_path):
    reference = uninterrupted(tmp_path, ["train.save_every=1000"])
    out = tmp_path / "stopped"
    args = [*BASE, "train.save_every=1000", f"run.output_dir={out}"]
    log = tmp_path / "stopped.log"
    process = start(TOY, ["--sleep", "0.03", *args], log=log)
    wait_for(lambda: len(metrics_lines(out)) >= 3, process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 143
    output = log.read_text()
    assert "Traceback" not in output and "checkpoint saved" in output
    # The only checkpoint is the one SIGTERM saved (save_every is beyond max_steps), at the step reached.
    steps = checkpoint_steps(out)
    assert len(steps) == 1 and 3 <= steps[0] < STEPS
    assert steps[0] == metrics_lines(out)[-1]["step"]
    assert not (out / "final").exists()

    resumed = run(TOY, [*args, "run.resume=true"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr and f"step {steps[0]}" in resumed.stderr
    assert final_bytes(out) == final_bytes(reference)


def test_metrics_log_drops_the_steps_a_resumed_run_logs_again(tmp_path):
    from rablip.config import load_config
    from rablip.training.metrics_log import MetricsLog

    lines = [json.dumps({"step": step, "loss": 1.0 / step}) for step in range(1, 7)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 7, "lo')  # cut by a kill
    cfg = load_config(None, [])
    MetricsLog(cfg, tmp_path, enabled=True, start_step=4)
    assert [r["step"] for r in metrics_lines(tmp_path)] == [1, 2, 3, 4]
    MetricsLog(cfg, tmp_path, enabled=False, start_step=0)  # not the main process: leaves the file
    assert len(metrics_lines(tmp_path)) == 4
    MetricsLog(cfg, tmp_path, enabled=True, start_step=0)  # a fresh run over an old run dir
    assert metrics_lines(tmp_path) == []
