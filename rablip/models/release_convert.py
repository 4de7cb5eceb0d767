"""Convert a checkpoint of RA-BLIP's code release into a rablip model with ``multi_image="concat"``.

The release (iLearn-Lab/TMM25-RA-BLIP) trains LAVIS InstructBLIP-T5 (``Blip2T5Instruct`` /
``Blip2T5InstructEnhance`` in its ``model.py``) and saves ``torch.save(model.state_dict())``. Its
keys are LAVIS keys (``visual_encoder.*``, ``ln_vision.*``, ``Qformer.bert.*``, ``query_tokens``,
``t5_proj.*``, ``t5_model.*``, renamed by :func:`rablip.models.convert.map_lavis_key`) plus two tables
that :mod:`rablip.models.multi_image` computes with in the same way:

* ``type_embeds`` (2, 1, 1, D_vision), added to image i's patch features -> ``slot_type_embeds``
  (2, D_vision), indexed by the image's rank among the example's real images;
* ``pos_embeds`` (1, 2 * P, D_vision), added over the two concatenated patch sequences ->
  ``patch_position_embeds`` (1, 2 * P, D_vision).

(:mod:`rablip.models.convert`'s LAVIS layout maps ``pos_embeds`` onto the per_slot table instead.)
The result is written over a base dir (a transformers InstructBLIP dir, for the architecture and the
weights the file lacks) with ``multi_image="concat"`` and ``max_image_slots=2`` in its config.

The release's ``qformer.py`` also defines a fusion module (``VLFuseModule``, ``fuse_vl_module.<i>.*``)
and its ``model.py`` a ``T5ClassificationHead`` and a ``BertPooler``; the generator never creates
them, so a release checkpoint holds them only if a user attached them. Where present they are dropped
by named rules (:data:`FUSION_RULE`, :data:`HEAD_LAYOUTS`): their BERT post-LayerNorm layers and
T5-width heads have no counterpart in rablip's fusion encoder (a pre-LayerNorm multiway transformer
with a [CLS] token, :mod:`rablip.models.fusion_layers`) or its one-layer match head. Any other key is
an error naming it.

Where the converted model computes other than the release: an example with no valid image (the
release's ``valid_image_num`` 0) gets no Q-Former pass and no image tokens in rablip (the release runs
its queries over fully masked images); T5's feed-forward activation is the base dir's (the release
forces ``dense_act_fn="gelu"``; the report notes a base that differs); T5 weights the release saved
in bf16 are cast to the base's dtype.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from rablip.models.convert import (
    ConversionReport,
    convert_lavis_state_dict,
    map_lavis_key,
    read_lavis_checkpoint,
    write_conversion,
)
from rablip.models.loading import CheckpointError

RELEASE_IMAGES = 2
"""Images per example in the release (its ``type_embeds`` rows)."""

RELEASE_OVERRIDES = {
    "multi_image": "concat",
    "max_image_slots": RELEASE_IMAGES,
    "use_slot_type_embeds": True,
    "use_slot_position_embeds": True,
}
"""The rablip config fields a converted release checkpoint is loaded and saved with."""

RELEASE_TABLES = {"type_embeds": "slot_type_embeds", "pos_embeds": "patch_position_embeds"}

_RELEASE_PREFIXES = ("visual_encoder.", "ln_vision.", "Qformer.", "query_tokens", "t5_proj.", "t5_model.")
"""The LAVIS modules of the release's generator (T5 only; the release has no OPT / LLaMA variant)."""

FUSION_RULE = (
    re.compile(r"(^|\.)fuse_vl_module\.\d+\."),
    "release VLFuseModule (qformer.py; BERT post-LayerNorm layers using only their vision-language "
    "feed-forward): never called by the release's generator; rablip's fusion encoder is a pre-LayerNorm "
    "multiway transformer with a [CLS] token and projection, so no weight has a counterpart",
)

HEAD_LAYOUTS = {
    frozenset({"dense.weight", "dense.bias", "out_proj.weight", "out_proj.bias"}): (
        "release T5ClassificationHead (model.py; dense + tanh + 2-way out_proj over T5 features): never "
        "called by the release's generator; rablip's 2-way match head is one linear layer over fusion features"
    ),
    frozenset({"dense.weight", "dense.bias"}): (
        "release BertPooler (model.py; dense + tanh): never called by the release's generator; rablip's "
        "fusion encoder has no pooler"
    ),
}
"""Key layouts (below one module path) of the release's heads, with the reason they are dropped."""


def map_release_key(key: str) -> tuple[str | None, str | None]:
    """``(rablip_key, None)`` for a mapped key, ``(None, reason)`` for a dropped one, ``(None, None)``
    if no rule covers it (a release head is recognised later, from its whole key set)."""
    if key in RELEASE_TABLES:
        return RELEASE_TABLES[key], None
    if FUSION_RULE[0].search(key):
        return None, FUSION_RULE[1]
    target, reason = map_lavis_key(key, qformer_text_input=True)
    if reason is not None:
        return None, reason
    if target is not None and key.startswith(_RELEASE_PREFIXES):
        return target, None
    return None, None


