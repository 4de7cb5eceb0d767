"""Benchmark: building and reading a knowledge-base store, rablip against the naive ``datasets`` way.

    python scripts/bench/kb_build.py [--items 1000000] [--lookups 10000] [--seed 0]

Writes ``--items`` text items as a generic KB JSONL file in a temporary directory, then runs each
measured step in its own child process (so peak memory is that step's alone):

- build, rablip: ``build_kb_store`` streaming ``iter_kb_jsonl`` (batched Arrow writes, id index);
- build, baseline: all items read into a Python list, ``Dataset.from_list``, ``save_to_disk``;
- lookups, rablip: ``KBStore.open``, ``--lookups`` random ``store[id]``, ``get_many`` of 64 ids;
- lookups, baseline: ``load_from_disk``, a Python dict from id to row, the same lookups.

Peak memory is the largest resident set size of the child and its descendants, polled every
20 ms with psutil, or the child's own high-water mark when larger (see ``peak_memory.py``); the
anonymous part (RSS less file-backed pages such as memory-mapped Arrow files, which the kernel
can drop) is reported beside it. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from peak_memory import kb_item_id as item_id  # noqa: E402
from peak_memory import run_measured  # noqa: E402
from peak_memory import write_text_kb_jsonl as write_jsonl  # noqa: E402

GET_MANY_SIZE = 64
GET_MANY_REPEATS = 150
def _sample_ids(count: int, lookups: int, seed: int) -> list[str]:
    rng = random.Random(seed + 1)
    return [item_id(rng.randrange(count)) for _ in range(lookups)]


def _record_to_item(record: dict):
    """The baseline's own row-to-KBItem conversion."""
    from rablip.data.records import KBItem

    image = record["image_path"] if record["image_path"] is not None else record["image_bytes"]
    return KBItem(id=record["id"], modality=record["modality"], image=image, text=record["text"],
                  title=record["title"], source=record["source"])


def child_build_rablip(work: Path, count: int) -> dict:
    """Streamed build: the JSONL reader feeding build_kb_store."""
    from rablip.data.kb_sources import iter_kb_jsonl
    from rablip.data.kb_writer import build_kb_store

    started = time.perf_counter()
    build_kb_store(iter_kb_jsonl(work / "kb.jsonl"), work / "store_rablip", total=count, show_progress=False)
    return {"seconds": time.perf_counter() - started}


def child_build_baseline(work: Path, count: int) -> dict:
    """Naive build: every item in a Python list, then Dataset.from_list and save_to_disk."""
    import datasets

    from rablip.data.kb import KB_FEATURES
    from rablip.data.kb_sources import iter_kb_jsonl

    datasets.disable_progress_bars()
    started = time.perf_counter()
    rows = [
        {"id": item.id, "modality": item.modality, "image_path": None, "image_bytes": None,
         "text": item.text, "title": item.title, "source": item.source}
        for item in iter_kb_jsonl(work / "kb.jsonl")
    ]
    datasets.Dataset.from_list(rows, features=KB_FEATURES).save_to_disk(str(work / "store_baseline"))
    return {"seconds": time.perf_counter() - started}


def _time_lookups(lookup_one, lookup_many, ids: list[str]) -> dict:
    started = time.perf_counter()
    for wanted in ids:
        assert lookup_one(wanted).id == wanted
    lookups_seconds = time.perf_counter() - started
    starts = range(0, max(len(ids) - GET_MANY_SIZE + 1, 1), GET_MANY_SIZE)
    batches = [ids[start : start + GET_MANY_SIZE] for start in starts][:GET_MANY_REPEATS]
    started = time.perf_counter()
    for batch in batches:
        assert [item.id for item in lookup_many(batch)] == batch
    get_many_seconds = (time.perf_counter() - started) / len(batches)
    return {"lookups_seconds": lookups_seconds, "get_many_seconds": get_many_seconds}


def child_lookups_rablip(work: Path, ids: list[str]) -> dict:
    """KBStore.open, then lookups through the memory-mapped id index."""
    from rablip.data.kb import KBStore

    started = time.perf_counter()
    store = KBStore.open(work / "store_rablip")
    open_seconds = time.perf_counter() - started
    return {"open_seconds": open_seconds, **_time_lookups(store.__getitem__, store.get_many, ids)}


