"""Shared benchmark helpers: run a child process and measure its peak memory; write a text KB.

Peak memory is the largest resident set size of the child and all its descendants together,
polled every 20 ms with psutil, or the child's own high-water mark (``VmHWM`` in
``/proc/PID/status``, read at each poll, so a peak between two polls is not missed) when that is
larger. ``ru_maxrss`` is not used: Linux carries the high-water mark of the memory a child had
before ``exec`` (a copy of the parent's) into it, so a large parent would inflate every child. The
anonymous part leaves out file-backed pages (memory-mapped Arrow files, shared libraries), which
the kernel can drop under pressure.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

_WORDS = (
    "river mountain castle bridge tower museum painting century king queen battle city island "
    "forest temple harbour station railway engine ocean desert glacier volcano cathedral garden "
    "library university festival dynasty empire republic village market statue fountain palace"
).split()


@dataclass(frozen=True)
class Measured:
    """How a child process ended and what it used."""

    returncode: int
    seconds: float
    """Wall time from start to exit."""
    peak_mib: float
    """Peak RSS of the process tree (MiB)."""
    peak_anon_mib: float
    """Peak RSS less file-backed pages (MiB)."""
    stdout: str


def high_water_bytes(pid: int) -> int:
    """``VmHWM`` of a process (its peak RSS since its last ``exec``), 0 when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def run_measured(command: Sequence[str], *, env: dict[str, str] | None = None, cwd: str | Path | None = None,
                 stderr_path: Path | None = None, poll_seconds: float = 0.02) -> Measured:
    """Run ``command`` to its end, polling its memory; stderr goes to ``stderr_path`` (else inherited)."""
    # stdout goes to a file: a pipe nobody reads while polling could fill and block the child.
    with tempfile.TemporaryFile("w+b") as stdout, open(os.devnull, "rb") as stdin, \
            (stderr_path.open("wb") if stderr_path is not None else contextlib.nullcontext()) as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(list(command), stdin=stdin, stdout=stdout, stderr=stderr, env=env, cwd=cwd)
        watched = psutil.Process(process.pid)
        peak_bytes = peak_anon_bytes = high_water = 0
        while process.poll() is None:
            try:
                memory = [p.memory_info() for p in (watched, *watched.children(recursive=True))]
                peak_bytes = max(peak_bytes, sum(m.rss for m in memory))
                # On Linux ``shared`` is the file-backed part of RSS.
                peak_anon_bytes = max(peak_anon_bytes, sum(m.rss - m.shared for m in memory))
            except psutil.Error:
                pass
            high_water = max(high_water, high_water_bytes(process.pid))
            time.sleep(poll_seconds)
        seconds = time.perf_counter() - started
        stdout.seek(0)
        output = stdout.read().decode(errors="replace")
    return Measured(process.returncode, seconds, max(peak_bytes, high_water) / 2**20, peak_anon_bytes / 2**20, output)


def kb_item_id(index: int) -> str:
    """The id of the ``index``-th generated KB item."""
    return f"kb-{index:08d}"


def write_text_kb_jsonl(path: Path, count: int, seed: int) -> None:
    """``count`` text items of about 30 words each, in rablip's generic KB JSONL format."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as handle:
        for index in range(count):
            words = rng.choices(_WORDS, k=30)
            record = {"id": kb_item_id(index), "title": f"{words[0].title()} {index}", "text": " ".join(words)}
            handle.write(json.dumps(record) + "\n")
