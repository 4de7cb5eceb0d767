"""Benchmark: recall@1 of the retriever alone against the retriever with the trained re-ranker.

    python scripts/bench/rerank.py --world DIR --encoder DIR [--out DIR] [--split val] [--threads 2]
        [--train] [override ...]

On a synthetic world (``scripts/make_synthetic.py --out DIR``) with a pre-trained encoder
(``run_pretrain.py --config configs/experiment/synthetic_pretrain.yaml``, its ``final/``) and the index
``DIR/index`` built for it (``scripts/encode_kb.py --config configs/experiment/synthetic_eval.yaml``):

1. with ``--train`` (or when the encoder directory holds no trained head), train the re-ranker head
   (``run_pretrain.py --config configs/experiment/synthetic_rerank.yaml``, ``train.stage=rerank``), which
   saves it beside the encoder;
2. score retrieval on ``--split`` three ways through ``run_eval.py eval.retrieval_only=true``, each in its
   own run directory under ``--out``: the retriever alone (``retrieval.rerank_model=false``), re-ranked
   by the encoder's ITM head (a directory linking the encoder's files without the head, as rablip
   re-ranked before this stage) and re-ranked by the trained head (``retrieval.rerank_model=true``).

Prints a Markdown table (recall@1, recall@5, MRR, wall seconds of each evaluation) and the recall@1
ratio of the trained re-ranker to the retriever alone. ``override`` arguments (``key=value``) go to
every run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rablip.models.fusion_checkpoint import CONFIG_FILE, WEIGHTS_FILE  # noqa: E402
from rablip.models.rerank import HEAD_FILE  # noqa: E402

EVAL_CONFIG = "configs/experiment/synthetic_eval.yaml"
RERANK_CONFIG = "configs/experiment/synthetic_rerank.yaml"


def run(argv: list[str], log: Path, threads: int) -> float:
    """Run an entry point with its output in ``log``; wall seconds. A failure prints the log's tail."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false",
           "ACCELERATE_USE_CPU": os.environ.get("ACCELERATE_USE_CPU", "true")}
    started = time.perf_counter()
    with log.open("w") as handle:
        code = subprocess.run([sys.executable, *argv], cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                              env=env).returncode
    if code != 0:
        sys.exit(f"{argv[0]} failed (exit {code}); log {log}:\n" + "\n".join(log.read_text().splitlines()[-20:]))
    return time.perf_counter() - started


def without_head(encoder: Path, work: Path) -> Path:
    """A directory holding the encoder's own files (hard links) and no trained head: the ITM head scores."""
    target = work / "encoder_itm_head"
    target.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (target / name).exists():
            os.link(encoder / name, target / name)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", required=True, help="synthetic world directory (data.root); index in DIR/index")
    parser.add_argument("--encoder", required=True, help="pre-trained retrieval encoder (model.fusion.checkpoint)")
    parser.add_argument("--out", help="run directories and logs (default: a temporary directory)")
    parser.add_argument("--split", default="val", choices=["val", "test"])
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each run")
    parser.add_argument("--train", action="store_true", help="train the re-ranker head even if one is saved")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = parser.parse_args()
    world, encoder = Path(args.world).resolve(), Path(args.encoder).resolve()
    out = Path(args.out or tempfile.mkdtemp(prefix="rablip-bench-rerank-")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    common = [f"data.root={world}", f"retrieval.index_dir={world / 'index'}", *args.overrides]

    train_seconds = None
    if args.train or not (encoder / HEAD_FILE).is_file():
        train_seconds = run(["run_pretrain.py", "--config", RERANK_CONFIG, *common, f"model.fusion.checkpoint={encoder}",
                             f"run.output_dir={out / 'rerank'}"], out / "rerank.log", args.threads)

    variants = {"retriever alone": (encoder, "false"), "re-ranked, ITM head": (without_head(encoder, out), "true"),
                "re-ranked, trained head": (encoder, "true")}
    rows = {}
    for name, (checkpoint, rerank) in variants.items():
        run_dir = out / name.replace(",", "").replace(" ", "_")
        seconds = run(["run_eval.py", "--config", EVAL_CONFIG, *common, f"model.fusion.checkpoint={checkpoint}",
                       f"retrieval.rerank_model={rerank}", "eval.retrieval_only=true", f"eval.split={args.split}",
                       f"run.output_dir={run_dir}"], out / f"{run_dir.name}.log", args.threads)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        rows[name] = {**metrics["retrieval"], "seconds": seconds, "questions": metrics["num_questions"]}

    print(f"re-ranker benchmark: {args.split} split of {world} ({rows['retriever alone']['questions']} questions), "
          f"encoder {encoder}, {args.threads} threads" + (f"; head trained in {train_seconds:.0f} s" if train_seconds
                                                          else "; head already trained"))
    print("\n| retrieval | recall@1 | recall@5 | MRR | eval s |\n|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['recall@1']:.2f} | {row['recall@5']:.2f} | {row['mrr']:.4f} | {row['seconds']:.0f} |")
    alone, trained = rows["retriever alone"]["recall@1"], rows["re-ranked, trained head"]["recall@1"]
    print(f"\nrecall@1 trained re-ranker / retriever alone: {trained:.2f} / {alone:.2f} = "
          f"{trained / alone if alone else float('nan'):.4f}")
    print(f"runs and logs: {out}")


if __name__ == "__main__":
    main()
