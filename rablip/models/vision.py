"""The vision encoder choice: transformers' BLIP vision tower or a timm backbone.

Both return ``BaseModelOutputWithPooling`` whose ``last_hidden_state`` (N, P, D) holds the patch
features the Q-Former cross-attends to, D being ``config.vision_config.hidden_size``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Blip2VisionConfig, Blip2VisionModel, InstructBlipVisionModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from rablip.errors import ConfigError
from rablip.models.config import RABlipConfig

TIMM_MODEL_TYPE = "timm"
"""``model_type`` in the saved description of a :class:`TimmVisionEncoder` (transformers' vision
configs carry their own)."""


class TimmVisionEncoder(nn.Module):
    """A timm backbone (created with ``pretrained=False``) whose tokens are projected to ``out_width``
    and layer-normalised.

    ViT-like backbones give (N, P, C) tokens from ``forward_features``; convolutional ones give
    (N, C, h, w) maps, flattened to h*w tokens. A linear projection maps C to ``out_width`` when
    they differ.
    """

    def __init__(self, model_name: str, out_width: int, timm_kwargs: dict | None = None):
        super().__init__()
        import timm

        try:
            self.backbone = timm.create_model(model_name, pretrained=False, num_classes=0, **(timm_kwargs or {}))
        except (RuntimeError, TypeError, ValueError) as error:
            raise ConfigError(f"model.timm_model_name={model_name!r} with {timm_kwargs}: {error}") from error
        width = self.backbone.num_features
        self.proj = nn.Linear(width, out_width) if width != out_width else nn.Identity()
        # BLIP's ViT ends in a LayerNorm, so the Q-Former always cross-attends to normalised tokens;
        # a convolutional backbone's raw activations are not (test_resnet's: std about 4).
        self.norm = nn.LayerNorm(out_width)
        self.description = {"model_type": TIMM_MODEL_TYPE, "model_name": model_name, "out_width": out_width,
                            "timm_kwargs": dict(timm_kwargs or {})}

    @classmethod
    def from_description(cls, description: dict) -> TimmVisionEncoder:
        """The (untrained) encoder :attr:`description` describes, for loading saved weights into."""
        return cls(description["model_name"], description["out_width"], description.get("timm_kwargs"))

    def forward(self, pixel_values: torch.Tensor, **_: object) -> BaseModelOutputWithPooling:
        """Return projected patch tokens (N, P, out_width) and their mean as ``pooler_output``."""
        weight = next(self.backbone.parameters())
        features = self.backbone.forward_features(pixel_values.to(weight.dtype))
        if features.dim() == 4:
            features = features.flatten(2).transpose(1, 2)
        tokens = self.norm(self.proj(features))
        return BaseModelOutputWithPooling(last_hidden_state=tokens, pooler_output=tokens.mean(dim=1))


def build_vision_model(config: RABlipConfig) -> nn.Module:
    """The vision tower named by ``config.vision_backbone`` (BLIP-2's class when the Q-Former is BLIP-2's)."""
    if config.vision_backbone == "timm":
        return TimmVisionEncoder(config.timm_model_name, config.vision_config.hidden_size, config.timm_kwargs)
    if config.qformer_text_input:
        return InstructBlipVisionModel._from_config(config.vision_config)
    fields = config.vision_config.to_dict()
    for key in ("model_type", "transformers_version"):
        fields.pop(key, None)
    return Blip2VisionModel._from_config(Blip2VisionConfig(**fields))
