"""What every stage does around its own work: the accelerator, the run directory, seeding, and the
exit code of a run that was stopped by a signal.

A stage reads ``start_run(cfg)`` -> its model (main process first) -> ``seed`` -> its data and the
loop -> ``write_final`` (or ``interrupted`` when a signal stopped the loop).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, FullyShardedDataParallelPlugin

from rablip.config.schema import Config
from rablip.data.prepare import prepare_data
from rablip.errors import ConfigError
from rablip.stages.rundir import prepare_run_dir
from rablip.training.checkpoint import full_weights, write_final_dir
from rablip.training.trainer import TrainingInterrupted
from rablip.utils.dist import end_distributed
from rablip.utils.logging import get_logger
from rablip.utils.seed import seed_everything

log = get_logger("rablip.train")
SIGNAL_EXIT = {15: 143, 2: 130}
"""Exit codes after SIGTERM / SIGINT (a checkpoint was saved first)."""


def make_accelerator(cfg: Config) -> Accelerator:
    """accelerate for devices and mixed precision: bf16 on GPU with ``auto``, fp32 on CPU.

    With ``train.deterministic`` kernels are deterministic (some CPU backward kernels accumulate in
    thread order otherwise, and a resumed run would drift from the uninterrupted one).
    """
    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    precision = cfg.train.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    # A batch can leave parts of the model unused (e.g. no image item in a rank's pre-training batch); DDP must
    # then not wait for their gradients, or the ranks' gradient reductions fall out of step and hang.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=cfg.train.find_unused_parameters)
    accelerator = Accelerator(mixed_precision=precision, gradient_accumulation_steps=1, kwargs_handlers=[ddp])
    _fsdp_on_cpu(accelerator)
    if accelerator.distributed_type == DistributedType.FSDP and not accelerator.is_fsdp2:
        raise ConfigError("rablip trains with FSDP2 only: set fsdp_version: 2 in the accelerate config "
                          "(configs/accelerate/fsdp*.yaml)")
    return accelerator


def _fsdp_on_cpu(accelerator: Accelerator) -> None:
    """Turn FSDP on for CPU ranks (gloo) launched with an FSDP config: accelerate enables FSDP on
    accelerators only and would silently run DDP, though torch's FSDP2 runs on CPU. This sets what
    accelerate sets for FSDP on GPUs (its plugin from the FSDP_* variables of the launch)."""
    if accelerator.distributed_type != DistributedType.MULTI_CPU or \
            os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return
    accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()
    accelerator.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # AcceleratorState() re-reads it


def start_run(cfg: Config) -> tuple[Accelerator, Path]:
    """The accelerator and the run directory: the main process first writes ``config.yaml`` and checks
    the data files, then the others (which may read them). Stages load their base model next (also
    main process first) and then seed every generator with :func:`seed`."""
    accelerator = make_accelerator(cfg)
    with accelerator.main_process_first():
        run_dir = prepare_run_dir(cfg, accelerator.is_main_process)
        prepare_data(cfg)
    return accelerator, run_dir


def seed(cfg: Config, accelerator: Accelerator) -> None:
    """Seed python, numpy and torch with ``run.seed`` + this process's rank."""
    seed_everything(cfg.run.seed, accelerator.process_index)


def interrupted(stop: TrainingInterrupted) -> int:
    """The exit code of a run stopped by a signal (its checkpoint was saved): 143 / 130."""
    log.warning("%s", stop)
    end_distributed()
    return SIGNAL_EXIT.get(stop.signum, 1)


def write_final(accelerator: Accelerator, run_dir: Path, save: Callable[[Path], None], done: str, steps: int) -> int:
    """The main process writes ``run_dir/final`` with ``save(directory)`` (atomically: see
    :func:`rablip.training.checkpoint.write_final_dir`); every process waits, closes the process group
    and returns exit code 0. Models that FSDP2 shards are gathered first, so ``save`` writes full weights."""
    with ExitStack() as gathered:
        for model in accelerator._models:  # the prepared models
            gathered.enter_context(full_weights(model, accelerator.is_main_process))
        if accelerator.is_main_process:
            write_final_dir(run_dir / "final", save)
        accelerator.wait_for_everyone()
    end_distributed()
    log.info("%s: %d steps, output in %s", done, steps, run_dir / "final")
    return 0
