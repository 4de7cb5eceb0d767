"""A timm vision backbone (created from config, pretrained=False) in place of the BLIP vision tower."""

from __future__ import annotations

import pytest
import torch

from rablip.errors import ConfigError
from rablip.models import RABlipConfig, RABlipForConditionalGeneration
from rablip.synthetic.build import tiny_architecture

from .conftest import make_batch

TIMM_KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 24, "depth": 1, "num_heads": 2}


def _timm_config(**extra) -> RABlipConfig:
    architecture = tiny_architecture("t5")
    fields = {"timm_model_name": "vit_tiny_patch16_224", **extra}
    return RABlipConfig(
        vision_config=architecture["vision"],
        qformer_config=architecture["qformer"],
        text_config=architecture["text"],
        num_query_tokens=architecture["num_query_tokens"],
        image_token_index=architecture["text"]["vocab_size"] - 1,
        vision_backbone="timm",
        timm_kwargs=TIMM_KWARGS,
        **fields,
    )


def test_timm_backbone_forward_and_round_trip(tmp_path):
    model = RABlipForConditionalGeneration(_timm_config()).eval()
    assert isinstance(model.vision_model.proj, torch.nn.Linear)  # 24-wide tokens projected to 32
    batch = make_batch(model.config, [[True, False, True], [True, True, False]])
    with torch.no_grad():
        output = model(**batch)
    assert output.logits.shape == (2, 4, model.config.text_config.vocab_size)
    patches = model.encode_images(batch["pixel_values"][:, 0])
    assert patches.shape == (2, 1 + 16, model.config.vision_config.hidden_size)
    model.save_pretrained(tmp_path / "timm_full")
    loaded = RABlipForConditionalGeneration.from_pretrained(tmp_path / "timm_full").eval()
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, output.logits)


def test_timm_backbone_needs_a_name():
    with pytest.raises(ConfigError, match="timm_model_name"):
        _timm_config(timm_model_name=None)
