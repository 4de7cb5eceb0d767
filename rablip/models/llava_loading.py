"""Strict loading of LLaVA generator checkpoints (the LLaVA family's :mod:`rablip.models.loading`).

Three kinds of checkpoint dir load through :func:`load_llava_pretrained`:

- a transformers LLaVA dir (``model_type: llava``), as ``llava-hf/llava-1.5-7b-hf`` is laid out
  (config.json + safetensors, possibly sharded, the tokenizer and a ``CLIPImageProcessor``);
- a full rablip LLaVA dir (``model_type: rablip_llava`` + safetensors weights);
- a trainable-only rablip LLaVA dir (``rablip_llava`` with ``base_checkpoint`` set), holding only the
  module groups that train, and, when the LLM was fine-tuned with LoRA, peft's adapter files
  (``adapter_model.safetensors`` + ``adapter_config.json``), merged into the LLM on load.

Every missing, unexpected or misshapen weight is an error listing the keys (LLaVA has no
expected-missing weights). Only safetensors and JSON are read.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from rablip.models.freezing import apply_trainable_modules
from rablip.models.llava_config import RABLIP_LLAVA_FIELDS, RablipLlavaConfig, llava_config_from_transformers
from rablip.models.loading import (
    FULL_WEIGHTS_FILES,
    CheckpointError,
    _load_with_transformers,
    overlay_trainable,
    read_config_dict,
    resolve_base_checkpoint,
)

logger = logging.getLogger(__name__)

#: ``model_type`` values of the LLaVA family's checkpoint dirs.
LLAVA_MODEL_TYPES = ("llava", RablipLlavaConfig.model_type)
_MAX_BASE_DEPTH = 4


def llava_checkpoint_kind(path: Path, config_dict: dict[str, Any]) -> str:
    """``"llava"``, ``"rablip-llava-full"`` or ``"rablip-llava-trainable"``; CheckpointError otherwise."""
    model_type = config_dict.get("model_type")
    if model_type not in LLAVA_MODEL_TYPES:
        raise CheckpointError(f"{path / 'config.json'}: model_type {model_type!r} is not a LLaVA checkpoint "
                              f"({list(LLAVA_MODEL_TYPES)})")
    if not any((path / name).is_file() for name in FULL_WEIGHTS_FILES):
        raise CheckpointError(
            f"{path}: no safetensors weights ({' or '.join(FULL_WEIGHTS_FILES)}); pickled .bin weights are not read"
        )
    if model_type == "llava":
        return "llava"
    return "rablip-llava-trainable" if config_dict.get("base_checkpoint") else "rablip-llava-full"


def load_llava_pretrained(
    cls,
    path: str | Path,
    *,
    dtype: torch.dtype | str | None = None,
    device_map: Any = None,
    _depth: int = 0,
    **overrides: Any,
):
    """Load any of the three kinds into ``cls`` (:class:`~rablip.models.llava.RablipLlavaForConditionalGeneration`).

    ``overrides`` set rablip fields (``max_image_slots``, ``trainable_modules``, ``base_checkpoint``
    for a moved base). ``dtype`` and ``device_map`` go to transformers. ``config.base_checkpoint`` of
    the result names the dir holding its frozen weights, for a later trainable-only save.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise CheckpointError(f"checkpoint dir {path} does not exist")
    if _depth > _MAX_BASE_DEPTH:
        raise CheckpointError(f"{path}: base_checkpoint chain deeper than {_MAX_BASE_DEPTH} (a cycle?)")
    config_dict = read_config_dict(path)
    kind = llava_checkpoint_kind(path, config_dict)
    hf_kwargs = {key: value for key, value in (("dtype", dtype), ("device_map", device_map)) if value is not None}
    if kind == "rablip-llava-trainable":
        model = _load_trainable(cls, path, config_dict, overrides, hf_kwargs, _depth)
    else:
        config = llava_config_from_transformers(config_dict, {**overrides, "base_checkpoint": str(path)})
        model = _load_with_transformers(cls, path, config, (), **hf_kwargs)
    apply_trainable_modules(model)  # loading replaces the parameters created in __init__
    logger.info("loaded %s checkpoint %s", kind, path)
    return model


def _load_trainable(cls, path: Path, config_dict: dict[str, Any], overrides: dict[str, Any],
                    hf_kwargs: dict[str, Any], depth: int):
    """The base checkpoint, the trainable weights laid over it, then its LoRA adapter merged (if any)."""
    base_path = resolve_base_checkpoint(path, config_dict, overrides)
    fields = {key: config_dict[key] for key in RABLIP_LLAVA_FIELDS if key in config_dict and key != "base_checkpoint"}
    fields.update(overrides)
    model = load_llava_pretrained(cls, base_path, _depth=depth + 1, **hf_kwargs, **fields)
    return overlay_trainable(model, path, base_path)
