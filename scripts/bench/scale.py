"""Benchmark: a published size built, loaded, trained and evaluated through the real entry points, beside
transformers' own model on the same checkpoint, in one run.

    python scripts/bench/scale.py --model instructblip_flant5xl --out DIR [--steps 4] [--questions 4]
        [--dtype bf16|fp32] [--batch 2] [--eval-repeats 3] [--reduced] [--gradient-checkpointing] [--activations]

``--model`` is one of :data:`rablip.synthetic.published.PUBLISHED` (InstructBLIP Flan-T5-XL/XXL, Vicuna-7B,
BLIP-2 OPT-2.7b, LLaVA-1.5-7B, the T5-base/large pairings). In ``DIR`` it writes (or reuses):

- ``checkpoint/``: the published transformers layout with random weights in ``--dtype`` (config.json at
  the published sizes, sharded safetensors, tokenizers and image processor at the published vocabularies);
- ``world/``: a small synthetic world in the OK-VQA format (its knowledge items are image+text) and a
  static retrieval results file naming 5 image items per question, so every example gets k references;

then runs, each in its own process (peak RSS from ``wait4``):

1. ``load``: rablip's generator loaded as fine-tuning loads it (``load_seconds``, ``load_peak_rss_mib``,
   the parameter counts, checked against transformers' own model plus rablip's slot tables);
2. ``run_finetune.py`` at k = 0 and at k = 2 with the feature cache, ``--steps`` steps of ``--batch``
   questions in ``--dtype`` (``step_seconds_*``: median seconds per step after the first, from
   ``metrics.jsonl``; ``step_peak_rss_mib``: the k = 0 run's);
3. ``run_eval.py`` on ``--questions`` questions with 5 beams at k = 0 (``eval_seconds_per_question``: the
   answering time, ``answer_seconds`` in its metrics.json, per question; the median of ``--eval-repeats``
   runs that alternate with transformers' below);
4. transformers' own InstructBLIP/BLIP-2/LLaVA on the same checkpoint: the same k = 0 batches stepped with
   the same trainable modules, dtypes and optimizer; and, in a fresh process as run_eval.py starts,
   ``generate`` on the same evaluation inputs;
5. with ``--gradient-checkpointing``: the k = 2 fine-tuning again with ``model.gradient_checkpointing``
   [qformer, language_model]; with ``--activations``: bytes saved for backward per example at k = 0/2/5.

Writes ``DIR/scale.json`` and prints the ratios rablip / transformers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rablip.synthetic.bench_world import build_world  # noqa: E402
from rablip.synthetic.published import (  # noqa: E402
    PUBLISHED,
    published_parameter_count,
    write_processor_files,
)

DTYPES = {"bf16": "bfloat16", "fp32": "float32"}
BASE_CONFIG = "configs/experiment/synthetic_finetune.yaml"
EVAL_CONFIG = "configs/experiment/synthetic_eval.yaml"


def run_measured(args: list[str], log_file: Path) -> tuple[float, float]:
    """Run ``python args...`` from the repo root; (wall seconds, peak RSS MiB of the process). Exits on failure."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    with log_file.open("w") as log:
        process = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        tail = log_file.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{' '.join(args[:2])} failed (exit {process.returncode}); see {log_file}:\n{tail}")
    return time.perf_counter() - started, usage.ru_maxrss / 1024


