"""The saved retrieval encoder: ``retrieval_encoder.json`` (configs) and ``retrieval_encoder.safetensors``.

:func:`save_encoder` writes what :meth:`rablip.models.fusion.MultimodalRetrievalEncoder.from_pretrained`
reads back through :func:`read_encoder_parts` and :func:`load_encoder_weights`. The JSON's ``fusion``
section keeps the layout it has always had (``num_layers``, ``num_heads``, ``embed_dim``,
``vl_expert_layers``, plus the fixed ``hidden_size`` null, ``mlp_ratio``, ``dropout`` and
``layer_norm_eps``): :func:`fusion_record` and :func:`fusion_config_from_record` translate it to and
from ``model.fusion`` (:class:`rablip.config.schema.FusionConfig`), so encoders saved before keep
loading and the same encoder always writes the same bytes (its fingerprint keys indexes).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    Blip2VisionConfig,
    Blip2VisionModel,
    InstructBlipQFormerConfig,
    InstructBlipQFormerModel,
    InstructBlipVisionConfig,
    InstructBlipVisionModel,
)

from rablip.config.schema import FusionConfig
from rablip.errors import ConfigError, RablipError
from rablip.models.fusion_layers import DROPOUT, LAYER_NORM_EPS, MLP_RATIO, FusionEncoder
from rablip.models.vision import TIMM_MODEL_TYPE, TimmVisionEncoder

CONFIG_FILE = "retrieval_encoder.json"
WEIGHTS_FILE = "retrieval_encoder.safetensors"
FORMAT_NAME = "rablip.retrieval_encoder"
FORMAT_VERSION = 1

# Vision backbones the saved config can rebuild: model_type -> (config class, model class).
VISION_MODEL_TYPES: dict[str, tuple[type, type]] = {
    InstructBlipVisionConfig.model_type: (InstructBlipVisionConfig, InstructBlipVisionModel),
    Blip2VisionConfig.model_type: (Blip2VisionConfig, Blip2VisionModel),
}
SAVEABLE_VISION_TYPES = sorted([*VISION_MODEL_TYPES, TIMM_MODEL_TYPE])
"""Every vision model_type a saved encoder may name: the transformers ones above and rablip's timm encoder."""

_FIXED_SHAPE = {"hidden_size": None, "mlp_ratio": MLP_RATIO, "dropout": DROPOUT, "layer_norm_eps": LAYER_NORM_EPS}
"""The saved ``fusion`` keys whose values the fusion layers fix (width: the Q-Former's)."""


def fusion_record(config: FusionConfig) -> dict[str, Any]:
    """The ``fusion`` section of ``retrieval_encoder.json`` for ``config``."""
    return {"num_layers": config.layers, "num_heads": config.heads, "embed_dim": config.dim,
            "vl_expert_layers": config.vl_expert_layers, **_FIXED_SHAPE}


def fusion_config_from_record(record: dict[str, Any], qformer_width: int, where: Path) -> FusionConfig:
    """The :class:`FusionConfig` of a saved ``fusion`` section; refuses a shape these layers cannot build."""
    for key, value in _FIXED_SHAPE.items():
        allowed = (value, qformer_width) if key == "hidden_size" else (value,)
        if record.get(key, value) not in allowed:
            raise RablipError(f"{where}: fusion.{key}={record[key]!r}, but rablip's fusion layers have "
                              f"{key}={value!r}; re-save the encoder with this version of rablip")
    try:
        return FusionConfig(layers=record["num_layers"], heads=record["num_heads"], dim=record["embed_dim"],
                            vl_expert_layers=record["vl_expert_layers"])
    except KeyError as missing:
        raise RablipError(f"{where}: the fusion section lacks {missing}; re-save the encoder") from None
    except ConfigError as err:
        raise RablipError(f"{where}: {err}") from None


def _vision_config(vision_model: nn.Module) -> dict[str, Any]:
    if isinstance(vision_model, TimmVisionEncoder):
        return vision_model.description
    return vision_model.config.to_dict() if hasattr(vision_model, "config") else {}


