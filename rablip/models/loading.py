"""Strict loading and saving of RA-BLIP generator checkpoints.

Three kinds of checkpoint dir load through :func:`load_pretrained`:

- a transformers InstructBLIP dir (``model_type: instructblip``) or BLIP-2 dir (``blip-2``), as
  the Salesforce checkpoints are laid out (config.json + safetensors, possibly sharded);
- a full rablip dir (``model_type: rablip`` + ``model.safetensors``), written by
  ``save_pretrained(trainable_only=False)``;
- a trainable-only rablip dir (``model_type: rablip`` with ``base_checkpoint`` set in its config,
  and ``model.safetensors``), holding only the modules that train; ``base_checkpoint`` is the dir
  with the remaining weights. When the LLM was fine-tuned with LoRA (``model.lora``), the dir also
  holds peft's adapter files (``adapter_model.safetensors`` + ``adapter_config.json``), merged into
  the LLM on load (:mod:`rablip.models.lora`).

Every missing or unexpected weight is an error listing the keys, except the declared
expected-missing ones (RA-BLIP's new slot tables when starting from InstructBLIP / BLIP-2, and the
other mode's table when a full rablip checkpoint with all-zero slot tables is loaded in the other
``multi_image`` mode: :func:`mode_switch`).
Only safetensors and JSON are read; pickled ``.bin`` weights are refused.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers.utils import logging as hf_logging

from rablip.errors import RablipError
from rablip.models.config import RABLIP_FIELDS, RABlipConfig, config_from_transformers
from rablip.models.freezing import apply_trainable_modules, group_of
from rablip.models.lora import has_lora, merge_lora_adapter, save_lora_adapter

logger = logging.getLogger(__name__)

TRAINABLE_WEIGHTS_FILE = "model.safetensors"
FULL_WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json")
#: Weights a transformers InstructBLIP / BLIP-2 checkpoint cannot have; they start at zero.
EXPECTED_MISSING_FROM_TRANSFORMERS = ("slot_type_embeds", "slot_position_embeds", "patch_position_embeds")
_MAX_BASE_DEPTH = 4


class CheckpointError(RablipError):
    """A checkpoint dir that cannot be loaded: unknown layout, missing, unexpected or misshapen weights."""


def _format_keys(title: str, keys: Iterable[str], limit: int = 40) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{title} ({len(keys)}): {shown}{more}"


def read_config_dict(path: Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint dir."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path}: no config.json; expected a transformers InstructBLIP/BLIP-2 or rablip checkpoint dir")
    try:
        return json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{config_file}: invalid JSON at line {error.lineno}: {error.msg}") from error


def checkpoint_kind(path: str | Path) -> str:
    """``"instructblip"``, ``"blip-2"``, ``"rablip-full"`` or ``"rablip-trainable"``."""
    path = Path(path)
    model_type = read_config_dict(path).get("model_type")
    if model_type in ("instructblip", "blip-2"):
        kind = model_type
    elif model_type == "rablip":
        kind = "rablip-trainable" if read_config_dict(path).get("base_checkpoint") else "rablip-full"
    else:
        raise CheckpointError(
            f"{path / 'config.json'}: model_type {model_type!r} is not supported; expected 'instructblip', "
            "'blip-2' or 'rablip' (convert LAVIS .pth files with scripts/convert_lavis.py)"
        )
    if not any((path / name).is_file() for name in FULL_WEIGHTS_FILES):
        raise CheckpointError(
            f"{path}: no safetensors weights ({' or '.join(FULL_WEIGHTS_FILES)}); pickled .bin weights are not read"
        )
    return kind


def check_loading_info(
    source: Path,
    missing: Iterable[str],
    unexpected: Iterable[str],
    mismatched: Iterable[Any] = (),
    allowed_missing_prefixes: tuple[str, ...] = (),
) -> None:
    """Raise :class:`CheckpointError` listing missing / unexpected / misshapen keys (allowed ones excepted)."""
    missing = [key for key in missing if not key.startswith(allowed_missing_prefixes)] if allowed_missing_prefixes \
        else list(missing)
    unexpected, mismatched = list(unexpected), list(mismatched)
    if not (missing or unexpected or mismatched):
        return
    parts = [f"{source}: the weights do not fit the model architecture in its config"]
    if missing:
        parts.append(_format_keys("missing keys", missing))
    if unexpected:
        parts.append(_format_keys("unexpected keys", unexpected))
    if mismatched:
        parts.append(_format_keys("keys with a different shape", [str(item) for item in mismatched]))
    parts.append("check that the checkpoint and the model config (model.*) describe the same architecture")
    raise CheckpointError("\n  ".join(parts))


def _split_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(overrides) - set(RABLIP_FIELDS))
    if unknown:
        raise CheckpointError(f"unknown model override(s) {unknown}; allowed: {list(RABLIP_FIELDS)}")
    return overrides


#: The tables only one ``multi_image`` mode has.
MODE_TABLES = {"per_slot": "slot_position_embeds", "concat": "patch_position_embeds"}


def _read_weights(path: Path, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """The named tensors of a full checkpoint dir's safetensors weights (single file or sharded)."""
    files: dict[str, str] = {}
    index = path / "model.safetensors.index.json"
    if (path / "model.safetensors").is_file():
        files = {name: "model.safetensors" for name in names}
    elif index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        files = {name: weight_map[name] for name in names if name in weight_map}
    tensors = {}
    for name, file in files.items():
        with safe_open(str(path / file), framework="pt") as handle:
            if name in handle.keys():
                tensors[name] = handle.get_tensor(name)
    return tensors


