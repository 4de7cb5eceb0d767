"""Non-finite losses and gradients: the run stops naming the step and the last good checkpoint and
never saves non-finite weights; with ``train.skip_nonfinite`` the step is skipped and counted."""

import pytest
import torch
from safetensors.torch import load_file

from rablip.config import load_config
from rablip.errors import RablipError
from rablip.stages.rundir import prepare_run_dir
from rablip.stages.runtime import make_accelerator
from rablip.training import trainer
from tests.training.toy_task import ToyLoss, build_task, train_toy


def toy_train(tmp_path, loss, *overrides):
    cfg = load_config(None, ["train.max_steps=8", "train.warmup_steps=2", "train.lr=0.05", "train.batch_size=8",
                             "train.save_every=3", "train.deterministic=false", "log.every=1",
                             f"run.output_dir={tmp_path / 'run'}", *overrides])
    accelerator = make_accelerator(cfg)
    run_dir = prepare_run_dir(cfg, accelerator.is_main_process)
    return train_toy(cfg, build_task(cfg, loss), accelerator, run_dir), run_dir


def saved_weights(run_dir):
    paths = sorted((run_dir / "checkpoints").glob("step-*/model.safetensors"))
    if (run_dir / "final").is_dir():
        paths.append(run_dir / "final" / "model.safetensors")
    return {str(p): load_file(str(p)) for p in paths}


def assert_all_finite(run_dir):
    for path, weights in saved_weights(run_dir).items():
        assert all(torch.isfinite(w).all() for w in weights.values()), path


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_nonfinite_step_stops_naming_step_and_last_good_checkpoint(tmp_path, kind):
    with pytest.raises(RablipError) as caught:
        toy_train(tmp_path, ToyLoss(nan_at=5, nan_kind=kind))
    message = str(caught.value)
    what = "loss" if kind == "loss" else "gradient"
    assert f"non-finite {what} at step 5" in message
    assert "step-00000003" in message and "train.skip_nonfinite=true" in message
    run_dir = tmp_path / "run"
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-00000003"]
    assert not (run_dir / "final").exists()
    assert_all_finite(run_dir)


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_skip_nonfinite_skips_counts_and_finishes(tmp_path, kind):
    state, run_dir = toy_train(tmp_path, ToyLoss(nan_at=5, nan_kind=kind), "train.skip_nonfinite=true")
    assert state.step == 8 and state.skipped_steps == 1 and state.micro_steps == 9
    assert (run_dir / "final" / "model.safetensors").is_file()
    assert_all_finite(run_dir)
    logged = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(logged) == 8 and "NaN" not in "".join(logged)


class AlwaysNaN(ToyLoss):
    def __call__(self, model, batch):
        loss, parts = super().__call__(model, batch)
        return loss * float("nan"), parts


def test_skipping_every_step_does_not_loop_forever(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "MAX_CONSECUTIVE_SKIPS", 4)
    with pytest.raises(RablipError, match="4 steps in a row had a non-finite loss"):
        toy_train(tmp_path, AlwaysNaN(), "train.skip_nonfinite=true")


def test_no_checkpoint_of_nonfinite_weights(tmp_path, monkeypatch):
    # Weights that became non-finite some other way (here: planted before the save) are refused.
    real_save = trainer._save

    def poison_then_save(accelerator, run_dir, model, optimizer, state, keep_last):
        if state.step == 6:
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = float("inf")
        return real_save(accelerator, run_dir, model, optimizer, state, keep_last)

    monkeypatch.setattr(trainer, "_save", poison_then_save)
    with pytest.raises(RablipError, match="not finite at step 6; nothing was saved"):
        toy_train(tmp_path, ToyLoss())
    run_dir = tmp_path / "run"
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-00000003"]
    assert_all_finite(run_dir)
