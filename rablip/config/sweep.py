"""Grid sweeps: expand ``key=v1,v2`` axes into runs, launch them, collect their final metrics.

Commands are argument lists handed to ``subprocess.run`` directly: no shell ever sees a config
value. The ``print`` launcher quotes each argument for a cluster scheduler's script.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from rablip.config.load import load_config, nearest_key
from rablip.config.schema import schema_keys
from rablip.errors import ConfigError

ENTRY_POINTS = {"pretrain": "run_pretrain.py", "finetune": "run_finetune.py", "eval": "run_eval.py"}
PROJECT_DIR = Path(__file__).resolve().parents[2]


@dataclass
class SweepRun:
    name: str
    """Directory name made from the run's overrides."""
    overrides: list[str]
    """The grid's ``key=value`` for this run (without run.output_dir)."""
    output_dir: Path


def split_values(text: str) -> list[str]:
    """Split ``1e-4,3e-4`` at top-level commas; commas inside [...] or {...} stay (``[a,b],[c]``)."""
    values, depth, current = [], 0, ""
    for char in text:
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        if char == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += char
    values.append(current)
    return [v.strip() for v in values]


def parse_axes(grid: list[str]) -> list[tuple[str, list[str]]]:
    """``["train.lr=1e-4,3e-4", "retrieval.k=3,5"]`` -> ``[("train.lr", ["1e-4", "3e-4"]), ...]``."""
    axes: list[tuple[str, list[str]]] = []
    valid = schema_keys()
    for item in grid:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            raise ConfigError(f"grid axis {item!r} is not of the form key=v1,v2,...")
        if key not in valid:
            hint = nearest_key(key)
            raise ConfigError(f"unknown config key '{key}' in --grid{f'; did you mean {hint!r}?' if hint else ''}")
        if key == "run.output_dir":
            raise ConfigError("run.output_dir cannot be a grid axis: each run's directory is named from its overrides")
        if any(key == k for k, _ in axes):
            raise ConfigError(f"grid axis '{key}' is given twice")
        axes.append((key, split_values(raw)))
    return axes


def run_name(overrides: list[str]) -> str:
    """A directory name from overrides: ``train.lr=1e-4 retrieval.k=3`` -> ``lr=1e-4__k=3``.

    The last part of each key is used unless two axes share it; unsafe characters become ``-``.
    """
    keys = [o.partition("=")[0] for o in overrides]
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    parts = []
    for override, key, leaf in zip(overrides, keys, leaves):
        label = leaf if leaves.count(leaf) == 1 else key
        value = override.partition("=")[2]
        parts.append(f"{label}={value}")
    return re.sub(r"[^A-Za-z0-9._=,+-]+", "-", "__".join(parts)).strip("-") or "run"


def expand(axes: list[tuple[str, list[str]]], sweep_dir: Path) -> list[SweepRun]:
    """The cartesian product of the axes, one :class:`SweepRun` each."""
    runs = []
    for combo in itertools.product(*(values for _, values in axes)):
        overrides = [f"{key}={value}" for (key, _), value in zip(axes, combo)]
        name = run_name(overrides)
        runs.append(SweepRun(name, overrides, sweep_dir / name))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError("two grid points map to the same run directory name; make the values distinct")
    return runs


def entry_point_for(config_path: str | Path) -> str:
    """The entry script for a config, from its name (``*_finetune.yaml`` -> run_finetune.py)."""
    stem = Path(config_path).stem
    found = [script for stage, script in ENTRY_POINTS.items() if stage in stem]
    if len(found) != 1:
        raise ConfigError(f"cannot tell the stage of {config_path} from its name; pass --entry "
                          f"({', '.join(ENTRY_POINTS)})")
    return found[0]


def launch_command(entry: str, config_path: str | Path, base_overrides: list[str], run: SweepRun) -> list[str]:
    """The argument list of one run (never a shell string)."""
    return [sys.executable, str(PROJECT_DIR / entry), "--config", str(config_path),
            *base_overrides, *run.overrides, f"run.output_dir={run.output_dir}"]


def check_runs(config_path: str | Path, base_overrides: list[str], runs: list[SweepRun]) -> None:
    """Validate every run's full config before launching any (a bad value stops the sweep up front)."""
    for run in runs:
        load_config(config_path, [*base_overrides, *run.overrides, f"run.output_dir={run.output_dir}"])


def launch(commands: list[list[str]], launcher: str, dry_run: bool) -> list[int | None]:
    """Run the commands one after another (``local``) or print them (``print``); returns exit codes."""
    codes: list[int | None] = []
    for command in commands:
        if launcher == "print" or dry_run:
            print(shlex.join(command))
            codes.append(None)
            continue
        print(f"[sweep] {shlex.join(command)}", flush=True)
        codes.append(subprocess.run(command, check=False).returncode)
    return codes


def final_metrics(run_dir: Path) -> dict[str, float]:
    """A run's final numbers: ``metrics.json`` (evaluation) or the last record of ``metrics.jsonl``."""
    metrics: dict = {}
    if (run_dir / "metrics.json").is_file():
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        metrics = metrics.get("scores", metrics)
    elif (run_dir / "metrics.jsonl").is_file():
        lines = [ln for ln in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if ln.strip()]
        metrics = json.loads(lines[-1]) if lines else {}
    return {k: v for k, v in _flatten(metrics).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _flatten(values: dict, prefix: str = "") -> dict:
    flat: dict = {}
    for key, value in values.items():
        if isinstance(value, dict):
            if prefix.count("/") < 1:  # nested tables (per-question scores) are too long for a table
                flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def collect(runs: list[SweepRun], codes: list[int | None] | None = None) -> list[dict]:
    """One row per run: its overrides, exit status and final metrics."""
    rows = []
    for i, run in enumerate(runs):
        row: dict = {"run": run.name}
        row.update(dict(o.split("=", 1) for o in run.overrides))
        code = codes[i] if codes else None
        row["status"] = "ok" if code == 0 else (f"exit {code}" if code is not None else "")
        metrics = final_metrics(run.output_dir)
        if not row["status"]:
            row["status"] = "done" if metrics else "no metrics"
        row.update(metrics)
        rows.append(row)
    return rows


def write_tables(rows: list[dict], sweep_dir: Path) -> tuple[Path, Path]:
    """Write ``results.csv`` and ``results.md`` into the sweep directory."""
    columns: list[str] = []
    for row in rows:
        columns.extend(c for c in row if c not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = sweep_dir / "results.csv", sweep_dir / "results.md"
    csv_path.write_text(buffer.getvalue(), encoding="utf-8")

    def cell(value: object) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value if value is not None else "")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return csv_path, md_path
