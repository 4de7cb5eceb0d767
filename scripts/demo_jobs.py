"""The jobs of ``scripts/demo.py`` and the runner that starts them as subprocesses.

A :class:`Job` is one entry-point run. Most run as one process on one CPU thread, ``--jobs`` of them at
once; a job that its plan marks with ``ranks`` > 1 (pre-training, which runs alone) runs as that many real
data-parallel ranks through ``accelerate launch`` (``configs/accelerate/ddp.yaml``; on a CPU
``ACCELERATE_USE_CPU=true``: gloo), one thread each, and takes that many of the runner's slots.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from rablip.errors import RablipError

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ["-m", "accelerate.commands.launch"]
DDP_CONFIG = "configs/accelerate/ddp.yaml"


@dataclass
class Job:
    """One entry-point run: its command line, the jobs it waits for, and how many data-parallel ranks run it
    (1: a plain process; more: ``accelerate launch`` with that many processes, each on its own slot)."""

    name: str
    argv: list[str]
    after: list[str] = field(default_factory=list)
    ranks: int = 1

    def command(self) -> list[str]:
        """The command line: ``python SCRIPT ARGS``, or for ``ranks`` > 1 ``python -m accelerate.commands.launch``
        with the DDP config and that many CPU-or-GPU processes on this machine (a free rendezvous port)."""
        if self.ranks == 1:
            return [sys.executable, *self.argv]
        return [sys.executable, *LAUNCH, "--config_file", DDP_CONFIG, "--multi_gpu", "--num_processes",
                str(self.ranks), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", "0", *self.argv]


class JobRunner:
    """Runs jobs as subprocesses once their dependencies succeeded, using up to ``parallel`` slots at a time
    (a job takes ``ranks`` slots; one that needs more than there are starts only when nothing else runs)."""

    def __init__(self, logs: Path, parallel: int) -> None:
        self.logs = logs
        self.parallel = parallel
        self.durations: dict[str, float] = {}

    def run(self, jobs: list[Job]) -> None:
        base_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                    "WANDB_MODE": "disabled", "ACCELERATE_USE_CPU": os.environ.get("ACCELERATE_USE_CPU", "true")}
        pending, running = list(jobs), {}
        self.logs.mkdir(parents=True, exist_ok=True)
        previous = None
        if threading.current_thread() is threading.main_thread():  # SIGTERM ends the running jobs too
            previous = signal.signal(signal.SIGTERM, _terminated)
        try:
            while pending or running:
                for job in [j for j in pending if all(d in self.durations for d in j.after)]:
                    used = sum(j.ranks for j, *_ in running.values())
                    if running and used + job.ranks > self.parallel:
                        break
                    pending.remove(job)
                    threads = self.threads(job, pending, running)
                    print(f"  start  {job.name}" + (f" ({job.ranks} ranks)" if job.ranks > 1 else ""), flush=True)
                    log = (self.logs / f"{job.name}.log").open("w")
                    process = subprocess.Popen(job.command(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                               env={**base_env, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
                    running[job.name] = (job, process, time.time(), log)
                time.sleep(0.2)
                for name, (_, process, started, log) in list(running.items()):
                    if process.poll() is None:
                        continue
                    log.close()
                    del running[name]
                    if process.returncode != 0:
                        tail = failure_lines((self.logs / f"{name}.log").read_text(errors="replace"))[-15:]
                        raise RablipError(f"the demo stage {name} failed (exit {process.returncode}); its log is "
                                          f"{self.logs / name}.log:\n" + "\n".join(tail))
                    self.durations[name] = time.time() - started
                    print(f"  done   {name} ({self.durations[name]:.0f} s)", flush=True)
        finally:
            for _, process, _, log in running.values():
                kill_tree(process)
                log.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def threads(self, job: Job, pending: list[Job], running: dict) -> str:
        """CPU threads per process: a rank of a multi-rank job gets its share of the slots; a plain job that starts
        alone with nothing else ready (the world build) gets every slot; otherwise one."""
        if job.ranks > 1:
            return str(max(1, self.parallel // job.ranks))
        ready = [j for j in pending if all(d in self.durations for d in j.after)]
        return str(self.parallel if not running and not ready else 1)


def failure_lines(log: str) -> list[str]:
    """A failed job's log lines, less the launcher's own traceback and summary after a multi-rank job's failure
    (torch's ``ChildFailedError``), so that what a rank printed last is shown."""
    lines = log.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if starts and any("ChildFailedError" in line for line in lines[starts[-1]:]):
        return lines[:starts[-1]]
    return lines


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL a job's process and every process under it (the ranks of an ``accelerate launch``, which torch's
    launcher starts in sessions of their own) and reap it."""
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    if process.poll() is None:
        process.kill()
    process.wait()