def overrides(model: str, out: Path, world: dict[str, str], dtype: str, batch: int, k: int) -> list[str]:
    """The key=value overrides that point the synthetic configs at the published checkpoint and small world."""
    spec = PUBLISHED[model]
    instructblip = spec.family != "llava"
    # RA-BLIP trains the Q-Former side; the LLaVA family (no Q-Former) its projector (LLaVA-1.5's recipe, no LoRA
    # here so that transformers' model trains the same parameters)
    trainable = "[qformer,query_tokens,language_projection,slot_embeddings]" if instructblip else "[language_projection]"
    return [
        f"model.checkpoint={out / 'checkpoint'}", f"data.root={out / 'world'}", f"model.dtype={DTYPES[dtype]}",
        f"train.mixed_precision={'bf16' if dtype == 'bf16' else 'no'}",
        f"model.multi_image={'concat' if spec.family == 'instructblip' else 'per_slot'}",
        f"model.trainable={trainable}",
        "retrieval.source=static", f"retrieval.static_file={world['static_file']}", f"retrieval.k={k}",
        f"data.val.path={world['val_questions']}", f"data.val.annotations={world['val_annotations']}",
        "data.replay_share=0", "askg.enabled=false", "noise.random_snippets=0", "noise.counterfactual=0",
        f"train.batch_size={batch}", "train.warmup_steps=1", "train.eval_every=0", "train.save_every=100000",
        f"train.feature_cache={str(instructblip and k > 0).lower()}", "log.every=1", "data.num_workers=0",
        "model.fusion.checkpoint=",
        # LLaVA: 576 image tokens per image, so k = 2 needs 1,728 of them; its LLM recomputes activations in the
        # backward pass, as LLaVA-1.5's LoRA recipe and rablip's RORA configs do (and transformers' model below)
        *(["data.max_input_length=512"] if instructblip else
          ["data.max_input_length=2048", "model.gradient_checkpointing=[language_model]"]),
    ]


