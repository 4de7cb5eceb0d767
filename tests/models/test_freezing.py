"""Trainable module groups by config, parameter counts, precision and gradient checkpointing switches."""

from __future__ import annotations

import pytest
import torch

from rablip.errors import ConfigError
from rablip.models import RABlipForConditionalGeneration
from rablip.models.freezing import (
    is_checkpointing,
    keep_trainable_float32,
    parameter_counts,
    set_gradient_checkpointing,
    weights_dtype,
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


def test_weights_dtype_follows_the_run_precision():
    assert weights_dtype("auto", "bf16") == torch.bfloat16
    assert weights_dtype("auto", "no") == torch.float32
    expected = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    assert weights_dtype("auto", "auto") == expected
    assert weights_dtype("float16", "bf16") == torch.float16
    assert weights_dtype("float32", "bf16") == torch.float32


def test_bf16_load_keeps_frozen_weights_bf16_and_trainable_ones_float32(tiny_t5_dir, tmp_path):
    model = RABlipForConditionalGeneration.from_pretrained(tiny_t5_dir, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for name, p in model.named_parameters() if name != "query_tokens")
    cast = keep_trainable_float32(model)
    assert cast > 0 and keep_trainable_float32(model) == 0
    for name, parameter in model.named_parameters():
        assert parameter.dtype == (torch.float32 if parameter.requires_grad else torch.bfloat16), name
    # trained float32 weights overlaid on a bf16 base keep every bit (no round trip through bf16)
    with torch.no_grad():
        for parameter in model.qformer.parameters():
            parameter.add_(torch.rand_like(parameter) * 1e-3)
    model.save_pretrained(str(tmp_path / "trained"), trainable_only=True)
    again = RABlipForConditionalGeneration.from_pretrained(str(tmp_path / "trained"), dtype=torch.bfloat16)
    for (name, mine), theirs in zip(model.qformer.named_parameters(), again.qformer.parameters(), strict=True):
        assert theirs.dtype == torch.float32 and torch.equal(mine, theirs), name
    assert next(again.language_model.parameters()).dtype == torch.bfloat16


def test_checkpointing_switch(tiny_t5_dir):
    model = RABlipForConditionalGeneration.from_pretrained(tiny_t5_dir)
    set_gradient_checkpointing(model, language_model=True, qformer=True)
    assert is_checkpointing(model.language_model) and is_checkpointing(model.qformer)
    set_gradient_checkpointing(model, language_model=False, qformer=False)
    assert not is_checkpointing(model.language_model)
    set_gradient_checkpointing(model, language_model=False, qformer=True)
    assert is_checkpointing(model.qformer) and not is_checkpointing(model.language_model)


def test_load_generator_reads_dtype_and_checkpointed_parts(tiny_t5_dir):
    from rablip.config.load import load_config
    from rablip.models.factory import load_generator

    cfg = load_config(None, [f"model.checkpoint={tiny_t5_dir}", "model.dtype=bfloat16",
                             "model.gradient_checkpointing=[qformer]"])
    model = load_generator(cfg, for_training=True)
    assert model.language_model.shared.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.qformer.parameters())
    assert is_checkpointing(model.qformer) and not is_checkpointing(model.language_model)
    with pytest.raises(Exception, match="model.gradient_checkpointing"):
        load_config(None, ["model.gradient_checkpointing=[vision]"])
