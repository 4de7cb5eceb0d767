"""Data order, learning-rate schedule and parameter groups."""

import pytest
import torch

from rablip.config.schema import TrainConfig
from rablip.training.optim import build_optimizer, lr_factor, parameter_groups
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
