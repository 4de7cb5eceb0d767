"""LAVIS -> rablip conversion: every key accounted for, converted weights load and match."""

from __future__ import annotations

import json
import re

import pytest
import torch

from rablip.models import RABlipForConditionalGeneration
from rablip.models.convert import REPORT_FILE, convert_lavis_checkpoint, map_lavis_key
from rablip.models.loading import CheckpointError
from rablip.synthetic.build import build_tiny_checkpoint, tiny_architecture

_VISION_LAYER = [
    ("layer_norm1.", "norm1."), ("layer_norm2.", "norm2."), ("self_attn.qkv.weight", "attn.qkv.weight"),
    ("self_attn.projection.", "attn.proj."), ("mlp.", "mlp."),
]


def _to_lavis_key(key: str) -> str:
    """Independent reverse of the mapping, written from LAVIS's module names."""
    direct = {
        "vision_model.embeddings.class_embedding": "visual_encoder.cls_token",
        "vision_model.embeddings.position_embedding": "visual_encoder.pos_embed",
        "vision_model.post_layernorm.weight": "ln_vision.weight",
        "vision_model.post_layernorm.bias": "ln_vision.bias",
        "qformer.embeddings.layernorm.weight": "Qformer.bert.embeddings.LayerNorm.weight",
        "qformer.embeddings.layernorm.bias": "Qformer.bert.embeddings.LayerNorm.bias",
        "slot_position_embeds": "pos_embeds",
        "slot_type_embeds": "type_embeds",
        "query_tokens": "query_tokens",
    }
    if key in direct:
        return direct[key]
    if key.startswith("vision_model.embeddings.patch_embedding."):
        return key.replace("vision_model.embeddings.patch_embedding.", "visual_encoder.patch_embed.proj.")
    layer = re.match(r"vision_model\.encoder\.layers\.(\d+)\.(.+)", key)
    if layer:
        index, part = layer.groups()
        for ours, theirs in _VISION_LAYER:
            if part.startswith(ours):
                return f"visual_encoder.blocks.{index}.{theirs}{part[len(ours):]}"
    if key.startswith("qformer."):
        return "Qformer.bert." + key[len("qformer."):].replace("attention.attention.", "attention.self.")
    if key.startswith("language_projection."):
        return key.replace("language_projection.", "t5_proj.")
    if key.startswith("language_model."):
        return key.replace("language_model.", "t5_model.")
    raise AssertionError(f"no LAVIS name for {key}")


def _lavis_state_dict(model) -> dict[str, torch.Tensor]:
    lavis = {}
    for key, tensor in model.state_dict().items():
        if key.endswith("self_attn.qkv.bias"):
            prefix = _to_lavis_key(key.replace("qkv.bias", "qkv.weight")).replace("qkv.weight", "")
            q_bias, _, v_bias = tensor.chunk(3)
            lavis[prefix + "q_bias"], lavis[prefix + "v_bias"] = q_bias.clone(), v_bias.clone()
        elif key == "slot_position_embeds":
            lavis["pos_embeds"] = tensor.clone().unsqueeze(0)  # stored as (1, S*Q, D)
        else:
            lavis[_to_lavis_key(key)] = tensor.clone()
    lavis["Qformer.bert.embeddings.position_ids"] = torch.arange(8).unsqueeze(0)
    lavis["Qformer.cls.predictions.bias"] = torch.zeros(3)
    lavis["vision_proj.weight"] = torch.zeros(2, 2)
    lavis["temp"] = torch.tensor(0.07)
    return lavis


@pytest.fixture(scope="module")
def source_model(tmp_path_factory):
    directory = build_tiny_checkpoint(tmp_path_factory.mktemp("lavis_src"), tiny_architecture("t5"), seed=9)
    model = RABlipForConditionalGeneration.from_pretrained(directory)
    with torch.no_grad():
        model.slot_type_embeds.normal_()
        model.slot_position_embeds.normal_()
    return model