def child_lookups_baseline(work: Path, ids: list[str]) -> dict:
    """load_from_disk, a dict from id to row built in Python, then the same lookups."""
    import datasets

    started = time.perf_counter()
    dataset = datasets.load_from_disk(str(work / "store_baseline"))
    row_of = {}
    for batch in dataset.select_columns(["id"]).iter(batch_size=65_536):
        row_of.update(zip(batch["id"], range(len(row_of), len(row_of) + len(batch["id"])), strict=True))
    open_seconds = time.perf_counter() - started

    def lookup_one(wanted: str):
        return _record_to_item(dataset[row_of[wanted]])

    def lookup_many(wanted: list[str]):
        batch = dataset[[row_of[i] for i in wanted]]
        return [_record_to_item({name: values[position] for name, values in batch.items()})
                for position in range(len(wanted))]

    return {"open_seconds": open_seconds, **_time_lookups(lookup_one, lookup_many, ids)}


def run_child(step: str, work: Path, extra: list[str]) -> dict:
    """Run one step in a child process; its result plus its peak memory in MiB."""
    measured = run_measured([sys.executable, __file__, "--child", step, "--work", str(work), *extra])
    if measured.returncode != 0:
        raise SystemExit(f"step {step} failed with exit code {measured.returncode}")
    result = json.loads(measured.stdout.strip().splitlines()[-1])
    result["peak_mib"] = measured.peak_mib
    result["peak_anon_mib"] = measured.peak_anon_mib
    return result


def _directory_mib(path: Path) -> float:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file()) / 2**20


def markdown_table(count: int, lookups: int, rablip: dict, baseline: dict) -> str:
    """The results as a Markdown table with rablip / baseline ratios."""
    rows = [
        ("Build: wall time (s)", "build_seconds", 1, "{:.1f}"),
        ("Build: peak RSS (MiB)", "build_peak_mib", 1, "{:.0f}"),
        ("Build: peak anonymous RSS, no file-backed pages (MiB)", "build_peak_anon_mib", 1, "{:.0f}"),
        ("Store size on disk (MiB)", "disk_mib", 1, "{:.0f}"),
        ("Open, ready for lookups (s)", "open_seconds", 1, "{:.3f}"),
        ("Open + lookups: peak RSS (MiB)", "lookup_peak_mib", 1, "{:.0f}"),
        ("Open + lookups: peak anonymous RSS (MiB)", "lookup_peak_anon_mib", 1, "{:.0f}"),
        (f"{lookups:,} random `store[id]` (s, total)", "lookups_seconds", 1, "{:.2f}"),
        (f"`get_many` of {GET_MANY_SIZE} ids (ms per call)", "get_many_seconds", 1000, "{:.2f}"),
    ]
    lines = [
        f"| {count:,} text items | rablip | baseline | rablip / baseline |",
        "|---|---:|---:|---:|",
    ]
    for label, key, scale, fmt in rows:
        ours, theirs = rablip[key] * scale, baseline[key] * scale
        ratio = ours / theirs if theirs else float("nan")
        lines.append(f"| {label} | {fmt.format(ours)} | {fmt.format(theirs)} | {ratio:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000, help="number of generated KB items")
    parser.add_argument("--lookups", type=int, default=10_000, help="number of random store[id] lookups")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child is not None:
        work = Path(args.work)
        ids = _sample_ids(args.items, args.lookups, args.seed)
        steps = {
            "build-rablip": lambda: child_build_rablip(work, args.items),
            "build-baseline": lambda: child_build_baseline(work, args.items),
            "lookups-rablip": lambda: child_lookups_rablip(work, ids),
            "lookups-baseline": lambda: child_lookups_baseline(work, ids),
        }
        result = steps[args.child]()
        print(json.dumps(result))
        return

    shared = ["--items", str(args.items), "--lookups", str(args.lookups), "--seed", str(args.seed)]
    with tempfile.TemporaryDirectory(prefix="rablip-kb-bench-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        write_jsonl(work / "kb.jsonl", args.items, args.seed)
        print(f"wrote {args.items:,} items ({_directory_mib(work):.0f} MiB JSONL) in "
              f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
        results = {}
        for name in ("rablip", "baseline"):
            build = run_child(f"build-{name}", work, shared)
            print(f"build {name}: {build}", file=sys.stderr)
            lookups = run_child(f"lookups-{name}", work, shared)
            print(f"lookups {name}: {lookups}", file=sys.stderr)
            results[name] = {
                "build_seconds": build["seconds"],
                "build_peak_mib": build["peak_mib"],
                "build_peak_anon_mib": build["peak_anon_mib"],
                "disk_mib": _directory_mib(work / f"store_{name}"),
                "open_seconds": lookups["open_seconds"],
                "lookup_peak_mib": lookups["peak_mib"],
                "lookup_peak_anon_mib": lookups["peak_anon_mib"],
                "lookups_seconds": lookups["lookups_seconds"],
                "get_many_seconds": lookups["get_many_seconds"],
            }
    print(markdown_table(args.items, args.lookups, results["rablip"], results["baseline"]))


if __name__ == "__main__":
    main()