def step_seconds(run_dir: Path, batch: int) -> float:
    """Median seconds per optimizer step after the first, from the run's metrics.jsonl (log.every=1)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    seconds = [batch / r["samples_per_sec"] for r in records if "samples_per_sec" in r]
    if len(seconds) < 2:
        raise SystemExit(f"{run_dir}: fewer than 2 logged steps; raise --steps")
    return statistics.median(seconds[1:])


def finetune(name: str, args: argparse.Namespace, world: dict, k: int, extra: list[str] = ()) -> tuple[float, float]:
    run_dir = args.out / "runs" / name
    cli = ["run_finetune.py", "--config", BASE_CONFIG, *overrides(args.model, args.out, world, args.dtype, args.batch, k),
           f"run.output_dir={run_dir}", "run.overwrite=true", f"train.max_steps={args.steps}", *extra]
    _, rss = run_measured(cli, args.out / f"{name}.log")
    return step_seconds(run_dir, args.batch), rss


def evaluate(args: argparse.Namespace, world: dict) -> float:
    run_dir = args.out / "runs" / "eval"
    cli = ["run_eval.py", "--config", EVAL_CONFIG, *overrides(args.model, args.out, world, args.dtype, args.batch, 0),
           "retrieval.source=none", "eval.split=val", "eval.checkpoint=", "eval.num_beams=5", "eval.max_new_tokens=10",
           f"eval.batch_size={args.batch}", "eval.k_sweep=[]", "eval.report=false",
           f"run.output_dir={run_dir}", "run.overwrite=true"]
    run_measured(cli, args.out / "eval.log")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return metrics["answer_seconds"] / metrics["num_questions"]


def probe(mode: str, args: argparse.Namespace, world: dict) -> tuple[dict, float]:
    """Run ``scale_probe.py MODE`` with the fine-tuning overrides at k = 0; (its JSON, its peak RSS MiB)."""
    result = args.out / f"{mode}.json"
    cli = ["scripts/bench/scale_probe.py", mode, "--result", str(result), "--steps", str(args.steps),
           "--questions", str(args.questions), "--batch", str(args.batch), "--config", BASE_CONFIG,
           *overrides(args.model, args.out, world, args.dtype, args.batch, 0),
           f"run.output_dir={args.out / 'runs' / mode}"]
    _, rss = run_measured(cli, args.out / f"{mode}.log")
    return json.loads(result.read_text()), rss


def ensure_checkpoint(args: argparse.Namespace) -> Path:
    """The checkpoint dir, written when absent (random weights in the published layout) by a process of its
    own: a child spawned later starts inside this process's memory, and its peak RSS counts whatever this
    one still holds (a 7B model it built would count in every measurement, and crowd the machine)."""
    checkpoint = args.out / "checkpoint"
    if not (checkpoint / "config.json").is_file():
        seconds, _ = run_measured(["-c", f"from rablip.synthetic.published import write_published_checkpoint; "
                                         f"import torch; write_published_checkpoint({args.model!r}, {str(checkpoint)!r}, "
                                         f"reduced={args.reduced}, dtype=torch.{DTYPES[args.dtype]})"],
                                  args.out / "checkpoint.log")
        print(f"wrote {checkpoint} in {seconds:.0f} s", flush=True)
    elif not (checkpoint / "preprocessor_config.json").is_file():
        write_processor_files(args.model, checkpoint, args.reduced)
    return checkpoint


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, choices=sorted(PUBLISHED))
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--eval-repeats", type=int, default=3, help="alternating answering runs of each model")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--reduced", action="store_true", help="published layouts at small widths (tests)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--activations", action="store_true")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = ensure_checkpoint(args)
    world = build_world(args.out / "world", questions=args.questions)

    loaded, load_rss = probe("load", args, world)
    k0, k0_rss = finetune("finetune_k0", args, world, 0)
    k2, k2_rss = finetune("finetune_k2", args, world, 2)
    theirs, their_rss = probe("transformers", args, world)
    # answering takes seconds a question: the two processes alternate --eval-repeats times (medians), so that a
    # shared machine's load falls on both alike
    ours_eval, their_evals = [], []
    for _ in range(args.eval_repeats):
        ours_eval.append(evaluate(args, world))
        their_evals.append(probe("transformers_eval", args, world)[0]["eval_seconds_per_question"])
    expected = published_parameter_count(args.model, args.reduced) + loaded["slot_table_parameters"]
    if loaded["parameters"] != expected:
        raise SystemExit(f"rablip counts {loaded['parameters']} parameters, transformers' model plus the slot tables "
                         f"{expected}")
    result = {
        "model": args.model, "reduced": args.reduced, "dtype": args.dtype, "batch": args.batch,
        "parameters": loaded["parameters"], "transformers_parameters": theirs["parameters"],
        "slot_table_parameters": loaded["slot_table_parameters"],
        "published_parameters": PUBLISHED[args.model].published_parameters,
        "trainable_parameters": loaded["trainable_parameters"],
        "checkpoint_bytes": sum(f.stat().st_size for f in checkpoint.glob("*.safetensors")),
        "load_seconds": loaded["load_seconds"], "load_peak_rss_mib": round(load_rss),
        "transformers_load_seconds": theirs["load_seconds"],
        "transformers_load_peak_rss_mib": theirs["load_peak_rss_mib"],
        "step_seconds_k0": round(k0, 3), "step_seconds_k2": round(k2, 3), "step_peak_rss_mib": round(k0_rss),
        "step_peak_rss_mib_k2": round(k2_rss),
        "eval_seconds_per_question": round(statistics.median(ours_eval), 3),
        "eval_seconds_per_question_runs": [round(value, 3) for value in ours_eval],
        "transformers_step_seconds": theirs["step_seconds"], "transformers_step_peak_rss_mib": round(their_rss),
        "transformers_eval_seconds_per_question": round(statistics.median(their_evals), 3),
        "transformers_eval_seconds_per_question_runs": their_evals,
    }
    if args.gradient_checkpointing:
        seconds, rss = finetune("finetune_k2_gc", args, world, 2, ["model.gradient_checkpointing=[qformer,language_model]"])
        result["gradient_checkpointing_k2"] = {"step_seconds": round(seconds, 3), "step_peak_rss_mib": round(rss)}
    if args.activations:
        result["activation_bytes_per_example"], _ = probe("activations", args, world)
    result["ratios"] = {
        "step_seconds_k0 / transformers": round(result["step_seconds_k0"] / result["transformers_step_seconds"], 3),
        "eval_seconds_per_question / transformers": round(
            result["eval_seconds_per_question"] / result["transformers_eval_seconds_per_question"], 3),
        "step_peak_rss / transformers": round(result["step_peak_rss_mib"] / result["transformers_step_peak_rss_mib"], 3),
        "load_peak_rss / transformers": round(result["load_peak_rss_mib"] / result["transformers_load_peak_rss_mib"], 3),
    }
    (args.out / "scale.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
