"""Trainable module groups by config, parameter counts, precision and gradient checkpointing switches."""

from __future__ import annotations

import pytest
import torch

from rablip.errors import ConfigError
from rablip.models import RABlipForConditionalGeneration
from rablip.models.freezing import (
    apply_precision,
    is_checkpointing,
    parameter_counts,
    set_gradient_checkpointing,
)


def test_counts_and_overridden_groups(tiny_t5_dir):
    model = RABlipForConditionalGeneration.from_pretrained(
        tiny_t5_dir, trainable_modules=["qformer", "language_model"]
    )
    counts = parameter_counts(model)
    assert counts["all"]["total"] == sum(p.numel() for p in model.parameters())
    assert counts["vision_model"]["trainable"] == 0
    assert counts["language_model"]["trainable"] == counts["language_model"]["total"] > 0
    assert counts["query_tokens"]["trainable"] == 0
    with pytest.raises(ConfigError, match="trainable_modules"):
        RABlipForConditionalGeneration.from_pretrained(tiny_t5_dir, trainable_modules=["qformers"])


def test_precision_on_cpu_and_checkpointing_switch(tiny_t5_dir):
    model = RABlipForConditionalGeneration.from_pretrained(tiny_t5_dir)
    assert apply_precision(model, "cpu") == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    set_gradient_checkpointing(model, language_model=True, qformer=True)
    assert is_checkpointing(model.language_model) and is_checkpointing(model.qformer)
    set_gradient_checkpointing(model, language_model=False, qformer=False)
    assert not is_checkpointing(model.language_model)
