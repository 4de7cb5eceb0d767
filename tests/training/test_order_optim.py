"""Data order, learning-rate schedule and parameter groups."""

import pytest
import torch

from rablip.config.schema import ConfigValueError, TrainConfig
from rablip.training.optim import build_optimizer, lr_factor, parameter_groups, set_lr
from rablip.training.order import StepOrderSampler


def test_order_is_a_function_of_the_step():
    a = StepOrderSampler(50, 4, seed=3)
    b = StepOrderSampler(50, 4, seed=3, start=7)
    first = [batch for _, batch in zip(range(20), a)]
    assert next(iter(b)) == first[7]


def test_epoch_covers_examples_once_and_reshuffles():
    sampler = StepOrderSampler(12, 4, seed=0)
    epoch0 = [i for step in range(3) for i, _ in sampler.batch_at(step)]
    epoch1 = [i for step in range(3, 6) for i, _ in sampler.batch_at(step)]
    assert sorted(epoch0) == list(range(12)) and sorted(epoch1) == list(range(12)) and epoch0 != epoch1
    assert {e for _, e in sampler.batch_at(3)} == {1}


def test_ranks_split_the_global_batch():
    one = StepOrderSampler(40, 8, seed=1)
    r0 = StepOrderSampler(40, 4, world_size=2, rank=0, seed=1)
    r1 = StepOrderSampler(40, 4, world_size=2, rank=1, seed=1)
    for step in range(12):
        assert one.batch_at(step) == r0.batch_at(step) + r1.batch_at(step)


def test_too_few_examples():
    with pytest.raises(ValueError, match="batch_size"):
        StepOrderSampler(3, 4)


def test_lr_schedule():
    assert lr_factor(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(10, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100, 0.1) == pytest.approx(0.55)
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)
    values = [lr_factor(s, 10, 100, 0.0) for s in range(10, 101)]
    assert all(x >= y for x, y in zip(values, values[1:]))


def test_decay_groups():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    model[2].weight.requires_grad_(False)
    decay, no_decay = parameter_groups(model, 0.1)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0.0
    optimizer = build_optimizer(model, TrainConfig(lr=0.01, weight_decay=0.1))
    assert optimizer.param_groups[0]["weight_decay"] == 0.1


class _Generatorish(torch.nn.Module):
    """Parameters named like the generator's module groups."""

    def __init__(self) -> None:
        super().__init__()
        self.qformer = torch.nn.Linear(4, 4)
        self.language_model = torch.nn.Linear(4, 4)


def test_lr_scale_gives_a_module_group_its_own_learning_rate_at_every_step():
    model = _Generatorish()
    cfg = TrainConfig(lr=0.01, warmup_steps=0, max_steps=10, lr_scale={"language_model": 0.1})
    optimizer = build_optimizer(model, cfg)
    lm = {id(p) for p in model.language_model.parameters()}
    for step in (0, 5):
        lr = set_lr(optimizer, cfg, step)
        for group in optimizer.param_groups:
            in_lm = {id(p) for p in group["params"]} <= lm
            assert group["lr"] == pytest.approx(lr * (0.1 if in_lm else 1.0))
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 4


def test_lr_scale_leaves_frozen_modules_alone_and_reaches_wrapped_modules():
    model = _Generatorish()
    model.language_model.requires_grad_(False)
    groups = parameter_groups(model, 0.0, {"language_model": 0.1})
    assert all(g["lr_scale"] == 1.0 for g in groups if g["params"])
    wrapper = torch.nn.Module()
    wrapper.encoder = _Generatorish()
    scaled = [g for g in parameter_groups(wrapper, 0.0, {"qformer": 0.5}) if g["lr_scale"] == 0.5]
    assert {id(p) for g in scaled for p in g["params"]} == {id(p) for p in wrapper.encoder.qformer.parameters()}
    with pytest.raises(ConfigValueError, match="not one of"):
        TrainConfig(lr_scale={"llm": 0.1})
    with pytest.raises(ConfigValueError, match="not one of"):
        TrainConfig(lr_scale={"fusion": 0.1})
