"""Sections 1-3 of ``scripts/bench/gpu.py``: fine-tuning step time and MFU, evaluation questions per second,
knowledge-base encoding items per second. Every timing synchronizes the GPU before reading the clock."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from gpu_setup import (
    generate_inputs,
    make_kb_items,
    make_samples,
    parameter_groups,
    patches_per_image,
    single_slot,
    step_flops,
    to_device,
    token_counts,
    train_cfg_grad_norm,
    training_mode,
)
from transformers import InstructBlipForConditionalGeneration

from rablip.config.schema import Config
from rablip.data.images import ImageLoader
from rablip.data.kb import KBStore
from rablip.data.kb_writer import build_kb_store
from rablip.models import RABlipForConditionalGeneration
from rablip.models.factory import build_retrieval_encoder
from rablip.models.processing import build_collator
from rablip.models.retrieval_processing import RetrievalBatcher
from rablip.retrieval.encode import EncodeReport, encode_shard
from rablip.training.optim import build_optimizer


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work (nothing on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds ``fn()`` takes, queued GPU work included."""
    synchronize(device)
    begin = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - begin


def alternate(variants: dict[str, Callable[[], object]], rounds: int, warmup: int,
              device: torch.device) -> dict[str, list[float]]:
    """Run every variant once per round, the order rotating from round to round; the seconds of each
    variant's rounds after the ``warmup`` first."""
    names = list(variants)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for index in range(warmup + rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed = timed(variants[name], device)
            if index >= warmup:
                seconds[name].append(elapsed)
    return seconds


def mfu(flops: float, seconds: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation: ``flops / (seconds * peak)``; None without a peak."""
    return None if not peak_tflops else flops / (seconds * peak_tflops * 1e12)


def measure_finetune(cfg: Config, ours: RABlipForConditionalGeneration, theirs: InstructBlipForConditionalGeneration,
                     device: torch.device, *, batch: int, ks: list[int], rounds: int,
                     warmup: int, peak_tflops: float | None, side: int, seed: int) -> dict:
    """Step time (median over ``rounds`` after ``warmup``), FLOPs and MFU of rablip's model at each of ``ks``
    references and of transformers' model at k = 0 (the same batch's single image), alternating rounds.
    ``k0_eval_loss``: both models' loss on the k = 0 batch in eval mode before any step (no dropout), which
    says they compute the same thing (rablip averages per example, transformers per token: close, not equal,
    when answers differ in length). ``first_loss`` of a row: its first training step's (dropout on)."""
    concat = ours.config.multi_image == "concat"
    groups = parameter_groups(ours)
    patches, queries = patches_per_image(ours), ours.config.num_query_tokens
    batches, flops, tokens = {}, {}, {}
    for k in ks:
        collated = build_collator(cfg, ours, k)(make_samples(batch, k, side, seed))
        flops[f"rablip k={k}"] = step_flops(groups, collated, patches, queries, concat)
        tokens[f"rablip k={k}"] = token_counts(collated)
        batches[f"rablip k={k}"] = to_device(collated, device)
        if k == 0:
            flops["transformers k=0"], tokens["transformers k=0"] = flops["rablip k=0"], tokens["rablip k=0"]
            batches["transformers k=0"] = to_device(single_slot(collated), device)
    models = {name: ours if name.startswith("rablip") else theirs for name in batches}
    optimizers = {"rablip": build_optimizer(ours, cfg.train), "transformers": build_optimizer(theirs, cfg.train)}
    max_norm = train_cfg_grad_norm(cfg)
    losses: dict[str, float] = {}

    def step(name: str) -> Callable[[], None]:
        model, optimizer = models[name], optimizers[name.split()[0]]
        trained = [p for p in model.parameters() if p.requires_grad]

        def run() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = model(**batches[name]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, max_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.setdefault(name, float(loss.detach()))
        return run

    eval_loss = {}
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):  # same checkpoint, same batch
        for name in ("rablip k=0", "transformers k=0"):
            eval_loss[name.split()[0]] = float(models[name].eval()(**batches[name]).loss)
    training_mode(ours)
    training_mode(theirs)
    seconds = alternate({name: step(name) for name in batches}, rounds, warmup, device)
    rows = []
    for name, times in seconds.items():
        median = statistics.median(times)
        rows.append({"model": name.split()[0], "k": int(name.split("=")[1]), "step_seconds": median,
                     "all_step_seconds": times, "flops_per_step": flops[name]["total"],
                     "flops_parts": {part: v for part, v in flops[name].items() if part != "total"},
                     "tflops_per_second": flops[name]["total"] / median / 1e12,
                     "mfu": mfu(flops[name]["total"], median, peak_tflops), "tokens_per_example": tokens[name],
                     "first_loss": losses[name]})
    optimizers.clear()  # free the optimizer states before the next sections
    return {"batch": batch, "rounds": rounds, "warmup": warmup, "multi_image": ours.config.multi_image,
            "peak_tflops": peak_tflops, "parameter_groups": vars(groups), "k0_eval_loss": eval_loss, "rows": rows}


def measure_generate(cfg: Config, ours: RABlipForConditionalGeneration, theirs: InstructBlipForConditionalGeneration,
                     device: torch.device, *, questions: int, batch: int, ks: list[int],
                     rounds: int, warmup: int, side: int, seed: int, num_beams: int = 5,
                     max_new_tokens: int = 10) -> dict:
    """Questions per second of beam-search answering (``num_beams``, ``max_new_tokens``, greedy otherwise):
    rablip's ``generate`` at each of ``ks`` references and transformers' ``generate`` on the same k = 0
    inputs, ``questions`` questions in batches of ``batch`` per round, rounds alternating."""
    kwargs = {"num_beams": num_beams, "max_new_tokens": max_new_tokens, "do_sample": False}
    inputs: dict[str, list[dict[str, torch.Tensor]]] = {}
    for k in ks:
        collator = build_collator(cfg, ours, k, mode="generate")
        samples = make_samples(questions, k, side, seed + 100)
        collated = [collator(samples[start:start + batch]) for start in range(0, questions, batch)]
        inputs[f"rablip k={k}"] = [to_device(generate_inputs(b), device) for b in collated]
        if k == 0:
            inputs["transformers k=0"] = [to_device(single_slot(b), device) for b in collated]
    ours.eval()
    theirs.eval()
    answers: dict[str, int] = {}

    def answer(name: str) -> Callable[[], None]:
        model = ours if name.startswith("rablip") else theirs

        def run() -> None:
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
                answers[name] = sum(int(model.generate(**b, **kwargs).shape[0]) for b in inputs[name])
        return run

    seconds = alternate({name: answer(name) for name in inputs}, rounds, warmup, device)
    rows = [{"model": name.split()[0], "k": int(name.split("=")[1]), "questions_per_second":
             questions / statistics.median(times), "round_seconds": times, "answers": answers[name]}
            for name, times in seconds.items()]
    return {"questions": questions, "batch": batch, "num_beams": num_beams, "max_new_tokens": max_new_tokens,
            "rounds": rounds, "warmup": warmup, "rows": rows}


def measure_kb_encoding(cfg: Config, generator: RABlipForConditionalGeneration, checkpoint: Path,
                        device: torch.device, *, items: int, batch: int,
                        side: int, seed: int) -> dict:
    """Items per second of the fusion retrieval encoder (a fresh one, ``model.fusion``'s size, on the
    generator's vision tower, query tokens and Q-Former) encoding image+text items from a real KB store
    (distinct JPEG images, 100-word passages) through :func:`rablip.retrieval.encode.encode_shard`, the
    encoding stage's own loop (decode, preprocess, tokenize, vision + Q-Former + fusion, bf16 autocast).
    One batch is encoded first as a warm-up; the time is that of all ``items`` after it."""
    encoder = build_retrieval_encoder(cfg, generator)
    encoder.to(device).eval()  # the shared modules are there already: this moves the new fusion layers
    batcher = RetrievalBatcher.from_checkpoint(checkpoint, cfg.data.qformer_max_length)
    loader = ImageLoader(None, cfg.data.on_bad_image)
    with tempfile.TemporaryDirectory(prefix="rablip-bench-gpu-kb-") as tmp:
        store = KBStore.open(build_kb_store(make_kb_items(items + batch, side, 100, seed + 200), Path(tmp) / "kb",
                                            show_progress=False))
        encode_shard(encoder, batcher, store, range(0, batch), batch, device, True, loader.load, EncodeReport())
        report = EncodeReport()
        result: dict[str, tuple] = {}

        def encode() -> None:
            result.update(encode_shard(encoder, batcher, store, range(batch, batch + items), batch, device, True,
                                       loader.load, report))

        seconds = timed(encode, device)
    embedded = sum(ids_and_rows[1].shape[0] for ids_and_rows in result.values())
    return {"items": items, "batch": batch, "seconds": seconds, "items_per_second": items / seconds,
            "embedded": embedded, "embed_dim": encoder.fusion.embed_dim, "fusion_layers": cfg.model.fusion.layers,
            "qformer_max_length": cfg.data.qformer_max_length, "vision_forwards": report.unique_images}
