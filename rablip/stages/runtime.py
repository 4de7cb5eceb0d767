"""What every training stage does around its own task: start (accelerator, run dir, data, base
generator, seeds) and finish (train, turn a pre-emption into its exit code, close the process group)."""

from __future__ import annotations

from pathlib import Path

from accelerate import Accelerator

from rablip.config.schema import Config
from rablip.data.prepare import prepare_data
from rablip.models.factory import load_generator
from rablip.models.rablip import RABlipForConditionalGeneration
from rablip.training.trainer import TrainingInterrupted, TrainTask, end_distributed, make_accelerator, train
from rablip.utils.logging import get_logger
from rablip.utils.rundir import prepare_run_dir
from rablip.utils.seed import seed_everything

log = get_logger("rablip.train")
SIGNAL_EXIT = {15: 143, 2: 130}
"""Exit codes after SIGTERM / SIGINT (a checkpoint was saved first)."""


def start_stage(cfg: Config) -> tuple[Accelerator, Path, RABlipForConditionalGeneration]:
    """Accelerator, run dir, data built on first use and the base generator; rank 0 goes first so
    it writes config.yaml and builds shared files before the others read them."""
    accelerator = make_accelerator(cfg)
    with accelerator.main_process_first():
        run_dir = prepare_run_dir(cfg, accelerator.is_main_process)
        prepare_data(cfg)
        generator = load_generator(cfg)
    seed_everything(cfg.run.seed, accelerator.process_index)
    return accelerator, run_dir, generator


def finish_stage(cfg: Config, task: TrainTask, accelerator: Accelerator, run_dir: Path, done: str) -> int:
    """Train the task to the end; the exit code of the stage (143/130 when pre-empted)."""
    try:
        state = train(cfg, task, accelerator, run_dir)
    except TrainingInterrupted as stop:
        log.warning("%s", stop)
        return SIGNAL_EXIT.get(stop.signum, 1)
    finally:
        end_distributed()
    log.info("%s: %d steps, output in %s", done, state.step, run_dir / "final")
    return 0
