"""Benchmark: peak memory and wall time of ``run_eval.py`` as the split and the knowledge base grow.

    python scripts/bench/eval_memory.py [--sizes 2000x100000 20000x100000 2000x1000000 20000x1000000]
        [--k 3] [--batch-size 64] [--no-report] [--store-batch-rows 0] [--work DIR] [--seed 0]

Each size is ``QUESTIONSxKB_ITEMS``. In a work directory (temporary unless ``--work``) it builds:

- a 12-entity synthetic world (``rablip.synthetic``) for its question images and the
  tokenizers of the tiny generator, which is built once (``configs/model/tiny.yaml``);
- per KB size, a generic KB JSONL of text items (about 30 words each) and its store
  (``build_kb_store``, as ``scripts/build_kb.py`` does);
- per size, an OK-VQA-format split (questions and annotations, so the official scorer runs)
  whose questions cycle over the world's test questions and images, and a static retrieval file
  (``rablip.retrieval.static``) giving every question ``--k`` random KB items.

Then ``run_eval.py --config configs/experiment/synthetic_eval.yaml`` with overrides pointing at
those files runs in a child process (one thread, greedy decoding), and its peak memory (the
process tree's RSS polled every 20 ms, or its ``ru_maxrss`` if larger; anonymous = RSS less
file-backed pages such as the memory-mapped KB) and wall time are recorded. Prints a Markdown table.

``--store-batch-rows N`` rewrites each built store's Arrow data in N-row record batches (same rows,
same order) before measuring, to see what the store's batch layout costs when it is opened.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from peak_memory import kb_item_id, run_measured, write_text_kb_jsonl  # noqa: E402

EVAL_CONFIG = ROOT / "configs" / "experiment" / "synthetic_eval.yaml"
DEFAULT_SIZES = ("2000x100000", "20000x100000", "2000x1000000", "20000x1000000")
WORLD_ENTITIES = 12
TEST_SPLIT = "test2014"


def parse_size(text: str) -> tuple[int, int]:
    """``"2000x100000"`` -> (2000 questions, 100000 KB items)."""
    questions, _, items = text.lower().partition("x")
    try:
        sizes = int(questions), int(items)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not QUESTIONSxKB_ITEMS, e.g. 2000x100000") from None
    if min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"size {text!r}: both counts must be positive")
    return sizes


def world_overrides(world: Path) -> list[str]:
    """Config overrides that point the synthetic config at the benchmark's world."""
    return [f"data.root={world}"]


def prepare_world_and_model(world: Path, seed: int) -> None:
    """The synthetic world (question images, tokenizer texts) and the tiny generator built on it."""
    from rablip.synthetic.make import make_synthetic
    from rablip.synthetic.settings import load_settings

    settings = load_settings(None, [f"seed={seed}", f"world.entities={WORLD_ENTITIES}", "warmup.vision_steps=0",
                                    "warmup.reading_steps=0", "extra_pairs.count=0"])
    make_synthetic(world, settings, parts=("world", "checkpoint"))


def build_kb(directory: Path, items: int, seed: int) -> Path:
    """A store of ``items`` generated text items under ``directory``; the JSONL is removed after."""
    from rablip.data.kb_sources import iter_kb_jsonl
    from rablip.data.kb_writer import build_kb_store

    directory.mkdir(parents=True, exist_ok=True)
    jsonl = directory / "kb.jsonl"
    write_text_kb_jsonl(jsonl, items, seed)
    store = directory / "store"
    build_kb_store(iter_kb_jsonl(jsonl), store, total=items, show_progress=False)
    jsonl.unlink()
    return store


def rebatch_store(store: Path, rows: int) -> None:
    """Rewrite the store's Arrow data files in ``rows``-row record batches (same rows, same order)."""
    import pyarrow as pa

    for path in sorted([*store.glob("data-*.arrow"), *store.glob("items.arrow")]):
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_stream(source).read_all().combine_chunks()
        rewritten = path.with_name(path.name + ".rebatched")
        with pa.OSFile(str(rewritten), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=rows)
        del table
        os.replace(rewritten, path)


def write_split(directory: Path, world: Path, questions: int, kb_items: int, k: int, seed: int) -> dict[str, Path]:
    """OK-VQA questions and annotations of ``questions`` questions over the world's test images, and a
    static retrieval file giving each ``k`` random KB items (the first one labelled relevant)."""
    from rablip.retrieval.static import write_retrieval

    directory.mkdir(parents=True, exist_ok=True)
    world_questions = json.loads((world / f"OpenEnded_mscoco_{TEST_SPLIT}_questions.json").read_text())["questions"]
    world_annotations = json.loads((world / f"mscoco_{TEST_SPLIT}_annotations.json").read_text())["annotations"]
    rng = random.Random(seed)
    asked, annotated, retrieved = [], [], []
    for position in range(questions):
        source = position % len(world_questions)
        question_id = position + 1
        references = [kb_item_id(rng.randrange(kb_items)) for _ in range(k)]
        asked.append({**world_questions[source], "question_id": question_id})
        annotated.append({**world_annotations[source], "question_id": question_id, "relevant_ids": references[:1]})
        retrieved.append((str(question_id), [(item_id, 1.0 - rank / k) for rank, item_id in enumerate(references)]))
    files = {"questions": directory / "questions.json", "annotations": directory / "annotations.json",
             "retrieval": directory / "retrieval.jsonl"}
    files["questions"].write_text(json.dumps({"questions": asked}))
    files["annotations"].write_text(json.dumps({"annotations": annotated}))
    write_retrieval(files["retrieval"], retrieved)
    return files


