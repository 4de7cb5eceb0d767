"""Convert LAVIS-format InstructBLIP / BLIP-2 / RA-BLIP checkpoints (.pth) into rablip's layout.

Key names follow LAVIS (``blip2_t5_instruct.py``, ``blip2_qformer.py``, ``eva_vit.py``):
``visual_encoder.*`` (EVA ViT), ``ln_vision``, ``Qformer.bert.*``, ``query_tokens``,
``t5_proj``/``llm_proj``/``opt_proj``, ``t5_model``/``llm_model``/``opt_model``, plus RA-BLIP's
``pos_embeds`` and ``type_embeds`` (here onto the per_slot tables; a checkpoint of RA-BLIP's code
release converts into its own ``multi_image="concat"`` layout with :mod:`rablip.models.release_convert`).
Every key is accounted for: mapped, dropped by a named rule, or unknown (an error). The file is read
with ``torch.load(weights_only=True)`` (no unpickling of code).

With a base checkpoint dir (a transformers InstructBLIP / BLIP-2 dir) the result is a loadable
trainable-only rablip dir: the converted weights overlay the base, and module groups the .pth
covers only in part are completed from the base (reported as ``filled_from_base``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from rablip.models.freezing import group_of
from rablip.models.loading import TRAINABLE_WEIGHTS_FILE, CheckpointError, trainable_metadata

REPORT_FILE = "conversion_report.json"
CONVERTED_WEIGHTS_FILE = "lavis_converted.safetensors"

_DROP_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^Qformer\.cls\."), "Q-Former masked-LM head: unused by the generator (LAVIS sets it to None)"),
    (re.compile(r"^Qformer\.bert\.embeddings\.position_ids$"), "position-id buffer: rebuilt by the model"),
    (re.compile(r"^(vision_proj|text_proj|itm_head)\.|^temp$"), "BLIP-2 stage-1 ITC/ITM head: not part of the generator"),
    (re.compile(r"\.relative_position_index$"), "relative-position index buffer: rebuilt by the model"),
    (re.compile(r"\.rotary_emb\.inv_freq$"), "rotary-embedding buffer: rebuilt by the model"),
]
_BLIP2_TEXT_PARTS = re.compile(
    r"^Qformer\.bert\.(embeddings\.(word_embeddings|position_embeddings)\.|encoder\.layer\.\d+\.(intermediate|output)\.)"
)
_VISION_BLOCK = re.compile(r"^visual_encoder\.blocks\.(\d+)\.(.+)$")
_VISION_BLOCK_PARTS = {
    "norm1.": "layer_norm1.",
    "norm2.": "layer_norm2.",
    "attn.qkv.weight": "self_attn.qkv.weight",
    "attn.proj.": "self_attn.projection.",
    "mlp.fc1.": "mlp.fc1.",
    "mlp.fc2.": "mlp.fc2.",
}
_DIRECT = {
    "query_tokens": "query_tokens",
    "visual_encoder.cls_token": "vision_model.embeddings.class_embedding",
    "visual_encoder.pos_embed": "vision_model.embeddings.position_embedding",
    "visual_encoder.patch_embed.proj.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual_encoder.patch_embed.proj.bias": "vision_model.embeddings.patch_embedding.bias",
    "ln_vision.weight": "vision_model.post_layernorm.weight",
    "ln_vision.bias": "vision_model.post_layernorm.bias",
    "pos_embeds": "slot_position_embeds",
    "pos_embeds.weight": "slot_position_embeds",
    "type_embeds": "slot_type_embeds",
    "type_embeds.weight": "slot_type_embeds",
}
_PREFIXES = {
    "t5_proj.": "language_projection.",
    "llm_proj.": "language_projection.",
    "opt_proj.": "language_projection.",
    "t5_model.": "language_model.",
    "llm_model.": "language_model.",
    "opt_model.": "language_model.",
}


@dataclass
class ConversionReport:
    """What happened to every key of the LAVIS checkpoint."""

    mapped: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    filled_from_base: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # where the converted model computes other than the source

    def to_json(self) -> str:
        """The report as indented JSON."""
        return json.dumps(self.__dict__, indent=2, sort_keys=True)


def _map_qformer_key(key: str, qformer_text_input: bool) -> str:
    rest = key[len("Qformer.bert."):]
    if rest.startswith("embeddings.LayerNorm."):
        suffix = rest[len("embeddings.LayerNorm."):]
        return f"qformer.embeddings.layernorm.{suffix}" if qformer_text_input else f"qformer.layernorm.{suffix}"
    rest = rest.replace("attention.self.", "attention.attention.")
    return f"qformer.{rest}"


def map_lavis_key(key: str, qformer_text_input: bool = True) -> tuple[str | None, str | None]:
    """``(rablip_key, None)`` for a mapped key, ``(None, reason)`` for a dropped one, ``(None, None)`` if unknown.

    The EVA q/v biases (``attn.q_bias`` / ``attn.v_bias``) map to ``self_attn.qkv.bias`` and are
    combined by :func:`convert_lavis_state_dict`.
    """
    for pattern, reason in _DROP_RULES:
        if pattern.search(key):
            return None, reason
    if not qformer_text_input and _BLIP2_TEXT_PARTS.match(key):
        return None, "instruction-input part of the Q-Former: the BLIP-2 Q-Former takes no text"
    if key in _DIRECT:
        return _DIRECT[key], None
    if key.startswith("Qformer.bert."):
        return _map_qformer_key(key, qformer_text_input), None
    block = _VISION_BLOCK.match(key)
    if block:
        index, part = block.groups()
        if part in ("attn.q_bias", "attn.v_bias"):
            return f"vision_model.encoder.layers.{index}.self_attn.qkv.bias", None
        for source, target in _VISION_BLOCK_PARTS.items():
            if part.startswith(source):
                return f"vision_model.encoder.layers.{index}.{target}{part[len(source):]}", None
        return None, None
    for source, target in _PREFIXES.items():
        if key.startswith(source):
            return target + key[len(source):], None
    return None, None


def convert_lavis_state_dict(
    state_dict: dict[str, torch.Tensor], qformer_text_input: bool = True
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Rename a LAVIS state dict into rablip keys; raise :class:`CheckpointError` on unknown keys."""
    report = ConversionReport()
    converted: dict[str, torch.Tensor] = {}
    qv_biases: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        target, reason = map_lavis_key(key, qformer_text_input)
        if reason is not None:
            report.dropped[key] = reason
        elif target is None:
            report.unknown.append(key)
        elif key.endswith(("attn.q_bias", "attn.v_bias")):
            qv_biases.setdefault(target, {})[key.rsplit(".", 1)[-1]] = tensor
            report.mapped[key] = target
        else:
            if target in converted:
                raise CheckpointError(f"LAVIS keys map twice onto {target!r} (second: {key!r})")
            converted[target] = tensor
            report.mapped[key] = target
    if report.unknown:
        raise CheckpointError(
            f"{len(report.unknown)} LAVIS key(s) have no rablip counterpart and no drop rule: "
            f"{sorted(report.unknown)[:40]}; is this an InstructBLIP / BLIP-2 / RA-BLIP checkpoint?"
        )
    for target, parts in qv_biases.items():
        if set(parts) != {"q_bias", "v_bias"}:
            raise CheckpointError(f"EVA attention bias for {target!r} needs both q_bias and v_bias, got {sorted(parts)}")
        q_bias, v_bias = parts["q_bias"], parts["v_bias"]
        # the EVA ViT has no key bias: transformers' fused qkv bias holds zeros there
        converted[target] = torch.cat([q_bias, torch.zeros_like(v_bias), v_bias])
    return converted, report