def mode_switch(path: Path, kind: str, config_dict: dict[str, Any], overrides: dict[str, Any]) -> tuple[str, str]:
    """``(table to start at zero, table to drop)`` when a rablip checkpoint is loaded in the other
    ``multi_image`` mode, ``("", "")`` when not. Allowed only for a full checkpoint whose slot tables
    are all zero (an untrained base, as good as InstructBLIP): trained tables do not convert."""
    saved = config_dict.get("multi_image", "per_slot")
    wanted = overrides.get("multi_image", saved)
    if wanted == saved:
        return "", ""
    trained = []
    if kind == "rablip-full":
        tables = _read_weights(path, ("slot_type_embeds", *MODE_TABLES.values()))
        trained = sorted(name for name, tensor in tables.items() if bool(tensor.any()))
    if kind != "rablip-full" or trained:
        what = f"trained slot tables {trained}" if trained else "a trainable-only checkpoint"
        raise CheckpointError(
            f"{path / 'config.json'}: the checkpoint was saved with multi_image={saved!r}, but multi_image={wanted!r} "
            f"was asked for (model.multi_image), and it is {what}, which do not convert. Set "
            f"model.multi_image={saved!r}, or start the other mode from a transformers InstructBLIP/BLIP-2 checkpoint"
        )
    return MODE_TABLES[wanted], MODE_TABLES[saved]