def eval_command(world: Path, store: Path, split: dict[str, Path], out: Path, k: int, batch_size: int,
                 report: bool) -> list[str]:
    """The ``run_eval.py`` command line answering ``split`` with static references from ``store``."""
    return [sys.executable, str(ROOT / "run_eval.py"), "--config", str(EVAL_CONFIG), *world_overrides(world),
            f"data.test.path={split['questions']}", f"data.test.annotations={split['annotations']}",
            f"data.test.image_root={world}", f"data.test.image_split={TEST_SPLIT}",
            f"data.kb.store_dir={store}", "data.kb.path=", f"data.kb.root={store.parent}",
            "retrieval.source=static", f"retrieval.static_file={split['retrieval']}", f"retrieval.k={k}",
            "eval.split=test", "eval.checkpoint=", "model.fusion.checkpoint=", "eval.k_sweep=[]",
            "eval.num_beams=1", f"eval.batch_size={batch_size}", f"eval.report={str(report).lower()}",
            f"run.output_dir={out}"]


def measure_eval(work: Path, world: Path, store: Path, questions: int, kb_items: int, args) -> dict:
    """One measured run_eval.py run; the row of the table."""
    name = f"q{questions}_kb{kb_items}"
    split = write_split(work / name, world, questions, kb_items, args.k, args.seed)
    out = work / name / "eval"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1"}
    log_path = work / f"{name}.log"
    measured = run_measured(eval_command(world, store, split, out, args.k, args.batch_size, args.report),
                            env=env, cwd=ROOT, stderr_path=log_path)
    if measured.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise SystemExit(f"run_eval.py failed for {name} with exit code {measured.returncode}:\n{tail}")
    metrics = json.loads((out / "metrics.json").read_text())
    if metrics["num_questions"] != questions:
        raise SystemExit(f"{name}: metrics.json counts {metrics['num_questions']} questions, not {questions}")
    row = {"questions": questions, "kb_items": kb_items, "seconds": measured.seconds,
           "eval_seconds": metrics["wall_seconds"], "peak_mib": measured.peak_mib,
           "peak_anon_mib": measured.peak_anon_mib, "score": metrics.get("main_score"),
           "report": (out / "report.html").is_file()}
    shutil.rmtree(work / name)
    print(f"{name}: {json.dumps(row)}", file=sys.stderr)
    return row


def markdown_table(rows: list[dict]) -> str:
    """The measured rows as a Markdown table."""
    lines = ["| questions | KB items | wall time (s) | questions/s (whole run) | peak RSS (MiB) | peak anonymous RSS (MiB) |",
             "|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['questions']:,} | {row['kb_items']:,} | {row['seconds']:.0f} | "
                     f"{row['questions'] / row['seconds']:.0f} | {row['peak_mib']:.0f} | {row['peak_anon_mib']:.0f} |")
    return "\n".join(lines)


def machine() -> str:
    """Cores, memory, platform and load average, for the record."""
    import psutil

    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (f"{os.cpu_count()} CPU cores, {psutil.virtual_memory().total / 2**30:.0f} GiB memory, "
            f"{platform.system()} {platform.machine()}, Python {platform.python_version()}, load average {load}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[parse_size(s) for s in DEFAULT_SIZES],
                        metavar="QUESTIONSxKB_ITEMS")
    parser.add_argument("--k", type=int, default=3, help="references per question")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-report", dest="report", action="store_false", help="eval.report=false")
    parser.add_argument("--store-batch-rows", type=int, default=0,
                        help="rewrite each KB store in record batches of this many rows first (0: as built)")
    parser.add_argument("--work", type=Path, default=None, help="work directory (default: a temporary one)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rablip-eval-bench-", dir=args.work) as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        print(f"machine at start: {machine()}", file=sys.stderr)
        world = work / "world"
        prepare_world_and_model(world, args.seed)
        rows = []
        for kb_items in sorted({items for _, items in args.sizes}):
            built = time.perf_counter()
            store = build_kb(work / f"kb{kb_items}", kb_items, args.seed)
            if args.store_batch_rows:
                rebatch_store(store, args.store_batch_rows)
            print(f"KB store of {kb_items:,} items built in {time.perf_counter() - built:.0f} s", file=sys.stderr)
            for questions in [q for q, items in args.sizes if items == kb_items]:
                rows.append(measure_eval(work, world, store, questions, kb_items, args))
            shutil.rmtree(store.parent)
        print(f"machine at end: {machine()}; whole benchmark {time.perf_counter() - started:.0f} s", file=sys.stderr)
    order = {size: position for position, size in enumerate(args.sizes)}
    rows.sort(key=lambda row: order[(row["questions"], row["kb_items"])])
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