def _release_heads(keys: list[str], state_dict: dict[str, torch.Tensor]) -> dict[str, str]:
    """Drop reasons of the ``keys`` that form a release head (:data:`HEAD_LAYOUTS`) below one path."""
    paths: dict[str, set[str]] = {}
    for key in keys:
        parts = key.rsplit(".", 2)
        if len(parts) == 3:
            paths.setdefault(parts[0], set()).add(f"{parts[1]}.{parts[2]}")
    dropped = {}
    for path, parts in paths.items():
        reason = HEAD_LAYOUTS.get(frozenset(parts))
        if reason is None:
            continue
        width = state_dict[f"{path}.dense.weight"].shape
        square = len(width) == 2 and width[0] == width[1]
        two_way = "out_proj.weight" not in parts or state_dict[f"{path}.out_proj.weight"].shape == (2, width[0])
        if square and two_way:
            dropped.update({f"{path}.{part}": reason for part in parts})
    return dropped


def _release_table(key: str, tensor: torch.Tensor) -> torch.Tensor:
    """The release table ``key`` in rablip's shape, after checking the release's shape."""
    if key == "type_embeds":
        if tensor.dim() != 4 or tuple(tensor.shape[:3]) != (RELEASE_IMAGES, 1, 1):
            raise CheckpointError(f"type_embeds has shape {tuple(tensor.shape)}; the release's is ({RELEASE_IMAGES}, 1, 1, D)")
        return tensor.reshape(RELEASE_IMAGES, tensor.shape[-1])
    if tensor.dim() != 3 or tensor.shape[0] != 1 or tensor.shape[1] % RELEASE_IMAGES:
        raise CheckpointError(f"pos_embeds has shape {tuple(tensor.shape)}; the release's is (1, {RELEASE_IMAGES} * P, D)")
    return tensor


def convert_release_state_dict(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Rename a release state dict into rablip's concat-mode keys; raise :class:`CheckpointError`
    naming every key no rule covers, or when the release's two tables are absent."""
    report = ConversionReport()
    generator_part: dict[str, torch.Tensor] = {}
    tables: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        target, reason = map_release_key(key)
        if reason is not None:
            report.dropped[key] = reason
        elif target is None:
            report.unknown.append(key)
        elif key in RELEASE_TABLES:
            tables[target] = _release_table(key, tensor)
            report.mapped[key] = target
        else:
            generator_part[key] = tensor
    heads = _release_heads(report.unknown, state_dict)
    report.dropped.update(heads)
    report.unknown = [key for key in report.unknown if key not in heads]
    if report.unknown:
        raise CheckpointError(
            f"{len(report.unknown)} key(s) of the RA-BLIP release checkpoint have no rablip counterpart and no "
            f"drop rule: {sorted(report.unknown)[:40]}; is this a checkpoint of the release's Blip2T5Instruct(Enhance)?"
        )
    absent = sorted(key for key in RELEASE_TABLES if key not in state_dict)
    if absent:
        raise CheckpointError(
            f"the checkpoint has no {absent}: not an RA-BLIP release checkpoint (convert a LAVIS InstructBLIP "
            "checkpoint with --layout lavis)"
        )
    converted, generator_report = convert_lavis_state_dict(generator_part, qformer_text_input=True)
    converted.update(tables)
    report.mapped.update(generator_report.mapped)
    return converted, report


def convert_release_checkpoint(input_path: str | Path, output_dir: str | Path, base: str | Path | None) -> ConversionReport:
    """Convert a release ``.pth`` (read with ``weights_only=True``) into a loadable concat-mode rablip dir
    over ``base``; writes ``conversion_report.json`` too."""
    from rablip.models.loading import checkpoint_kind, read_config_dict

    if base is None:
        raise CheckpointError(
            "a release checkpoint converts into a multi_image='concat' rablip model whose architecture comes "
            "from a base dir: pass --base (the transformers InstructBLIP T5 dir the release started from)"
        )
    if checkpoint_kind(base) == "blip-2":
        raise CheckpointError(f"{base}: a BLIP-2 dir; the release's Q-Former reads the instruction (use an InstructBLIP dir)")
    input_path = Path(input_path)
    converted, report = convert_release_state_dict(read_lavis_checkpoint(input_path))
    activation = read_config_dict(Path(base)).get("text_config", {}).get("dense_act_fn")
    if activation != "gelu":
        report.notes.append(
            f"the release runs T5 with dense_act_fn='gelu'; the base's T5 config has {activation!r}, which the "
            "converted model keeps (use a base whose T5 runs gelu, e.g. one from scripts/compose_generator.py)"
        )
    write_conversion(converted, report, input_path, output_dir, base, **RELEASE_OVERRIDES)
    return report


__all__ = [
    "RELEASE_OVERRIDES",
    "convert_release_checkpoint",
    "convert_release_state_dict",
    "map_release_key",
]
