"""Schedule keys: the warm-up's start value, the absolute floor train.min_lr, train.epochs -> optimizer
steps, and train.max_grad_norm null (no clipping)."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from rablip.config import load_config
from rablip.config.schema import TrainConfig
from rablip.errors import ConfigError
from rablip.stages.rundir import prepare_run_dir
from rablip.stages.runtime import make_accelerator
from rablip.training.optim import build_optimizer, set_lr, total_steps
from rablip.training.trainer import clip_gradients
from tests.training.toy_task import build_task, train_toy


def lrs(cfg: TrainConfig, steps: list[int], max_steps: int | None = None) -> list[float]:
    optimizer = build_optimizer(torch.nn.Linear(2, 2), cfg)
    return [set_lr(optimizer, cfg, step, max_steps) for step in steps]


def test_release_schedule_warms_up_from_its_start_value_and_ends_at_the_absolute_floor():
    # The release's WebQA schedule: 1e-7 -> 1e-6 over 1,000 steps, cosine to 5e-8.
    cfg = TrainConfig(lr=1e-6, warmup_steps=1000, warmup_start_lr=1e-7, min_lr=5e-8, min_lr_ratio=0.5,
                      max_steps=5000)
    first, mid_warmup, last_warmup, peak, half, end, after = lrs(cfg, [0, 499, 999, 1000, 3000, 5000, 6000])
    assert first == pytest.approx(1e-7 + 9e-7 / 1000, rel=1e-9)
    assert mid_warmup == pytest.approx(1e-7 + 9e-7 * 500 / 1000, rel=1e-9)
    assert last_warmup == pytest.approx(1e-6, rel=1e-9) and peak == pytest.approx(1e-6, rel=1e-9)
    assert half == pytest.approx(5e-8 + (1e-6 - 5e-8) * 0.5, rel=1e-9)  # cosine midway
    assert end == pytest.approx(5e-8, rel=1e-9) and after == pytest.approx(5e-8, rel=1e-9)  # min_lr wins
    quarter = lrs(cfg, [2000])[0]
    assert quarter == pytest.approx(5e-8 + (1e-6 - 5e-8) * 0.5 * (1 + math.cos(math.pi / 4)), rel=1e-9)


def test_defaults_keep_the_old_schedule_exactly():
    cfg = TrainConfig(lr=0.3, warmup_steps=10, max_steps=100, min_lr_ratio=0.1)
    old = [0.3 * ((s + 1) / 10 if s < 10 else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (s - 10) / 90))))
           for s in range(120)]
    assert lrs(cfg, list(range(120))) == old  # bit-identical, warm-up from 0 and floor lr x min_lr_ratio


def test_epochs_give_the_steps_for_one_and_two_processes():
    cfg = TrainConfig(epochs=2, max_steps=0, batch_size=4)
    assert total_steps(cfg, 30, processes=1) == 15  # ceil(2 x 30 / 4)
    assert total_steps(cfg, 30, processes=2) == 8  # ceil(2 x 30 / 8)
    assert total_steps(TrainConfig(epochs=2, max_steps=0, batch_size=4, grad_accum=3), 30, processes=2) == 3
    assert total_steps(TrainConfig(epochs=0.1, max_steps=0, batch_size=3), 30, processes=1) == 1
    assert total_steps(TrainConfig(epochs=10, max_steps=0, batch_size=2), 7, processes=2) == 18  # ceil(70 / 4)
    assert total_steps(TrainConfig(max_steps=123), 30, processes=2) == 123


def toy_run(tmp_path, *overrides):
    cfg = load_config(None, ["train.warmup_steps=2", "train.lr=0.05", "train.batch_size=8", "train.save_every=1000",
                             "train.deterministic=false", "log.every=1", f"run.output_dir={tmp_path / 'run'}",
                             *overrides])
    accelerator = make_accelerator(cfg)
    run_dir = prepare_run_dir(cfg, accelerator.is_main_process)
    state = train_toy(cfg, build_task(cfg), accelerator, run_dir)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return state, [r for r in records if "lr" in r]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_training_by_epochs_runs_the_derived_steps_and_logs_them(tmp_path):
    handler = _Records()
    logging.getLogger("rablip.train").addHandler(handler)
    try:
        state, records = toy_run(tmp_path, "train.epochs=1.5", "train.max_steps=0", "train.min_lr=0.01")
    finally:
        logging.getLogger("rablip.train").removeHandler(handler)
    assert state.step == 12  # ceil(1.5 x 64 toy examples / 8)
    assert [r["step"] for r in records] == list(range(1, 13))
    assert records[-1]["lr"] == pytest.approx(0.01 + 0.04 * 0.5 * (1 + math.cos(math.pi * 9 / 10)))
    assert any("12 optimizer steps" in m and "64 examples" in m for m in handler.messages)


@pytest.mark.parametrize("norm", [None, 0.0])
def test_no_clipping_leaves_a_huge_gradient_as_it_is(norm):
    accelerator = make_accelerator(load_config(None, ["train.deterministic=false"]))
    model = torch.nn.Linear(3, 2)
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e6)
    before = [p.grad.clone() for p in model.parameters()]
    norm_seen = clip_gradients(accelerator, model, norm)
    assert norm_seen == pytest.approx(1e6 * math.sqrt(8), rel=1e-6)
    assert all(torch.equal(p.grad, b) for p, b in zip(model.parameters(), before, strict=True))
    clip_gradients(accelerator, model, 1.0)  # while a norm clips it to that norm
    assert float(torch.cat([p.grad.flatten() for p in model.parameters()]).norm()) == pytest.approx(1.0, rel=1e-5)


def test_null_clipping_trains_and_logs_no_gradient_norm(tmp_path):
    cfg = load_config(None, ["train.max_grad_norm=null"])
    assert cfg.train.max_grad_norm is None
    state, records = toy_run(tmp_path, "train.max_steps=3", "train.max_grad_norm=null")
    assert state.step == 3 and all("grad_norm" not in r for r in records)
    _, clipped = toy_run(tmp_path / "clipped", "train.max_steps=3")
    assert all("grad_norm" in r for r in clipped)


@pytest.mark.parametrize(("overrides", "keys"), [
    (["train.epochs=2"], ["train.epochs", "train.max_steps"]),  # both set (max_steps defaults to 1000)
    (["train.epochs=-1"], ["train.epochs"]),
    (["train.max_steps=0"], ["train.max_steps"]),  # neither set
    (["train.lr=1e-6", "train.min_lr=2e-6"], ["train.min_lr"]),  # a floor above the peak
    (["train.min_lr=-1e-8"], ["train.min_lr"]),
    (["train.lr=1e-6", "train.warmup_start_lr=1e-5"], ["train.warmup_start_lr"]),
    (["train.warmup_start_lr=-1e-7"], ["train.warmup_start_lr"]),
    (["train.max_grad_norm=-1"], ["train.max_grad_norm"]),
])
def test_bad_schedule_values_are_config_errors_naming_the_key(overrides, keys):
    with pytest.raises(ConfigError) as caught:
        load_config(None, overrides)
    assert all(key in str(caught.value) for key in keys), str(caught.value)


def test_epochs_with_max_steps_zero_is_valid():
    cfg = load_config(None, ["train.epochs=10", "train.max_steps=0"]).train
    assert (cfg.epochs, cfg.max_steps) == (10, 0)


def test_the_webqa_finetune_config_holds_the_releases_schedule():
    from pathlib import Path

    config = Path(__file__).resolve().parents[2] / "configs" / "experiment" / "webqa_finetune.yaml"
    t = load_config(str(config), ["data.root=/tmp/webqa"]).train
    assert (t.lr, t.warmup_steps, t.warmup_start_lr, t.min_lr, t.weight_decay) == (1e-6, 1000, 1e-7, 5e-8, 0.01)
    assert (t.max_grad_norm, t.batch_size, t.epochs, t.max_steps) == (None, 2, 10, 0)


def test_two_processes_split_an_epoch_into_half_the_steps(tmp_path):
    from tests.training.launch import TOY, metrics_lines, run

    out = tmp_path / "two"
    result = run(TOY, ["train.epochs=1", "train.max_steps=0", "train.batch_size=4", "train.warmup_steps=2",
                       "train.save_every=1000", "log.every=1", f"run.output_dir={out}"], processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["step"] for r in metrics_lines(out)] == list(range(1, 9))  # ceil(64 examples / (4 x 2))
    assert "8 optimizer steps" in result.stderr
