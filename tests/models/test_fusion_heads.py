"""model.fusion.heads: 0 (the default) takes the Q-Former's attention heads; an explicit number wins;
a saved encoder records the resolved number and loads unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rablip.config import load_config
from rablip.config.schema import FusionConfig
from rablip.errors import ConfigError
from rablip.models.factory import build_retrieval_encoder, load_generator
from rablip.models.fusion import MultimodalRetrievalEncoder
from rablip.models.fusion_layers import FusionEncoder, with_resolved_heads
from rablip.synthetic.build import build_tiny_checkpoint, tiny_architecture

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def two_head_generator(tmp_path_factory):
    """A tiny generator whose Q-Former has 2 attention heads (32 wide)."""
    architecture = tiny_architecture("t5")
    architecture["qformer"]["num_attention_heads"] = 2
    path = build_tiny_checkpoint(tmp_path_factory.mktemp("two_heads"), architecture, seed=4)
    cfg = load_config(None, [f"model.checkpoint={path}"])
    return cfg, load_generator(cfg)


def layer_heads(encoder: MultimodalRetrievalEncoder) -> list[int]:
    return [layer.attn.num_heads for layer in encoder.fusion.layers]


def test_default_heads_are_the_qformers_and_an_explicit_number_wins(two_head_generator, tmp_path):
    cfg, generator = two_head_generator
    assert cfg.model.fusion.heads == 0
    encoder = build_retrieval_encoder(cfg, generator)
    assert encoder.fusion.config.heads == 2 and layer_heads(encoder) == [2] * cfg.model.fusion.layers

    explicit = load_config(None, [f"model.checkpoint={cfg.model.checkpoint}", "model.fusion.heads=4"])
    assert layer_heads(build_retrieval_encoder(explicit, generator)) == [4] * explicit.model.fusion.layers

    encoder.save_pretrained(tmp_path / "enc")
    saved = json.loads((tmp_path / "enc" / "retrieval_encoder.json").read_text())
    assert saved["fusion"]["num_heads"] == 2
    loaded = MultimodalRetrievalEncoder.from_pretrained(tmp_path / "enc")
    assert loaded.fusion.config == encoder.fusion.config and layer_heads(loaded) == layer_heads(encoder)


def test_resolution_and_checks():
    assert with_resolved_heads(FusionConfig(), 12).heads == 12  # the published sizes' Q-Former
    assert with_resolved_heads(FusionConfig(heads=4), 12).heads == 4
    with pytest.raises(ValueError, match="with_resolved_heads"):
        FusionEncoder(FusionConfig(), 32)
    with pytest.raises(ConfigError, match=r"model\.fusion\.heads"):
        load_config(None, ["model.fusion.heads=-1"])
    # The tiny model's config keeps its explicit 4 heads, so the synthetic demo does not change.
    assert load_config(str(ROOT / "configs/experiment/synthetic_pretrain.yaml"), ["data.root=/tmp/x"]).model.fusion.heads == 4