def test_full_lavis_checkpoint_converts_and_loads(source_model, tiny_t5_dir, tmp_path):
    lavis = _lavis_state_dict(source_model)
    torch.save({"model": lavis, "epoch": 3}, tmp_path / "ra_blip.pth")
    report = convert_lavis_checkpoint(tmp_path / "ra_blip.pth", tmp_path / "out", base=tiny_t5_dir)
    assert set(report.mapped) | set(report.dropped) == set(lavis)
    assert set(report.dropped) == {"Qformer.bert.embeddings.position_ids", "Qformer.cls.predictions.bias",
                                   "vision_proj.weight", "temp"}
    assert json.loads((tmp_path / "out" / REPORT_FILE).read_text())["mapped"] == report.mapped
    loaded = RABlipForConditionalGeneration.from_pretrained(tmp_path / "out")
    expected = source_model.state_dict()
    for key, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, expected[key]), key


def test_trimmed_lavis_checkpoint_is_completed_from_base(source_model, tiny_t5_dir, tmp_path):
    """LAVIS saves only trained weights: Q-Former, query tokens, projection, ln_vision."""
    lavis = {key: value for key, value in _lavis_state_dict(source_model).items()
             if key.startswith(("Qformer.", "query_tokens", "t5_proj.", "ln_vision."))}
    torch.save(lavis, tmp_path / "trimmed.pth")
    report = convert_lavis_checkpoint(tmp_path / "trimmed.pth", tmp_path / "out", base=tiny_t5_dir)
    assert "vision_model.embeddings.class_embedding" in report.filled_from_base
    loaded = RABlipForConditionalGeneration.from_pretrained(tmp_path / "out")
    base = RABlipForConditionalGeneration.from_pretrained(tiny_t5_dir)
    source = source_model.state_dict()
    assert torch.equal(loaded.vision_model.post_layernorm.weight, source["vision_model.post_layernorm.weight"])
    assert torch.equal(loaded.vision_model.embeddings.class_embedding, base.vision_model.embeddings.class_embedding)
    assert torch.equal(loaded.qformer.encoder.layer[0].attention.attention.query.weight,
                       source["qformer.encoder.layer.0.attention.attention.query.weight"])
    assert torch.equal(loaded.language_model.shared.weight, base.language_model.shared.weight)


def test_unknown_key_is_an_error(tmp_path):
    torch.save({"query_tokens": torch.zeros(1, 4, 32), "mystery_head.weight": torch.zeros(2)}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="mystery_head.weight"):
        convert_lavis_checkpoint(tmp_path / "x.pth", tmp_path / "out")


def test_without_base_writes_renamed_weights(tmp_path):
    torch.save({"query_tokens": torch.ones(1, 4, 32), "llm_proj.weight": torch.ones(8, 32)}, tmp_path / "x.pth")
    report = convert_lavis_checkpoint(tmp_path / "x.pth", tmp_path / "out")
    assert report.mapped == {"query_tokens": "query_tokens", "llm_proj.weight": "language_projection.weight"}
    assert (tmp_path / "out" / "lavis_converted.safetensors").is_file()


def test_blip2_rules():
    assert map_lavis_key("Qformer.bert.embeddings.LayerNorm.weight", qformer_text_input=False)[0] == \
        "qformer.layernorm.weight"
    target, reason = map_lavis_key("Qformer.bert.encoder.layer.0.intermediate.dense.weight", qformer_text_input=False)
    assert target is None and "BLIP-2" in reason
    assert map_lavis_key("opt_model.lm_head.weight")[0] == "language_model.lm_head.weight"


def test_script_exit_code(tmp_path):
    from scripts.convert_lavis import main

    torch.save({"bogus": torch.zeros(1)}, tmp_path / "bad.pth")
    assert main(["--input", str(tmp_path / "bad.pth"), "--output", str(tmp_path / "o")]) == 2
    torch.save({"query_tokens": torch.zeros(1, 2, 4)}, tmp_path / "good.pth")
    assert main(["--input", str(tmp_path / "good.pth"), "--output", str(tmp_path / "o")]) == 0
