"""Which modules train, parameter counts, precision and gradient checkpointing, all by config.

Module groups are the names in :data:`rablip.models.config.MODULE_GROUPS`; ``slot_embeddings``
covers RA-BLIP's slot type and position tables (``slot_position_embeds`` in per_slot mode,
``patch_position_embeds`` in concat mode). The LLaVA family's parts map onto the same groups
(``model.vision_tower`` -> vision_model, ``model.multi_modal_projector`` -> language_projection,
``model.language_model`` + ``lm_head`` -> language_model); LoRA adapters form the group ``lora``.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

_GROUP_PREFIXES = {
    # InstructBLIP family names first, then the LLaVA family's (transformers' LlavaForConditionalGeneration)
    "vision_model": ("vision_model.", "model.vision_tower."),
    "query_tokens": ("query_tokens",),
    "qformer": ("qformer.",),
    "language_projection": ("language_projection.", "model.multi_modal_projector."),
    "language_model": ("language_model.", "model.language_model.", "lm_head.weight"),
    "slot_embeddings": ("slot_type_embeds", "slot_position_embeds", "patch_position_embeds"),
}

LORA_GROUP = "lora"
"""The group of the LoRA adapter weights peft adds to the LLM (``model.lora``, :mod:`rablip.models.lora`):
they train whenever they exist, and a trainable-only checkpoint saves them apart, as peft's adapter files."""


def group_of(parameter_name: str) -> str:
    """The module group a parameter (or state-dict key) belongs to (``lora`` for LoRA adapter weights)."""
    if ".lora_" in parameter_name:
        return LORA_GROUP
    for group, prefixes in _GROUP_PREFIXES.items():
        if parameter_name.startswith(prefixes):
            return group
    raise KeyError(f"parameter {parameter_name!r} belongs to no module group")


def is_trainable_key(parameter_name: str, trainable_modules: list[str]) -> bool:
    """Whether a parameter / state-dict key is in one of the trainable module groups (LoRA adapters always are)."""
    group = group_of(parameter_name)
    return group == LORA_GROUP or group in trainable_modules


def apply_trainable_modules(model: nn.Module) -> None:
    """Set ``requires_grad`` from ``model.config.trainable_modules``; a frozen vision tower goes to eval mode."""
    trainable = model.config.trainable_modules
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(is_trainable_key(name, trainable))
    if "vision_model" not in trainable:
        model.vision_model.eval()


def parameter_counts(model: nn.Module) -> dict[str, dict[str, int]]:
    """Total and trainable parameter counts per module group (and ``all``), logged at INFO."""
    counts: dict[str, dict[str, int]] = {}
    for name, parameter in model.named_parameters():
        for key in (group_of(name), "all"):
            entry = counts.setdefault(key, {"total": 0, "trainable": 0})
            entry["total"] += parameter.numel()
            entry["trainable"] += parameter.numel() if parameter.requires_grad else 0
    for group, entry in counts.items():
        logger.info("parameters %-20s total %12d trainable %12d", group, entry["total"], entry["trainable"])
    return counts


def weights_dtype(name: str, mixed_precision: str) -> torch.dtype:
    """The dtype ``model.dtype`` = ``name`` names; ``auto``: bf16 when ``train.mixed_precision`` resolves to
    bf16 (``bf16``, or ``auto`` on a GPU with bf16), else float32."""
    if name != "auto":
        return getattr(torch, name)
    bf16 = mixed_precision == "bf16" or (
        mixed_precision == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return torch.bfloat16 if bf16 else torch.float32


def keep_trainable_float32(model: nn.Module) -> int:
    """Cast every trainable (``requires_grad``) parameter that is not float32 to float32, in place: the
    optimizer's master weights, whatever dtype the frozen weights were loaded in. Returns how many were cast."""
    cast = 0
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
            cast += 1
    return cast


def is_checkpointing(part: nn.Module) -> bool:
    """Whether gradient (activation) checkpointing is on for a transformers model."""
    if hasattr(type(part), "is_activation_checkpointing"):
        return bool(part.is_activation_checkpointing)
    return bool(part.is_gradient_checkpointing)


def set_gradient_checkpointing(model: nn.Module, language_model: bool, qformer: bool) -> None:
    """Switch gradient checkpointing of the LLM and of the Q-Former on or off."""
    for enabled, part in ((language_model, model.language_model), (qformer, getattr(model, "qformer", None))):
        if part is None:  # the LLaVA family has no Q-Former
            continue
        # transformers 5 renamed the switches to activation_checkpointing_*; accept both spellings
        if enabled:
            if hasattr(part, "activation_checkpointing_enable"):
                part.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                part.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        elif is_checkpointing(part):
            disable = getattr(part, "activation_checkpointing_disable", None) or part.gradient_checkpointing_disable
            disable()
