"""``RablipLlavaConfig``: transformers' LLaVA configuration plus what rablip's generators share.

The LLaVA-1.5 family (RORA-VLM's base: CLIP ViT-L/14-336 tower, 2-layer MLP projector, Vicuna-7B)
keeps every field of transformers' :class:`~transformers.LlavaConfig` (``vision_config``,
``text_config``, ``image_token_index``, ``vision_feature_layer``, ``vision_feature_select_strategy``,
...) unchanged, so a llava-hf ``config.json`` converts into it without loss
(:func:`llava_config_from_transformers`). rablip adds the fields its stages read from any generator:
``max_image_slots`` (question image + references), ``trainable_modules`` and ``base_checkpoint``
(trainable-only checkpoints), with the same meaning as in
:class:`rablip.models.config.RABlipConfig`, and RORA-VLM's visual token refinement
(``refine_top_m``, ``refine_space``: :mod:`rablip.models.llava_refine`). ``patch_tokens`` (the vision
tower's tokens per image), ``num_query_tokens`` (LLM image tokens per image: ``patch_tokens``, or
``refine_top_m`` when that is fewer) and ``multi_image`` are derived, not stored: LLaVA has no
Q-Former, every image is its own block of patch tokens.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import LlavaConfig

from rablip.config.schema import REFINE_SPACES
from rablip.errors import ConfigError

#: Module groups of the LLaVA generator that ``trainable_modules`` may name.
LLAVA_MODULE_GROUPS = ("vision_model", "language_projection", "language_model")

#: rablip's default for LLaVA: frozen CLIP tower and LLM, the projector trains (LLaVA-1.5's own
#: stage-2 recipe also trains the LLM; rablip adds LoRA on it through ``model.lora`` instead).
DEFAULT_LLAVA_TRAINABLE = ["language_projection"]

#: Fields rablip adds to LLaVA's config (also the keys accepted as loading overrides).
RABLIP_LLAVA_FIELDS = ("max_image_slots", "trainable_modules", "base_checkpoint", "refine_top_m", "refine_space")

#: Keys of a transformers config.json that are bookkeeping, not configuration.
_BOOKKEEPING = ("model_type", "architectures", "transformers_version", "_name_or_path")


@strict
class RablipLlavaConfig(LlavaConfig):
    r"""LLaVA's config with rablip's multi-image and training fields.

    max_image_slots (`int`, defaults to 8):
        Most image slots per example (question image + retrieved images).
    trainable_modules (`list[str]`, optional):
        Module groups that train (see ``LLAVA_MODULE_GROUPS``); None means ``DEFAULT_LLAVA_TRAINABLE``.
    base_checkpoint (`str`, optional):
        For a trainable-only rablip checkpoint: the checkpoint dir holding the frozen weights.
    refine_top_m (`int`, optional):
        RORA-VLM query-oriented visual token refinement: keep this many visual tokens per image (None: all).
    refine_space (`str`, defaults to `"projected"`):
        Where the refinement scores tokens: ``projected`` or ``vision`` (:mod:`rablip.models.llava_refine`).
    """

    model_type = "rablip_llava"

    max_image_slots: int = 8
    trainable_modules: list[str] | None = None
    base_checkpoint: str | None = None
    refine_top_m: int | None = None
    refine_space: str = "projected"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.trainable_modules is None:
            self.trainable_modules = list(DEFAULT_LLAVA_TRAINABLE)
        check_llava_fields(self)

    @property
    def patch_tokens(self) -> int:
        """The vision tower's tokens per image: one per patch, plus CLS with the ``full`` feature
        strategy (``default``, LLaVA-1.5's, drops it): 576 for CLIP ViT-L/14 at 336 px."""
        vision = self.vision_config
        patches = (vision.image_size // vision.patch_size) ** 2
        return patches + (1 if self.vision_feature_select_strategy == "full" else 0)

    @property
    def num_query_tokens(self) -> int:
        """LLM image tokens per image: ``patch_tokens``, or ``refine_top_m`` when refinement keeps fewer."""
        if self.refine_top_m is None:
            return self.patch_tokens
        return min(self.refine_top_m, self.patch_tokens)

    @property
    def multi_image(self) -> str:
        """Always ``per_slot``: each real image slot is its own block of image tokens."""
        return "per_slot"


def check_llava_fields(config: RablipLlavaConfig) -> None:
    """Raise :class:`ConfigError` naming the field when a rablip field holds a bad value."""
    unknown = [name for name in config.trainable_modules if name not in LLAVA_MODULE_GROUPS]
    if unknown:
        raise ConfigError(
            f"model.trainable: {unknown} are not module groups of the LLaVA generator (it has no Q-Former, "
            f"query tokens or slot tables); choose from {list(LLAVA_MODULE_GROUPS)} (the fusion encoder aside)"
        )
    if config.max_image_slots < 1:
        raise ConfigError(f"model.max_image_slots must be >= 1, got {config.max_image_slots}")
    if config.refine_top_m is not None and config.refine_top_m < 1:
        raise ConfigError(f"model.refine_top_m must be >= 1 or null, got {config.refine_top_m}")
    if config.refine_space not in REFINE_SPACES:
        raise ConfigError(f"model.refine_space {config.refine_space!r} is not one of {list(REFINE_SPACES)}")
    if config.vision_config.image_size % config.vision_config.patch_size:
        raise ConfigError(
            f"LLaVA vision_config: image_size {config.vision_config.image_size} is not a multiple of patch_size "
            f"{config.vision_config.patch_size}"
        )


def llava_config_from_transformers(config_dict: dict[str, Any], overrides: dict[str, Any]) -> RablipLlavaConfig:
    """A :class:`RablipLlavaConfig` from a transformers LLaVA ``config.json`` dict (``model_type: llava``)
    or a rablip one (``rablip_llava``); ``overrides`` set rablip fields (keys of ``RABLIP_LLAVA_FIELDS``)."""
    model_type = config_dict.get("model_type")
    if model_type not in ("llava", RablipLlavaConfig.model_type):
        raise ConfigError(f"config.json has model_type {model_type!r}; expected 'llava' or 'rablip_llava'")
    unknown = sorted(set(overrides) - set(RABLIP_LLAVA_FIELDS))
    if unknown:
        raise ConfigError(f"unknown LLaVA model override(s) {unknown}; allowed: {list(RABLIP_LLAVA_FIELDS)}")
    fields = {key: value for key, value in config_dict.items() if key not in _BOOKKEEPING}
    fields.update(overrides)
    return RablipLlavaConfig(**fields)
