"""Starting training runs in subprocesses for the trainer's tests: one process, or two real DDP
ranks on CPU (gloo) through torchrun, and waiting for a run to reach a point before signalling it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOY = str(Path(__file__).with_name("toy_task.py"))
FINETUNE = "run_finetune.py"
FINETUNE_CONFIG = "configs/experiment/synthetic_finetune.yaml"


def env() -> dict[str, str]:
    """The test environment plus CPU-only accelerate, one thread per process (2 cores shared)."""
    return {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}


def command(script: str, args: list[str], processes: int = 1) -> list[str]:
    if processes == 1:
        return [sys.executable, script, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
            script, *args]


def run(script: str, args: list[str], processes: int = 1, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run to the end; returns the completed process (stdout/stderr as text). On timeout the whole
    process group (torchrun's workers too) is killed and the test fails."""
    cmd = command(script, args, processes)
    with subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            raise AssertionError(f"{' '.join(cmd)} did not finish in {timeout} s (hung?):\n{stderr[-3000:]}") from None
    return subprocess.CompletedProcess(cmd, process.returncode, stdout, stderr)


def start(script: str, args: list[str], processes: int = 1, log: Path | None = None) -> subprocess.Popen:
    """Start in the background; stdout and stderr go to ``log`` (a file, so no pipe fills up)."""
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    return subprocess.Popen(command(script, args, processes), cwd=ROOT, env=env(), stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(condition, process: subprocess.Popen, timeout: float = 60.0) -> None:
    """Poll ``condition()`` every 5 ms until true; fails when the process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended (exit {process.returncode}) before the awaited point")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            raise AssertionError("the run did not reach the awaited point in time")
        time.sleep(0.005)


def has_checkpoint(run_dir: Path) -> bool:
    return any((run_dir / "checkpoints").glob("step-*/trainer_state.json"))


def metrics_lines(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.endswith("}")]


def checkpoint_steps(run_dir: Path) -> list[int]:
    return sorted(json.loads(p.read_text())["step"] for p in (run_dir / "checkpoints").glob("step-*/trainer_state.json"))


def final_bytes(run_dir: Path) -> bytes:
    return (run_dir / "final" / "model.safetensors").read_bytes()


def finetune_args(world: Path, run_dir: Path, *extra: str) -> list[str]:
    """``run_finetune.py`` arguments for a tiny synthetic world at ``world``: 16 steps of batch 4."""
    return ["--config", FINETUNE_CONFIG, f"data.root={world}", f"model.checkpoint={world}/tiny-instructblip-llama", "train.max_steps=16", "train.save_every=2",
            "train.batch_size=4", "train.warmup_steps=4", "log.every=1", f"run.output_dir={run_dir}", *extra]