def save_encoder(encoder: Any, directory: str | os.PathLike) -> None:
    """Write ``encoder`` (a MultimodalRetrievalEncoder) as ``CONFIG_FILE`` and ``WEIGHTS_FILE`` in ``directory``.

    Both go to temporary names first and are renamed, weights then config: a crash never leaves a
    half-written pair.
    """
    vision_config = _vision_config(encoder.vision_model)
    model_type = vision_config.get("model_type")
    if model_type not in SAVEABLE_VISION_TYPES:
        raise RablipError(
            f"cannot save the retrieval encoder: vision model type {model_type!r} is not one of "
            f"{SAVEABLE_VISION_TYPES}; add it to rablip.models.fusion_checkpoint.VISION_MODEL_TYPES"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "fusion": fusion_record(encoder.fusion.config),
        "vision_config": vision_config,
        "qformer_config": encoder.qformer.config.to_dict(),
        "num_query_tokens": encoder.num_query_tokens,
        "instruct_queries": encoder.instruct_queries,
    }
    state = {name: tensor.detach().contiguous() for name, tensor in encoder.state_dict().items()}
    tmp_weights, tmp_config = directory / (WEIGHTS_FILE + ".tmp"), directory / (CONFIG_FILE + ".tmp")
    save_file(state, str(tmp_weights), metadata={"format": FORMAT_NAME})
    tmp_config.write_text(json.dumps(meta, indent=2, sort_keys=True))
    os.replace(tmp_weights, directory / WEIGHTS_FILE)
    os.replace(tmp_config, directory / CONFIG_FILE)


def _read_meta(config_path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise RablipError(f"{config_path}: not valid JSON ({exc}); re-save the encoder") from exc
    if meta.get("format") != FORMAT_NAME or meta.get("version") != FORMAT_VERSION:
        raise RablipError(
            f"{config_path}: format {meta.get('format')!r} v{meta.get('version')!r} is not "
            f"{FORMAT_NAME!r} v{FORMAT_VERSION}; re-save the encoder with this version of rablip"
        )
    return meta


def _vision_model(meta: dict[str, Any], config_path: Path) -> nn.Module:
    model_type = meta["vision_config"].get("model_type")
    if model_type == TIMM_MODEL_TYPE:
        return TimmVisionEncoder.from_description(meta["vision_config"])
    if model_type in VISION_MODEL_TYPES:
        vision_config_cls, vision_model_cls = VISION_MODEL_TYPES[model_type]
        return vision_model_cls(vision_config_cls.from_dict(meta["vision_config"]))
    raise RablipError(f"{config_path}: unknown vision model_type {model_type!r}; known: {SAVEABLE_VISION_TYPES}")


def read_encoder_parts(directory: str | os.PathLike) -> dict[str, Any]:
    """The freshly initialised parts of the encoder saved in ``directory``, as keyword arguments of
    MultimodalRetrievalEncoder: ``vision_model``, ``query_tokens``, ``qformer``, ``fusion``,
    ``instruct_queries``. Missing files, another format or an unknown vision model are RablipErrors."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise RablipError(f"{path} does not exist; point to a directory written by save_pretrained")
    meta = _read_meta(config_path)
    vision_model = _vision_model(meta, config_path)
    qformer_config = InstructBlipQFormerConfig.from_dict(meta["qformer_config"])
    qformer = InstructBlipQFormerModel(qformer_config)
    fusion_config = fusion_config_from_record(meta["fusion"], qformer_config.hidden_size, config_path)
    fusion = FusionEncoder(fusion_config, qformer_config.hidden_size)
    query_tokens = nn.Parameter(torch.zeros(1, meta["num_query_tokens"], qformer_config.hidden_size))
    return {"vision_model": vision_model, "query_tokens": query_tokens, "qformer": qformer, "fusion": fusion,
            "instruct_queries": meta["instruct_queries"]}


def load_encoder_weights(encoder: nn.Module, directory: str | os.PathLike) -> None:
    """Load ``WEIGHTS_FILE`` into ``encoder``; every weight must be there with its shape, and no other."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    state = load_file(str(weights_path))
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong_shape:
        raise RablipError(
            f"{weights_path} does not match {config_path}: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shape {wrong_shape[:5]}; the two files must come from the same save_pretrained call"
        )
    encoder.load_state_dict(state, strict=True)
