"""The one training loop of every stage (pre-training and fine-tuning).

A stage calls :func:`train` with its model, dataset, collate and loss functions (and an optional
evaluation), then writes its final model. The loop: deterministic data order by step, gradient accumulation,
clipping, AdamW with warm-up + cosine, periodic evaluation with best-checkpoint selection, atomic
checkpoints every ``train.save_every`` steps and on SIGTERM/SIGINT, metrics to the console,
``metrics.jsonl`` and (optionally) wandb. accelerate handles devices, bf16 on GPU and DDP/FSDP/
DeepSpeed; on CPU everything is fp32.
"""

from __future__ import annotations

import math
import shutil
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from rablip.config.schema import Config
from rablip.errors import RablipError
from rablip.training.checkpoint import (
    CHECKPOINTS,
    Shards,
    TrainerState,
    is_sharded,
    latest_checkpoint,
    load_checkpoint,
    local_tensor,
    save_checkpoint,
)
from rablip.training.metrics_log import MetricsLog
from rablip.training.optim import build_optimizer, set_lr, total_steps
from rablip.training.order import StepOrderSampler
from rablip.training.worker_errors import GuardedDataset, guarded_collate, raise_if_user_error
from rablip.utils.logging import get_logger

log = get_logger("rablip.train")

MAX_CONSECUTIVE_SKIPS = 100
"""With ``train.skip_nonfinite``, this many non-finite steps in a row stop the run (it would never end)."""

LossFn = Callable[[torch.nn.Module, dict[str, Any]], tuple[torch.Tensor, dict[str, float]]]


class TrainingInterrupted(Exception):
    """SIGTERM/SIGINT arrived; a checkpoint was saved."""

    def __init__(self, signum: int, checkpoint: Path) -> None:
        super().__init__(f"stopped by signal {signum}; checkpoint saved at {checkpoint}")
        self.signum = signum
        self.checkpoint = checkpoint


def step_seed(seed: int, rank: int, step: int) -> int:
    """Seed of torch's generator for one optimizer step of one process (dropout etc.), so a resumed
    run draws exactly what the uninterrupted one drew without restoring generator states."""
    return (seed * 1_000_003 + rank * 7_919 + step) % (2**63 - 1)


