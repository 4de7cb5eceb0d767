"""Benchmark: the figures users ask of one GPU, in one command.

    python scripts/bench/gpu.py --out DIR [--reduced] [--model instructblip_flant5xl] [--peak-tflops T]
        [--skip-finetune] [--skip-generate] [--skip-kb] [--skip-faiss]
        [--faiss-sizes 1000000 10000000] [--faiss-widths 256 768] [... see --help]

Runs on ``cuda`` when torch sees a GPU, else on the CPU (slowly at full size). Writes ``DIR/gpu.json``
(every number, the device name and the torch / transformers / faiss versions) and ``DIR/gpu.md`` (the
Markdown tables, also printed). The checkpoint is the published InstructBLIP Flan-T5-XL layout with random
weights in bf16 (:func:`rablip.synthetic.published.write_published_checkpoint`), written to
``DIR/checkpoint`` (or ``--checkpoint``) unless there already.

1. Fine-tuning step: rablip's ``RABlipForConditionalGeneration`` and transformers' own
   ``InstructBlipForConditionalGeneration`` on that checkpoint, bf16 weights, the trained modules (Q-Former,
   query tokens, projection; rablip's slot tables) in float32, ``torch.autocast`` bf16, AdamW of
   ``rablip.training.optim.build_optimizer`` with gradient clipping; batches from rablip's collator with the
   experiment config's lengths and prompt (``--config``, OK-VQA's: the release template, concat images).
   rablip at k = 0 and k = 2 references, transformers at k = 0 on the same batch's single image; the variants
   alternate within rounds; median step seconds after warm-up rounds. MFU = model FLOPs per step /
   (step seconds x peak FLOPS), FLOPs counted analytically (``gpu_setup.step_flops``: 2·N·tokens for frozen
   forwards, 4·N·tokens for the frozen LLM that gradients cross, 6·N·tokens for the trained Q-Former and
   projection); peak from ``--peak-tflops`` or the device name (H100 SXM / H200: 989, H100 PCIe: 756,
   A100: 312 bf16 dense TFLOPS; otherwise MFU is null).
2. Evaluation: questions per second of ``generate`` with 5 beams and at most 10 new tokens, rablip (k = 0,
   k = 2) and transformers (k = 0) on the same inputs.
3. KB encoding: items per second of a fresh fusion retrieval encoder on the generator's vision tower and
   Q-Former, through the encoding stage's ``encode_shard`` over a KB store of image+text items.
4. FAISS: flat and IVF-PQ indexes (rablip's constructor and settings) of random unit vectors, faiss on the
   CPU against ``faiss.index_cpu_to_gpu``: build seconds and median ms per search batch (k = 10).

``--reduced``: the reduced published layout and small counts (FAISS: 2,000 vectors, widths 32 and 64), so
that every section runs on a CPU in seconds (the test); its numbers are no performance figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# torch and faiss each bring an OpenMP runtime; with both pools spinning, faiss's CPU work in this process ran
# up to 20x slower (IVF-PQ build, 2 cores). Idle OpenMP threads sleep instead, unless the caller chose.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(Path(__file__).resolve().parent))

import faiss  # noqa: E402
import transformers  # noqa: E402
from gpu_faiss import measure_faiss  # noqa: E402
from gpu_measure import measure_finetune, measure_generate, measure_kb_encoding  # noqa: E402
from gpu_report import markdown  # noqa: E402
from gpu_setup import load_models  # noqa: E402

from rablip.config.load import load_config  # noqa: E402
from rablip.config.retrieval_schema import RetrievalConfig  # noqa: E402
from rablip.synthetic.published import published_parameter_count, write_published_checkpoint  # noqa: E402

MODELS = ("instructblip_flant5xl", "instructblip_flant5xxl", "instructblip_t5base", "instructblip_t5large")
"""Published layouts with a T5 LLM (the FLOP count is T5's)."""
FULL = {"batch": 4, "rounds": 10, "warmup": 3, "questions": 32, "eval_batch": 8, "eval_rounds": 3,
        "kb_items": 1024, "kb_batch": 64, "faiss_sizes": [1_000_000, 10_000_000], "faiss_widths": [256, 768],
        "faiss_repeats": 10}
REDUCED = {"batch": 2, "rounds": 2, "warmup": 1, "questions": 4, "eval_batch": 2, "eval_rounds": 1,
           "kb_items": 8, "kb_batch": 4, "faiss_sizes": [2000], "faiss_widths": [32, 64], "faiss_repeats": 3}
REDUCED_IVF = {"nlist": 16, "pq_m": 8, "nbits": 8, "nprobe": 4}
"""IVF-PQ of the 2,000-vector smoke run: 8-bit codes as rablip's default (and faiss's GPU IVF-PQ wants); faiss
warns that 2,000 rows are few for 256 PQ centroids, which is harmless at this size."""
PEAK_TFLOPS = (("H100 PCIE", 756.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0), ("A100", 312.0))
"""bf16 dense tensor-core peaks by device-name substring, first match wins (NVIDIA data sheets)."""


def device_peak_tflops(name: str) -> float | None:
    """The bf16 dense peak of a device name (None: unknown, e.g. the CPU)."""
    upper = name.upper()
    return next((peak for key, peak in PEAK_TFLOPS if key in upper), None)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="directory for gpu.json, gpu.md (and the checkpoint)")
    parser.add_argument("--reduced", action="store_true", help="small sizes: a CPU smoke run in seconds")
    parser.add_argument("--model", choices=MODELS, default="instructblip_flant5xl")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint dir (default DIR/checkpoint; written if absent)")
    parser.add_argument("--config", default="configs/experiment/okvqa_finetune.yaml",
                        help="experiment config: collator lengths, prompt, multi_image, optimizer, fusion size")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak bf16 TFLOPS (default: by device name)")
    for flag in ("finetune", "generate", "kb", "faiss"):
        parser.add_argument(f"--skip-{flag}", action="store_true", help=f"skip the {flag} section")
    parser.add_argument("--ks", type=int, nargs="+", default=[0, 2], help="references of rablip's rows (0 required)")
    parser.add_argument("--batch", type=int, help=f"fine-tuning batch (default {FULL['batch']})")
    parser.add_argument("--rounds", type=int, help=f"timed fine-tuning rounds (default {FULL['rounds']})")
    parser.add_argument("--warmup", type=int, help=f"warm-up rounds (default {FULL['warmup']})")
    parser.add_argument("--questions", type=int, help=f"questions per evaluation round (default {FULL['questions']})")
    parser.add_argument("--eval-batch", type=int, help=f"evaluation batch (default {FULL['eval_batch']})")
    parser.add_argument("--eval-rounds", type=int, help=f"timed evaluation rounds (default {FULL['eval_rounds']})")
    parser.add_argument("--kb-items", type=int, help=f"items encoded (default {FULL['kb_items']})")
    parser.add_argument("--kb-batch", type=int, help=f"encoding batch (default {FULL['kb_batch']})")
    parser.add_argument("--faiss-sizes", type=int, nargs="+", help=f"vector counts (default {FULL['faiss_sizes']})")
    parser.add_argument("--faiss-widths", type=int, nargs="+", help=f"widths (default {FULL['faiss_widths']})")
    parser.add_argument("--faiss-batches", type=int, nargs="+", default=[1, 64], help="query batch sizes")
    parser.add_argument("--faiss-repeats", type=int, help=f"timed searches per cell (default {FULL['faiss_repeats']})")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    defaults = REDUCED if args.reduced else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if 0 not in args.ks:
        parser.error("--ks must include 0 (the side-by-side with transformers)")
    return args


