"""``RABlipConfig``: transformers' InstructBLIP configuration plus what RA-BLIP adds.

The config keeps InstructBLIP's three sub-configs (``vision_config``, ``qformer_config``,
``text_config``) and its fields (``num_query_tokens``, ``image_token_index``) unchanged, so a
transformers InstructBLIP or BLIP-2 ``config.json`` converts into it without loss
(:func:`config_from_transformers`). The added fields are typed and validated by transformers'
strict dataclass machinery, so a wrong type is an error that names the field.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import InstructBlipConfig

from rablip.errors import ConfigError

#: Module groups that ``trainable_modules`` may name.
MODULE_GROUPS = (
    "vision_model",
    "query_tokens",
    "qformer",
    "language_projection",
    "language_model",
    "slot_embeddings",
)

#: RA-BLIP's default: frozen vision encoder and LLM; everything between them trains.
DEFAULT_TRAINABLE_MODULES = ["query_tokens", "qformer", "language_projection", "slot_embeddings"]

VISION_BACKBONES = ("blip", "timm")

#: How several images of one example reach the LLM (``multi_image``).
MULTI_IMAGE_MODES = ("per_slot", "concat")

#: Fields RA-BLIP adds to InstructBLIP's config (also the keys accepted as loading overrides).
RABLIP_FIELDS = (
    "qformer_text_input",
    "max_image_slots",
    "multi_image",
    "use_slot_type_embeds",
    "use_slot_position_embeds",
    "vision_backbone",
    "timm_model_name",
    "timm_kwargs",
    "refine_top_m",
    "trainable_modules",
    "base_checkpoint",
)


@strict
class RABlipConfig(InstructBlipConfig):
    r"""InstructBLIP's config with RA-BLIP's multi-image and training additions.

    qformer_text_input (`bool`, defaults to True):
        True: InstructBLIP Q-Former (the instruction shares self-attention with the queries).
        False: BLIP-2 Q-Former (queries only; ``qformer_input_ids`` are ignored).
    max_image_slots (`int`, defaults to 8):
        Most image slots per example (question image + retrieved images); sizes the slot tables.
    multi_image (`str`, defaults to "per_slot"):
        "per_slot": one Q-Former pass per real image slot, ``num_query_tokens`` LLM image tokens per
        slot. "concat" (RA-BLIP's release, :mod:`rablip.models.multi_image`): the real slots' patch
        features concatenated, ONE Q-Former pass, ``num_query_tokens`` image tokens per example.
    use_slot_type_embeds (`bool`, defaults to True):
        Add a learned type embedding to each image's patch features (``slot_type_embeds``; indexed by
        slot in per_slot mode, by the image's rank among the example's real slots in concat mode).
    use_slot_position_embeds (`bool`, defaults to True):
        per_slot: a learned position embedding over the concatenated real slots' query outputs
        (``slot_position_embeds``); concat: one over the concatenated patch features
        (``patch_position_embeds``).
    vision_backbone (`str`, defaults to "blip"):
        "blip": transformers' InstructBLIP/BLIP-2 vision tower; "timm": ``timm_model_name``.
    timm_model_name (`str`, optional):
        timm architecture name (created with ``pretrained=False``) when ``vision_backbone="timm"``.
    timm_kwargs (`dict`, optional):
        Extra keyword arguments for ``timm.create_model`` (e.g. ``img_size``, ``embed_dim``).
    refine_top_m (`int`, optional):
        RORA-VLM query-oriented visual token refinement: keep this many patches per image.
        None (default) keeps all patches.
    trainable_modules (`list[str]`, optional):
        Module groups that train (see ``MODULE_GROUPS``); None means RA-BLIP's default.
    base_checkpoint (`str`, optional):
        For a trainable-only rablip checkpoint: the checkpoint dir holding the frozen weights.
    """

    model_type = "rablip"

    qformer_text_input: bool = True
    max_image_slots: int = 8
    multi_image: str = "per_slot"
    use_slot_type_embeds: bool = True
    use_slot_position_embeds: bool = True
    vision_backbone: str = "blip"
    timm_model_name: str | None = None
    timm_kwargs: dict | None = None
    refine_top_m: int | None = None
    trainable_modules: list[str] | None = None
    base_checkpoint: str | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.trainable_modules is None:
            self.trainable_modules = list(DEFAULT_TRAINABLE_MODULES)
        check_rablip_fields(self)


def check_rablip_fields(config: RABlipConfig) -> None:
    """Raise :class:`ConfigError` naming the field when a RA-BLIP field holds a bad value."""
    unknown = [name for name in config.trainable_modules if name not in MODULE_GROUPS]
    if unknown:
        raise ConfigError(
            f"model.trainable_modules: unknown module group(s) {unknown}; choose from {list(MODULE_GROUPS)}"
        )
    if config.vision_backbone not in VISION_BACKBONES:
        raise ConfigError(
            f"model.vision_backbone: {config.vision_backbone!r} is not one of {list(VISION_BACKBONES)}"
        )
    if config.vision_backbone == "timm" and not config.timm_model_name:
        raise ConfigError("model.timm_model_name must name a timm architecture when vision_backbone='timm'")
    if config.multi_image not in MULTI_IMAGE_MODES:
        raise ConfigError(f"model.multi_image: {config.multi_image!r} is not one of {list(MULTI_IMAGE_MODES)}")
    if config.max_image_slots < 1:
        raise ConfigError(f"model.max_image_slots must be >= 1, got {config.max_image_slots}")
    if config.refine_top_m is not None and config.refine_top_m < 1:
        raise ConfigError(f"model.refine_top_m must be >= 1 or null, got {config.refine_top_m}")
    if config.image_token_index is None:
        raise ConfigError(
            "model config has no image_token_index: the LLM tokenizer's <image> token id is required "
            "(transformers 5 InstructBLIP checkpoints carry it in config.json)"
        )


def config_from_transformers(config_dict: dict[str, Any], overrides: dict[str, Any]) -> RABlipConfig:
    """Build a :class:`RABlipConfig` from a transformers InstructBLIP or BLIP-2 ``config.json`` dict.

    ``overrides`` sets RA-BLIP fields (keys of ``RABLIP_FIELDS``). A BLIP-2 config selects the
    BLIP-2 Q-Former (``qformer_text_input=False``).
    """
    model_type = config_dict.get("model_type")
    if model_type not in ("instructblip", "blip-2"):
        raise ConfigError(f"config.json has model_type {model_type!r}; expected 'instructblip' or 'blip-2'")
    fields: dict[str, Any] = {
        key: config_dict[key]
        for key in ("vision_config", "qformer_config", "text_config", "num_query_tokens", "image_token_index",
                    "initializer_factor", "initializer_range")
        if key in config_dict
    }
    qformer = dict(fields.get("qformer_config") or {})
    for key in ("use_qformer_text_input", "model_type", "transformers_version"):
        qformer.pop(key, None)
    fields["qformer_config"] = qformer
    vision = dict(fields.get("vision_config") or {})
    vision.pop("model_type", None)
    fields["vision_config"] = vision
    fields["qformer_text_input"] = model_type == "instructblip"
    fields.update(overrides)
    return RABlipConfig(**fields)