def read_lavis_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a LAVIS .pth (its ``model`` sub-dict when present), read without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"LAVIS checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError / RuntimeError for foreign content
        raise CheckpointError(f"{path}: cannot be read as a weights-only checkpoint: {error}") from error
    if isinstance(payload, dict) and isinstance(payload.get("model"), dict):
        payload = payload["model"]
    if not isinstance(payload, dict) or not all(isinstance(value, torch.Tensor) for value in payload.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors (or one under 'model')")
    return payload


def _fit_to_model(converted: dict[str, torch.Tensor], model_state: dict[str, torch.Tensor], source: Path):
    unexpected = [key for key in converted if key not in model_state]
    mismatched = []
    for key, tensor in converted.items():
        if key not in model_state or tensor.shape == model_state[key].shape:
            continue
        if key.startswith("slot_") and tensor.numel() == model_state[key].numel():
            converted[key] = tensor.reshape(model_state[key].shape)  # e.g. (1, S*Q, D) tables
        else:
            mismatched.append(f"{key}: checkpoint {tuple(tensor.shape)} vs model {tuple(model_state[key].shape)}")
    if unexpected or mismatched:
        raise CheckpointError(
            f"{source}: converted weights do not fit the base architecture; unexpected: {sorted(unexpected)[:40]}; "
            f"shape mismatches: {mismatched[:40]}"
        )


def convert_lavis_checkpoint(input_path: str | Path, output_dir: str | Path, base: str | Path | None = None) -> ConversionReport:
    """Convert a LAVIS .pth; with ``base`` write a loadable rablip dir, else the renamed weights only.

    Always writes ``conversion_report.json`` to ``output_dir``.
    """
    from rablip.models.loading import checkpoint_kind

    input_path = Path(input_path)
    qformer_text_input = True
    if base is not None:
        qformer_text_input = checkpoint_kind(base) != "blip-2"
    converted, report = convert_lavis_state_dict(read_lavis_checkpoint(input_path), qformer_text_input)
    write_conversion(converted, report, input_path, output_dir, base)
    return report


def write_conversion(
    converted: dict[str, torch.Tensor],
    report: ConversionReport,
    source: Path,
    output_dir: str | Path,
    base: str | Path | None,
    **overrides,
) -> None:
    """Write converted weights to ``output_dir``: over ``base`` loaded with the rablip config
    ``overrides`` (a loadable trainable-only dir whose config records them), or, without a base,
    the renamed weights only; plus ``conversion_report.json``.

    Tensors that shared storage in the .pth (tied embeddings) are written as separate copies,
    which safetensors requires.
    """
    from rablip.models.rablip import RABlipForConditionalGeneration

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if base is None:
        save_file(_unshared({k: v.contiguous() for k, v in converted.items()}), str(output_dir / CONVERTED_WEIGHTS_FILE))
    else:
        model = RABlipForConditionalGeneration.from_pretrained(base, **overrides)
        model_state = model.state_dict()
        _fit_to_model(converted, model_state, source)
        groups = sorted({group_of(key) for key in converted})
        overlay = {}
        for key, tensor in model_state.items():
            if group_of(key) not in groups:
                continue
            if key in converted:
                overlay[key] = converted[key].to(tensor.dtype).contiguous()
            else:
                overlay[key] = tensor.detach().clone().contiguous()
                report.filled_from_base.append(key)
        save_file(_unshared(overlay), str(output_dir / TRAINABLE_WEIGHTS_FILE), metadata=trainable_metadata(groups))
        model.config.save_pretrained(str(output_dir))
    (output_dir / REPORT_FILE).write_text(report.to_json(), encoding="utf-8")


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` with every tensor whose storage an earlier one uses replaced by a copy."""
    seen: set[int] = set()
    result = {}
    for key, tensor in tensors.items():
        pointer = tensor.untyped_storage().data_ptr()
        result[key] = tensor.clone() if pointer in seen and tensor.numel() else tensor
        seen.add(pointer)
    return result


__all__ = [
    "ConversionReport",
    "convert_lavis_checkpoint",
    "convert_lavis_state_dict",
    "map_lavis_key",
    "read_lavis_checkpoint",
    "write_conversion",
]
