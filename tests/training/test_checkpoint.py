"""Checkpoints: atomic, pruned, restoring weights, optimizer and RNG exactly."""

import random

import numpy as np
import pytest
import torch

from rablip.errors import RablipError
from rablip.training.checkpoint import (
    TrainerState,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)


def tiny():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    model[0].bias.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    return model, optimizer


def step(model, optimizer):
    loss = model(torch.randn(5, 3)).pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def test_round_trip_continues_identically(tmp_path):
    model, optimizer = tiny()
    step(model, optimizer)
    save_checkpoint(tmp_path, model, optimizer, TrainerState(step=1), keep_last=2)
    step(model, optimizer)
    reference = [p.clone() for p in model.parameters()]
    draws = (random.random(), np.random.rand(), torch.rand(1))

    model2, optimizer2 = tiny()
    state = load_checkpoint(latest_checkpoint(tmp_path), model2, optimizer2)
    assert state.step == 1
    step(model2, optimizer2)
    assert all(torch.equal(a, b) for a, b in zip(reference, model2.parameters()))
    assert (random.random(), np.random.rand(), torch.rand(1)) == draws


def test_only_trainable_weights_saved(tmp_path):
    from safetensors.torch import load_file

    model, optimizer = tiny()
    path = save_checkpoint(tmp_path, model, optimizer, TrainerState(step=3), keep_last=1)
    assert set(load_file(str(path / "model.safetensors"))) == {"0.weight", "1.weight", "1.bias"}
    assert not list(path.glob("*.pt")) and not list(path.glob("*.bin"))


def test_prune_keeps_last_and_best(tmp_path):
    model, optimizer = tiny()
    for s in (1, 2, 3, 4):
        save_checkpoint(tmp_path, model, optimizer, TrainerState(step=s, best_step=2), keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002", "step-00000003", "step-00000004"]


def test_incomplete_checkpoint_is_ignored(tmp_path):
    model, optimizer = tiny()
    save_checkpoint(tmp_path, model, optimizer, TrainerState(step=1), keep_last=3)
    broken = tmp_path / "checkpoints" / "step-00000002"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path).name == "step-00000001"


def test_checkpoint_of_other_model_refused(tmp_path):
    model, optimizer = tiny()
    path = save_checkpoint(tmp_path, model, optimizer, TrainerState(step=1), keep_last=1)
    other = torch.nn.Linear(3, 1)
    with pytest.raises(RablipError, match="missing"):
        load_checkpoint(path, other, None)