def check_free_space(run_dir: Path, model: torch.nn.Module) -> None:
    """Refuse to start when checkpoints cannot be written: their directory cannot be created, or a
    checkpoint (weights + two AdamW moments) would not fit twice on disk."""
    try:
        (run_dir / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RablipError(f"cannot create the checkpoint directory {run_dir / CHECKPOINTS}: {exc.strerror}. "
                          "Choose a writable run.output_dir.") from None
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    needed = 2 * 3 * trainable + 16 * 2**20
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise RablipError(f"not enough disk space in {run_dir}: {free / 2**20:.0f} MiB free, checkpoints need "
                          f"about {needed / 2**20:.0f} MiB. Free space or choose another run.output_dir.")


class _StopFlag:
    """Remembers SIGTERM/SIGINT so the loop can save and leave between steps."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _all_finite(accelerator: Accelerator, loss: torch.Tensor) -> bool:
    flag = torch.tensor([float(torch.isfinite(loss.detach()).all())], device=accelerator.device)
    return bool(accelerator.gather(flag).min().item() == 1.0)


def _any_process(accelerator: Accelerator, value: bool) -> bool:
    """Whether ``value`` is true on any process, so that every process takes the same branch (a
    signal may reach the ranks in different steps)."""
    flag = torch.tensor([float(value)], device=accelerator.device)
    return bool(accelerator.gather(flag).max().item() == 1.0)


def _window_means(accelerator: Accelerator, sums: dict[str, float], counts: dict[str, int]) -> dict[str, float]:
    """Means of the logged numbers over the steps of the window and over all processes (each rank's
    loss is that of its slice of the global batch; a key may be missing on some ranks or steps)."""
    gathered = gather_object([(sums, counts)]) if accelerator.num_processes > 1 else [(sums, counts)]
    total: dict[str, float] = {}
    seen: dict[str, int] = {}
    for rank_sums, rank_counts in gathered:
        for key, value in rank_sums.items():
            total[key] = total.get(key, 0.0) + value
            seen[key] = seen.get(key, 0) + rank_counts[key]
    return {key: total[key] / seen[key] for key in sorted(total)}


def clip_gradients(accelerator: Accelerator, model: torch.nn.Module, max_norm: float | None) -> float:
    """Clip the gradients to total norm ``max_norm`` (``train.max_grad_norm``; None or 0: leave them as
    they are) and return their norm before clipping."""
    return float(accelerator.clip_grad_norm_(model.parameters(), max_norm or math.inf))


def _is_better(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value > best if mode == "max" else value < best)


def train(cfg: Config, accelerator: Accelerator, run_dir: Path, model: torch.nn.Module, dataset: Dataset,
          collate: Callable[[list[Any]], dict[str, Any]], loss: LossFn,
          evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None) -> TrainerState:
    """Train ``model`` until ``train.max_steps`` (or the steps that ``train.epochs`` over ``len(dataset)``
    examples give, see :func:`rablip.training.optim.total_steps`), the last checkpoint saved; returns the
    final trainer state.

    ``dataset`` is indexed by ``(example index, epoch)`` pairs (see :class:`StepOrderSampler`);
    ``collate`` turns a list of its items into a batch; ``loss(model, batch)`` returns the loss and
    the numbers to log; ``evaluate(model)`` (optional) runs on every process and returns metrics (the
    main process's are used). The stage writes the final model itself.

    Raises :class:`TrainingInterrupted` after saving a checkpoint when SIGTERM/SIGINT arrives, and
    :class:`RablipError` on a non-finite loss (unless ``train.skip_nonfinite``).
    """
    tc = cfg.train
    main = accelerator.is_main_process
    if main:
        check_free_space(run_dir, model)
    optimizer = build_optimizer(model, tc)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)

    state = TrainerState()
    resume_from = latest_checkpoint(run_dir) if cfg.run.resume else None
    if resume_from is not None:
        state = load_checkpoint(resume_from, unwrapped, optimizer, _shards(accelerator, unwrapped))
        log.info("resumed from %s (step %d)", resume_from, state.step)
    elif cfg.run.resume:
        log.info("run.resume=true but %s holds no checkpoint: starting from step 0", run_dir)

    sampler = StepOrderSampler(len(dataset), tc.batch_size, world_size=accelerator.num_processes,
                               rank=accelerator.process_index, seed=cfg.run.seed, start=state.micro_steps)
    loader = DataLoader(GuardedDataset(dataset), batch_sampler=sampler, collate_fn=guarded_collate(collate),
                        num_workers=cfg.data.num_workers, persistent_workers=cfg.data.num_workers > 0)
    batches = iter(loader)
    metrics = MetricsLog(cfg, run_dir, main, start_step=state.step)
    global_batch = tc.batch_size * accelerator.num_processes * tc.grad_accum
    max_steps = total_steps(tc, len(dataset), accelerator.num_processes)
    if tc.epochs > 0:
        log.info("train.epochs=%g over %d examples, global batch %d: %d optimizer steps", tc.epochs, len(dataset),
                 global_batch, max_steps)
    progress = tqdm(total=max_steps, initial=state.step, disable=not main, desc="train", dynamic_ncols=True)
    window: dict[str, float] = {}
    window_counts: dict[str, int] = {}
    window_steps, window_start = 0, time.perf_counter()
    consecutive_skips = 0

    def stop_here(stop: _StopFlag) -> None:
        """Save and leave when any process got SIGTERM/SIGINT."""
        if _any_process(accelerator, stop.signum is not None):
            path = _save(accelerator, run_dir, unwrapped, optimizer, state, tc.keep_last)
            metrics.close()
            raise TrainingInterrupted(stop.signum or signal.SIGTERM, path)

    with _StopFlag() as stop, progress:  # the bar closes before an error's message, not at interpreter exit
        while state.step < max_steps:
            lr = set_lr(optimizer, tc, state.step, max_steps)
            torch.manual_seed(step_seed(cfg.run.seed, accelerator.process_index, state.step))
            model.train()
            step_logs: dict[str, float] = {}
            finite = True
            for micro in range(tc.grad_accum):
                batch = _to_device(raise_if_user_error(next(batches)), accelerator.device)
                state.micro_steps += 1
                sync = nullcontext() if micro == tc.grad_accum - 1 else accelerator.no_sync(model)
                with sync, accelerator.autocast():
                    loss_value, parts = loss(model, batch)
                    finite = finite and _all_finite(accelerator, loss_value)
                    if finite:
                        accelerator.backward(loss_value / tc.grad_accum)
                for key, number in {"loss": float(loss_value.detach()), **parts}.items():
                    step_logs[key] = step_logs.get(key, 0.0) + number / tc.grad_accum

            what = "loss"
            if finite:
                # A finite loss can still have non-finite gradients, which would make every weight NaN.
                # The norm is of the synchronised gradients, so every process decides alike.
                grad_norm = clip_gradients(accelerator, model, tc.max_grad_norm)
                finite, what = math.isfinite(grad_norm), "gradient"
                if tc.max_grad_norm:
                    step_logs["grad_norm"] = grad_norm
            if not finite:
                optimizer.zero_grad(set_to_none=True)
                if not tc.skip_nonfinite:
                    last = latest_checkpoint(run_dir)
                    raise RablipError(
                        f"non-finite {what} at step {state.step + 1}; training stopped and nothing was saved. "
                        f"Last good checkpoint: {last or 'none'}. Lower train.lr, check the data, or set "
                        "train.skip_nonfinite=true to skip such steps.")
                state.skipped_steps += 1
                consecutive_skips += 1
                log.warning("non-finite %s at step %d skipped (%d so far)", what, state.step + 1, state.skipped_steps)
                if consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
                    raise RablipError(
                        f"{consecutive_skips} steps in a row had a non-finite loss or gradient (up to step "
                        f"{state.step + 1}); training stopped. Last good checkpoint: "
                        f"{latest_checkpoint(run_dir) or 'none'}. Lower train.lr or check the data.")
                stop_here(stop)
                continue
            consecutive_skips = 0

            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.samples_seen += global_batch
            progress.update(1)

            for key, value in step_logs.items():
                window[key] = window.get(key, 0.0) + value
                window_counts[key] = window_counts.get(key, 0) + 1
            window_steps += 1
            if state.step % cfg.log.every == 0 or state.step == max_steps:
                elapsed = time.perf_counter() - window_start
                record = {"step": state.step, "lr": lr, "samples_per_sec": window_steps * global_batch / elapsed,
                          **_window_means(accelerator, window, window_counts)}
                metrics.write(record)
                progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}",
                                     sps=f"{record['samples_per_sec']:.1f}")
                window, window_counts, window_steps, window_start = {}, {}, 0, time.perf_counter()

            evaluated = False
            if evaluate is not None and tc.eval_every and state.step % tc.eval_every == 0:
                _evaluate(cfg, evaluate, model, state, metrics, accelerator)
                evaluated = True
            if state.step % tc.save_every == 0 or evaluated and state.best_step == state.step:
                _save(accelerator, run_dir, unwrapped, optimizer, state, tc.keep_last)
            stop_here(stop)

    if evaluate is not None and (not tc.eval_every or max_steps % tc.eval_every):
        _evaluate(cfg, evaluate, model, state, metrics, accelerator)
    _save(accelerator, run_dir, unwrapped, optimizer, state, tc.keep_last)
    metrics.close()
    return state


def _evaluate(cfg: Config, evaluate: Callable[[torch.nn.Module], dict[str, float]], model: torch.nn.Module, state: TrainerState, metrics: MetricsLog,
              accelerator: Accelerator) -> None:
    model.eval()
    with torch.no_grad():
        results = evaluate(accelerator.unwrap_model(model))
    model.train()
    if accelerator.num_processes > 1:
        # Every process must agree on the best step: it decides which processes save a checkpoint.
        shared = [results]
        broadcast_object_list(shared, from_process=0)
        results = shared[0]
    record = {"step": state.step, **{f"eval/{k}": v for k, v in results.items()}}
    metrics.write(record)
    state.history.append(record)
    name = cfg.train.best_metric
    if name and name in results and math.isfinite(results[name]):
        if _is_better(results[name], state.best_metric, cfg.train.best_mode):
            state.best_metric, state.best_step = float(results[name]), state.step
    log.info("eval at step %d: %s", state.step, ", ".join(f"{k}={v:.4g}" for k, v in results.items()))


def _assert_finite_weights(model: torch.nn.Module, step: int, accelerator: Accelerator | None = None) -> None:
    """Raise when a trainable weight is not finite; with ``accelerator`` (sharded weights, every process
    checks its slices) every process raises when any found one."""
    bad = next((name for name, param in model.named_parameters()
                if param.requires_grad and not torch.isfinite(local_tensor(param)).all()), None)
    if accelerator is not None and _any_process(accelerator, bad is not None):
        bad = bad or "(a slice on another process)"
    if bad is not None:
        raise RablipError(f"parameter {bad} is not finite at step {step}; nothing was saved. "
                          "Lower train.lr or check the data.")


def _shards(accelerator: Accelerator, model: torch.nn.Module) -> Shards | None:
    """With FSDP2, each process checkpoints its own slices of the weights and optimizer state."""
    if not is_sharded(model):
        return None
    return Shards(accelerator.process_index, accelerator.num_processes, accelerator.wait_for_everyone)


def _save(accelerator: Accelerator, run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
          state: TrainerState, keep_last: int) -> Path:
    path = run_dir / "checkpoints"
    shards = _shards(accelerator, model)
    if shards is not None:  # every process writes its slices
        _assert_finite_weights(model, state.step, accelerator)
        path = save_checkpoint(run_dir, model, optimizer, state, keep_last, shards)
    elif accelerator.is_main_process:
        _assert_finite_weights(model, state.step)
        path = save_checkpoint(run_dir, model, optimizer, state, keep_last)
    accelerator.wait_for_everyone()
    return path
