"""Benchmark: the WebQA table's command chain, step by step, timed, on a generated WebQA at tiny size.

    python scripts/bench/webqa_chain.py [--out DIR] [--questions 60] [--test 10] [--llm t5|llama]
        [--steps 20] [--threads 2]

Writes a WebQA in the official formats (``rablip/synthetic/webqa_files.py``: ``WebQA_train_val.json``,
``WebQA_test.json``, ``imgs.tsv``, ``imgs.lineidx``) under ``DIR/data/webqa`` and a tiny generator
trained-tokenizer checkpoint for it, then runs every command of the README's "Reproduce RA-BLIP's WebQA
table" section through the real entry points (one process each, in ``DIR``, so the configs' relative
paths resolve there), with the WebQA configs as they are apart from the model, sizes and step counts:

    scripts/build_kb.py     --config configs/experiment/webqa_pretrain.yaml
    run_pretrain.py         --config configs/experiment/webqa_pretrain.yaml
    scripts/encode_kb.py    --config configs/experiment/webqa_eval.yaml
    run_finetune.py         --config configs/experiment/webqa_finetune.yaml
    run_pretrain.py         --config configs/experiment/webqa_rerank.yaml
    run_eval.py             --config configs/experiment/webqa_eval.yaml
    run_eval.py             --config configs/experiment/webqa_eval.yaml eval.split=test run.output_dir=runs/webqa/test

Prints a Markdown table (step, command, wall seconds) and the val scores, and writes ``DIR/chain.json``.
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

from rablip.synthetic.settings import TinyModelSection  # noqa: E402
from rablip.synthetic.tiny_model import build_generator_for_texts  # noqa: E402
from rablip.synthetic.webqa_files import webqa_texts, write_webqa  # noqa: E402

TINY = {"image_size": 32, "patch_size": 8, "vision_hidden_size": 32, "vision_intermediate_size": 64,
        "vision_backend": "hf", "qformer_hidden_size": 32, "qformer_intermediate_size": 64, "num_query_tokens": 4,
        "llm_hidden_size": 32, "llm_intermediate_size": 64, "llm_copy_init": False, "tokenizer_vocab_size": 400}
EXPERIMENT = ROOT / "configs" / "experiment"
CHAIN = [
    ("1. KB store", "scripts/build_kb.py", "webqa_pretrain", []),
    ("2. pre-train the fusion encoder", "run_pretrain.py", "webqa_pretrain", []),
    ("3. encode the KB, build the index", "scripts/encode_kb.py", "webqa_eval", []),
    ("4. fine-tune the generator (ASKG)", "run_finetune.py", "webqa_finetune", []),
    ("5. train the re-ranker", "run_pretrain.py", "webqa_rerank", []),
    ("6. evaluate on val", "run_eval.py", "webqa_eval", []),
    ("7. answer test (submission)", "run_eval.py", "webqa_eval", ["eval.split=test", "run.output_dir=runs/webqa/test"]),
]


def tiny_overrides(generator: Path, steps: int) -> list[str]:
    return [f"model.checkpoint={generator}", "model.fusion.layers=1", "model.fusion.dim=16", "retrieval.shard_rows=64",
            "retrieval.encode_batch_size=16", "train.epochs=0", f"train.max_steps={steps}", "train.warmup_steps=2",
            "train.batch_size=8", "train.save_every=1000", "eval.batch_size=8", "eval.num_beams=1",
            "eval.max_new_tokens=8", "data.max_input_length=128", "data.qformer_max_length=96"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="work dir (default: a temporary one)")
    parser.add_argument("--questions", type=int, default=60, help="train/val questions (two in three train)")
    parser.add_argument("--test", type=int, default=10, help="test questions")
    parser.add_argument("--llm", choices=("t5", "llama"), default="t5")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps of each trained stage")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="webqa_chain_"))
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    files = write_webqa(out / "data" / "webqa", n_questions=args.questions, n_test=args.test, seed=0)
    generator = build_generator_for_texts(webqa_texts(files.train_val, files.test), out / "model",
                                          TinyModelSection(**TINY, llm_type=args.llm))
    setup_seconds = time.perf_counter() - started
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    rows = []
    for step, script, config, extra in CHAIN:
        command = [sys.executable, str(ROOT / script), "--config", str(EXPERIMENT / f"{config}.yaml"),
                   *tiny_overrides(generator, args.steps), *extra]
        began = time.perf_counter()
        result = subprocess.run(command, cwd=out, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - began
        if result.returncode != 0:
            print(result.stdout[-3000:], result.stderr[-3000:], sep="\n", file=sys.stderr)
            print(f"{step} failed with exit code {result.returncode}", file=sys.stderr)
            return 1
        rows.append({"step": step, "command": f"{script} --config configs/experiment/{config}.yaml {' '.join(extra)}"
                     .strip(), "seconds": round(seconds, 1)})
    metrics = json.loads((out / "runs" / "webqa" / "eval" / "metrics.json").read_text())
    submission = json.loads((out / "runs" / "webqa" / "test" / "predictions.json").read_text())
    summary = {"questions": args.questions, "test": args.test, "llm": args.llm, "steps": args.steps,
               "threads": args.threads, "setup_seconds": round(setup_seconds, 1), "chain": rows,
               "val_scores": {key: metrics["scores"].get(key) for key in ("retrieval_f1", "qa_acc", "qa_fl", "qa")},
               "val_retrieval": metrics["retrieval"], "test_submission_questions": len(submission)}
    (out / "chain.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"WebQA chain on {args.questions} train/val + {args.test} test questions, tiny {args.llm}, "
          f"{args.steps} steps per trained stage, {args.threads} threads (setup {setup_seconds:.1f} s)\n")
    print("| step | command | wall s |\n|---|---|---|")
    for row in rows:
        print(f"| {row['step']} | `{row['command']}` | {row['seconds']} |")
    print(f"\nval: {json.dumps(summary['val_scores'])}; retrieval {json.dumps(metrics['retrieval'])}")
    print(f"test submission: {len(submission)} questions in {out / 'runs' / 'webqa' / 'test' / 'predictions.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