def _load_with_transformers(cls, path: Path, config: RABlipConfig, allowed_missing: tuple[str, ...],
                            dropped: tuple[str, ...] = (), **hf_kwargs):
    # transformers' own load report would warn about the expected-missing slot tables; the strict
    # check below reports everything that matters
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = cls._transformers_from_pretrained(
            str(path),
            config=config,
            output_loading_info=True,
            use_safetensors=True,
            ignore_mismatched_sizes=True,  # reported in info["mismatched_keys"], refused below
            **hf_kwargs,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    check_loading_info(
        path,
        info.get("missing_keys", ()),
        [key for key in info.get("unexpected_keys", ()) if key not in dropped],
        info.get("mismatched_keys", ()),
        allowed_missing,
    )
    return model


def load_pretrained(
    cls,
    path: str | Path,
    *,
    dtype: torch.dtype | str | None = None,
    device_map: Any = None,
    _depth: int = 0,
    **overrides: Any,
):
    """Load any of the three checkpoint kinds into ``cls`` (``RABlipForConditionalGeneration``).

    ``overrides`` set RA-BLIP config fields (``max_image_slots``, ``refine_top_m``,
    ``trainable_modules``, ``base_checkpoint`` for a moved base, ...). ``dtype`` and ``device_map``
    are passed to transformers. ``config.base_checkpoint`` of the result names the dir holding
    its frozen weights, for a later trainable-only save.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise CheckpointError(f"checkpoint dir {path} does not exist")
    if _depth > _MAX_BASE_DEPTH:
        raise CheckpointError(f"{path}: base_checkpoint chain deeper than {_MAX_BASE_DEPTH} (a cycle?)")
    overrides = _split_overrides(overrides)
    kind = checkpoint_kind(path)
    hf_kwargs = {key: value for key, value in (("dtype", dtype), ("device_map", device_map)) if value is not None}
    config_dict = read_config_dict(path)
    starts_at_zero, dropped = mode_switch(path, kind, config_dict, overrides) if kind.startswith("rablip") else ("", "")
    if kind in ("instructblip", "blip-2"):
        fields = {**overrides, "base_checkpoint": str(path)}
        config = config_from_transformers(config_dict, fields)
        model = _load_with_transformers(cls, path, config, EXPECTED_MISSING_FROM_TRANSFORMERS, **hf_kwargs)
    elif kind == "rablip-full":
        config = RABlipConfig.from_pretrained(str(path), **{**overrides, "base_checkpoint": str(path)})
        model = _load_with_transformers(cls, path, config, (starts_at_zero,) if starts_at_zero else (),
                                        (dropped,), **hf_kwargs)
    else:
        model = _load_trainable_checkpoint(cls, path, config_dict, overrides, hf_kwargs, _depth)
    apply_trainable_modules(model)  # loading replaces the parameters created in __init__
    logger.info("loaded %s checkpoint %s", kind, path)
    return model


def resolve_base_checkpoint(path: Path, config_dict: dict[str, Any], overrides: dict[str, Any]) -> Path:
    """The base dir of trainable-only checkpoint ``path`` (an override first; a relative path is taken
    from ``path``); pops ``base_checkpoint`` from ``overrides``. CheckpointError when none or missing."""
    base = overrides.pop("base_checkpoint", None) or config_dict.get("base_checkpoint")
    if not base:
        raise CheckpointError(f"{path / 'config.json'}: a trainable-only checkpoint needs base_checkpoint")
    base_path = Path(base).expanduser()
    if not base_path.is_absolute():
        base_path = (path / base_path).resolve()
    if not base_path.is_dir():
        raise CheckpointError(
            f"{path / 'config.json'}: base_checkpoint {base_path} does not exist; pass base_checkpoint=... "
            "(model.base_checkpoint) to point at the moved base dir"
        )
    return base_path


def overlay_trainable(model: torch.nn.Module, path: Path, base_path: Path) -> torch.nn.Module:
    """Lay trainable-only checkpoint ``path``'s weights over ``model`` (loaded from ``base_path``), merge its
    LoRA adapter if it has one, and record the dir a later trainable-only save builds on."""
    load_trainable_weights(model, path / TRAINABLE_WEIGHTS_FILE)
    # A merged adapter changed the (frozen) LLM: a later trainable-only save must build on this dir.
    merged = merge_lora_adapter(model, path)
    model.config.base_checkpoint = str(path if merged else base_path)
    return model


def _load_trainable_checkpoint(cls, path, config_dict, overrides, hf_kwargs, depth):
    base_path = resolve_base_checkpoint(path, config_dict, overrides)
    rablip_fields = {key: config_dict[key] for key in RABLIP_FIELDS if key in config_dict and key != "base_checkpoint"}
    rablip_fields.update(overrides)
    model = load_pretrained(cls, base_path, _depth=depth + 1, **hf_kwargs, **rablip_fields)
    return overlay_trainable(model, path, base_path)


def load_trainable_weights(model: torch.nn.Module, weights_file: Path) -> None:
    """Overlay a trainable-only weights file strictly: it must hold exactly its module groups' keys."""
    with safe_open(str(weights_file), framework="pt") as handle:
        metadata = handle.metadata() or {}
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    info = json.loads(metadata.get("rablip", "null") or "null")
    if not isinstance(info, dict) or "module_groups" not in info:
        raise CheckpointError(f"{weights_file}: no 'rablip' metadata naming its module groups; not written by rablip")
    groups = info["module_groups"]
    model_state = model.state_dict()
    unexpected = [key for key in state if key not in model_state]
    mismatched = [
        f"{key}: file {tuple(state[key].shape)} vs model {tuple(model_state[key].shape)}"
        for key in state if key in model_state and state[key].shape != model_state[key].shape
    ]
    tied = info.get("tied", {})
    missing = [key for key in model_state if group_of(key) in groups and key not in state and key not in tied]
    check_loading_info(weights_file, missing, unexpected, mismatched)
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for key, tensor in state.items():
            target = model_state[key]
            if key in parameters and tensor.dtype == torch.float32 and target.dtype != torch.float32:
                # trained weights keep their float32 precision over a base loaded in bf16 (model.dtype)
                parameters[key].data = tensor.to(target.device)
            else:
                target.copy_(tensor.to(device=target.device, dtype=target.dtype))


def trainable_metadata(groups: list[str], tied: dict[str, str] | None = None) -> dict[str, str]:
    """safetensors metadata of a trainable-only weights file: its module groups and tied keys.

    One metadata key, because safetensors does not keep the order of several and a run resumed
    from a checkpoint must write a byte-identical file.
    """
    return {"rablip": json.dumps({"module_groups": list(groups), "tied": tied or {}}, sort_keys=True)}


def save_checkpoint(model, out_dir: str | Path, *, trainable_only: bool = False, **hf_kwargs: Any) -> Path:
    """Write ``config.json`` and safetensors weights: the full model, or only its trainable module groups.

    A trainable-only dir records ``base_checkpoint`` (the dir the frozen weights come from) and
    the module groups it holds; loading it loads the base first, then overlays these weights. An LLM
    with LoRA adapters adds peft's adapter files to a trainable-only dir (a full save refuses it:
    merge the adapters first). Works for both generator families (``model.config`` is a
    :class:`RABlipConfig` or a :class:`~rablip.models.llava_config.RablipLlavaConfig`).
    """
    if not trainable_only and has_lora(model):
        raise CheckpointError("save_pretrained: the LLM carries LoRA adapters, which a full model save would not "
                              "keep; save trainable_only=True (adapter files beside the weights) or merge them "
                              "first (rablip.models.lora.merge_lora)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config: RABlipConfig = model.config
    if not trainable_only:
        base = config.base_checkpoint
        config.base_checkpoint = None
        try:
            model._transformers_save_pretrained(str(out_dir), **hf_kwargs)
        finally:
            config.base_checkpoint = base
        return out_dir
    if not config.base_checkpoint:
        raise CheckpointError(
            "save_pretrained(trainable_only=True) needs config.base_checkpoint (the dir holding the frozen "
            "weights); load the model with from_pretrained or save the full model instead"
        )
    groups = list(config.trainable_modules)
    state: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}  # key -> the saved key it shares memory with (tied embeddings)
    storage_of: dict[tuple, str] = {}
    for key, tensor in model.state_dict().items():
        if group_of(key) not in groups:
            continue
        identity = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if identity in storage_of:
            tied[key] = storage_of[identity]
            continue
        storage_of[identity] = key
        state[key] = tensor.detach().to("cpu").contiguous()
    metadata = trainable_metadata(groups, tied)
    tmp_file = out_dir / (TRAINABLE_WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp_file), metadata=metadata)
    tmp_file.replace(out_dir / TRAINABLE_WEIGHTS_FILE)
    for name in FULL_WEIGHTS_FILES:
        if name != TRAINABLE_WEIGHTS_FILE and (out_dir / name).exists():
            (out_dir / name).unlink()
    save_lora_adapter(model, out_dir)
    config.save_pretrained(str(out_dir))
    return out_dir
