"""Run a grid of configurations and collect their final metrics into one table.

    python scripts/sweep.py --config configs/experiment/synthetic_finetune.yaml \
        --grid train.lr=1e-4,3e-4 retrieval.k=3,5 [--dry-run] [--launcher local|print]

Each run gets its own output dir under ``--out`` (default ``<run.output_dir>_sweep``) named from its
overrides. ``local`` runs them one after another; ``print`` prints one launch command per run for a
cluster scheduler. When runs have finished (or with ``--collect``), ``results.csv`` and
``results.md`` gather each run's final metrics.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rablip.config.load import load_config  # noqa: E402
from rablip.config.sweep import (  # noqa: E402
    ENTRY_POINTS,
    check_runs,
    collect,
    entry_point_for,
    expand,
    launch,
    launch_command,
    parse_axes,
    write_tables,
)
from rablip.utils.cli import run_main  # noqa: E402


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--grid", nargs="+", required=True, metavar="key=v1,v2")
    parser.add_argument("--set", nargs="*", default=[], metavar="key=value", help="overrides shared by every run")
    parser.add_argument("--out", default=None, help="sweep directory (default <run.output_dir>_sweep)")
    parser.add_argument("--launcher", choices=("local", "print"), default="local")
    parser.add_argument("--entry", choices=tuple(ENTRY_POINTS), default=None, help="stage (default: from the config name)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--collect", action="store_true", help="only collect the finished runs' metrics")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)

    base = load_config(args.config, args.set)
    sweep_dir = Path(args.out) if args.out else Path(base.run.output_dir + "_sweep")
    runs = expand(parse_axes(args.grid), sweep_dir)
    entry = ENTRY_POINTS[args.entry] if args.entry else entry_point_for(args.config)
    check_runs(args.config, args.set, runs)
    commands = [launch_command(entry, args.config, args.set, run) for run in runs]

    if args.collect:
        codes = None
    else:
        print(f"[sweep] {len(runs)} runs under {sweep_dir}", file=sys.stderr)
        codes = launch(commands, args.launcher, args.dry_run)
        if args.dry_run or args.launcher == "print":
            return 0
    rows = collect(runs, codes)
    csv_path, md_path = write_tables(rows, sweep_dir)
    print(md_path.read_text(encoding="utf-8"))
    print(f"[sweep] tables: {csv_path} {md_path}", file=sys.stderr)
    return 0 if not codes or all(c == 0 for c in codes) else 1


if __name__ == "__main__":
    run_main(main)