def environment(device: torch.device) -> dict:
    """Device name (``torch.cuda.get_device_name`` or ``cpu``), library versions, torch threads, OpenMP policy."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "faiss": faiss.__version__,
                "cuda": torch.version.cuda if device.type == "cuda" else None}
    return {"device": name, "versions": versions, "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def ensure_checkpoint(args: argparse.Namespace) -> tuple[Path, float | None]:
    """The checkpoint dir, written (random weights, bf16) when it holds no config.json; (dir, write seconds)."""
    checkpoint = args.checkpoint or args.out / "checkpoint"
    if (checkpoint / "config.json").is_file():
        return checkpoint, None
    begin = time.perf_counter()
    write_published_checkpoint(args.model, checkpoint, dtype=torch.bfloat16, reduced=args.reduced, seed=args.seed)
    return checkpoint, time.perf_counter() - begin


def run(args: argparse.Namespace) -> dict:
    """Every section not skipped; the result dict of gpu.json (``section_seconds``: each section's wall time,
    set-up included)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    env = environment(device)
    peak = args.peak_tflops if args.peak_tflops is not None else device_peak_tflops(env["device"])
    result: dict = {**env, "reduced": args.reduced, "model": args.model, "config": args.config,
                    "peak_tflops": peak, "skipped": []}
    started = last = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal last
        now = time.perf_counter()
        seconds[name], last = now - last, now

    if not (args.skip_finetune and args.skip_generate and args.skip_kb):
        checkpoint, written = ensure_checkpoint(args)
        result["checkpoint"] = {"dir": str(checkpoint), "write_seconds": written,
                                "parameters": published_parameter_count(args.model, args.reduced)}
        cfg = load_config(args.config, [f"model.checkpoint={checkpoint}"])
        lap("checkpoint")
        ours, theirs = load_models(checkpoint, cfg.model.multi_image, device)
        lap("load_both_models")
        common = {"side": ours.config.vision_config.image_size, "seed": args.seed}
        if not args.skip_finetune:
            result["finetune"] = measure_finetune(cfg, ours, theirs, device, batch=args.batch, ks=args.ks,
                                                  rounds=args.rounds, warmup=args.warmup, peak_tflops=peak, **common)
            lap("finetune")
        if not args.skip_generate:
            result["generate"] = measure_generate(cfg, ours, theirs, device, questions=args.questions,
                                                  batch=args.eval_batch, ks=args.ks, rounds=args.eval_rounds,
                                                  warmup=1, **common)
            lap("generate")
        del theirs
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if not args.skip_kb:
            result["kb_encoding"] = measure_kb_encoding(cfg, ours, checkpoint, device, items=args.kb_items,
                                                        batch=args.kb_batch, **common)
            lap("kb_encoding")
        del ours
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if not args.skip_faiss:
        config = RetrievalConfig(**REDUCED_IVF) if args.reduced else RetrievalConfig()
        result["faiss"] = measure_faiss(args.faiss_sizes, args.faiss_widths, batches=args.faiss_batches,
                                        config=config, repeats=args.faiss_repeats, seed=args.seed)
        lap("faiss")
    result["skipped"] = [name for name, flag in (("finetune", args.skip_finetune), ("generate", args.skip_generate),
                                                 ("kb_encoding", args.skip_kb), ("faiss", args.skip_faiss)) if flag]
    result["section_seconds"] = seconds
    result["wall_seconds"] = time.perf_counter() - started
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    result = run(args)
    (args.out / "gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (args.out / "gpu.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
