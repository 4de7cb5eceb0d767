"""RA-BLIP release checkpoints -> a ``multi_image: concat`` rablip model.

A release-layout state dict is written from a tiny transformers InstructBLIP (another seed than the
base dir, so every weight must come from the file) under the release's LAVIS key names, with random
``type_embeds`` / ``pos_embeds``. The converted model's logits are compared with the release's
forward, written below from its formulas with the tiny model's parts as building blocks.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import InstructBlipForConditionalGeneration

from rablip.models import RABlipForConditionalGeneration
from rablip.models.loading import CheckpointError
from rablip.models.release_convert import convert_release_checkpoint, convert_release_state_dict
from rablip.synthetic.build import build_tiny_checkpoint, tiny_architecture
from tests.models.test_convert import _to_lavis_key  # the release names its modules as LAVIS does


def _release_state_dict(source, type_embeds, pos_embeds) -> dict[str, torch.Tensor]:
    """What the release's ``torch.save(model.state_dict())`` holds (T5's tied tables share storage)."""
    state = {"type_embeds": type_embeds.clone(), "pos_embeds": pos_embeds.clone()}
    for key, tensor in source.state_dict().items():
        if key.endswith("self_attn.qkv.bias"):  # EVA: q and v biases, no k bias
            prefix = _to_lavis_key(key.replace("qkv.bias", "qkv.weight")).replace("qkv.weight", "")
            q_bias, _, v_bias = tensor.chunk(3)
            state[prefix + "q_bias"], state[prefix + "v_bias"] = q_bias.clone(), v_bias.clone()
        else:
            state[_to_lavis_key(key)] = tensor if key.startswith("language_model.") else tensor.clone()
    state["Qformer.bert.embeddings.position_ids"] = torch.arange(64).unsqueeze(0)
    return state


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """(source InstructBLIP, type_embeds (2,1,1,Dv), pos_embeds (1,2P,Dv)): the release's trained model."""
    directory = build_tiny_checkpoint(tmp_path_factory.mktemp("release_src"), tiny_architecture("t5"), seed=11)
    source = InstructBlipForConditionalGeneration.from_pretrained(directory).eval()
    vision = source.config.vision_config
    tokens = (vision.image_size // vision.patch_size) ** 2 + 1
    generator = torch.Generator().manual_seed(5)
    type_embeds = 0.5 * torch.randn(2, 1, 1, vision.hidden_size, generator=generator)
    pos_embeds = 0.5 * torch.randn(1, 2 * tokens, vision.hidden_size, generator=generator)
    return source, type_embeds, pos_embeds


@pytest.fixture(scope="module")
def converted(release, tiny_t5_dir, tmp_path_factory):
    """(converted model, report, its dir, the release .pth, the release state dict)."""
    root = tmp_path_factory.mktemp("release_out")
    state = _release_state_dict(*release)
    torch.save(state, root / "t5_model_epoch_9.pth")
    report = convert_release_checkpoint(root / "t5_model_epoch_9.pth", root / "model", base=tiny_t5_dir)
    model = RABlipForConditionalGeneration.from_pretrained(root / "model").eval()
    return model, report, root / "model", root / "t5_model_epoch_9.pth", state


def _release_logits(source, type_embeds, pos_embeds, batch) -> torch.Tensor:
    """The release's forward: per image ViT -> ln_vision -> + type_embeds[i]; the two concatenated,
    + pos_embeds; missing images masked (valid_image_num); ONE Q-Former pass; t5_proj; prepended to T5."""
    images, valid = batch["images"], batch["valid"]
    per_image = [source.vision_model(pixel_values=images[:, i]).last_hidden_state + type_embeds[i] for i in range(2)]
    image_embeds = torch.cat(per_image, dim=1) + pos_embeds
    tokens = per_image[0].shape[1]
    image_atts = torch.ones(image_embeds.shape[:2], dtype=torch.long)
    image_atts[valid < 2, tokens:] = 0
    image_atts[valid < 1] = 0
    query_tokens = source.query_tokens.expand(len(images), -1, -1)
    query_atts = torch.ones(query_tokens.shape[:2], dtype=torch.long)
    query_output = source.qformer(
        input_ids=batch["qformer_ids"], attention_mask=torch.cat([query_atts, batch["qformer_mask"]], dim=1),
        query_embeds=query_tokens, encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts,
    ).last_hidden_state[:, : query_tokens.shape[1]]
    inputs_t5 = source.language_projection(query_output)
    embeds = torch.cat([inputs_t5, source.language_model.get_input_embeddings()(batch["t5_ids"])], dim=1)
    return source.language_model(
        inputs_embeds=embeds, attention_mask=torch.cat([query_atts, batch["t5_mask"]], dim=1),
        decoder_input_ids=batch["decoder_ids"],
    ).logits


def _batch(valid: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    size = len(valid)
    images = torch.randn(size, 2, 3, 32, 32, generator=generator)
    for row, count in enumerate(valid):
        images[row, count:] = 0.0  # the release's missing images are zero tensors
    qformer_mask = torch.ones(size, 6, dtype=torch.long)
    qformer_mask[-1, -2:] = 0
    t5_mask = torch.ones(size, 5, dtype=torch.long)
    t5_mask[0, -1] = 0
    return {
        "images": images, "valid": torch.tensor(valid),
        "qformer_ids": torch.randint(1, 90, (size, 6), generator=generator) * qformer_mask, "qformer_mask": qformer_mask,
        "t5_ids": torch.randint(3, 100, (size, 5), generator=generator) * t5_mask, "t5_mask": t5_mask,
        "decoder_ids": torch.randint(3, 100, (size, 4), generator=generator),
    }


def _rablip_logits(model, batch) -> torch.Tensor:
    """The same batch in rablip's contract: 2 slots, real where the release's image is valid."""
    size, num_queries = len(batch["valid"]), model.config.num_query_tokens
    image_tokens = torch.full((size, num_queries), model.config.image_token_index)
    return model(
        pixel_values=batch["images"], image_slot_mask=torch.arange(2) < batch["valid"][:, None],
        qformer_input_ids=batch["qformer_ids"][:, None].expand(-1, 2, -1),
        qformer_attention_mask=batch["qformer_mask"][:, None].expand(-1, 2, -1),
        input_ids=torch.cat([image_tokens, batch["t5_ids"]], dim=1),
        attention_mask=torch.cat([torch.ones_like(image_tokens), batch["t5_mask"]], dim=1),
        decoder_input_ids=batch["decoder_ids"],
    ).logits


@pytest.mark.parametrize("valid", [[2, 1], [1, 1], [2, 2]], ids=["two_and_missing_second", "one_each", "two_each"])
def test_converted_model_computes_the_release_forward(release, converted, valid):
    model = converted[0]
    batch = _batch(valid, seed=len(valid) + sum(valid))
    with torch.no_grad():
        expected = _release_logits(*release, batch)
        got = _rablip_logits(model, batch)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_parity_is_not_vacuous(release, tiny_t5_dir):
    """The tables and the release's weights all enter the computation (the base's give other logits)."""
    source, type_embeds, pos_embeds = release
    batch = _batch([2, 1], seed=4)
    with torch.no_grad():
        expected = _release_logits(source, type_embeds, pos_embeds, batch)
        without_type = _release_logits(source, torch.zeros_like(type_embeds), pos_embeds, batch)
        without_position = _release_logits(source, type_embeds, torch.zeros_like(pos_embeds), batch)
        base = RABlipForConditionalGeneration.from_pretrained(tiny_t5_dir, multi_image="concat", max_image_slots=2)
        from_base = _rablip_logits(base.eval(), batch)
    for other in (without_type, without_position, from_base):
        assert (other - expected).abs().max() > 1e-3


def test_every_key_is_accounted_for_and_the_config_says_concat(converted, release):
    model, report, directory, _, state = converted
    assert set(report.mapped) | set(report.dropped) == set(state) and not report.unknown
    assert set(report.dropped) == {"Qformer.bert.embeddings.position_ids"}
    assert report.mapped["type_embeds"] == "slot_type_embeds"
    assert report.mapped["pos_embeds"] == "patch_position_embeds"
    config = json.loads((directory / "config.json").read_text())
    assert config["multi_image"] == "concat" and config["max_image_slots"] == 2
    _, type_embeds, pos_embeds = release
    assert torch.equal(model.slot_type_embeds, type_embeds.reshape(2, -1))
    assert torch.equal(model.patch_position_embeds, pos_embeds)
    assert any("dense_act_fn='gelu'" in note for note in report.notes)  # the tiny base's T5 runs ReLU


def _minimal_release(**extra: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"type_embeds": torch.ones(2, 1, 1, 8), "pos_embeds": torch.ones(1, 10, 8),
            "query_tokens": torch.ones(1, 4, 16), **extra}


def test_fusion_module_and_heads_are_dropped_by_named_rules():
    state = _minimal_release(**{
        "fuse_vl_module.0.attention.self.query.weight": torch.ones(16, 16),
        "vl_fuse.fuse_vl_module.2.output_vl_fusion.dense.bias": torch.ones(16),
        "cls_head.dense.weight": torch.ones(32, 32), "cls_head.dense.bias": torch.ones(32),
        "cls_head.out_proj.weight": torch.ones(2, 32), "cls_head.out_proj.bias": torch.ones(2),
        "pooler.dense.weight": torch.ones(16, 16), "pooler.dense.bias": torch.ones(16),
    })
    converted, report = convert_release_state_dict(state)
    assert set(converted) == {"slot_type_embeds", "patch_position_embeds", "query_tokens"}
    assert converted["slot_type_embeds"].shape == (2, 8)
    assert all("VLFuseModule" in report.dropped[key] for key in state if "fuse_vl_module" in key)
    assert all("T5ClassificationHead" in report.dropped[key] for key in state if key.startswith("cls_head."))
    assert all("BertPooler" in report.dropped[key] for key in state if key.startswith("pooler."))


@pytest.mark.parametrize("extra", [
    {"mystery_head.weight": torch.ones(2)},
    {"opt_proj.weight": torch.ones(8, 16)},  # a LAVIS OPT key: the release is T5 only
    {"cls_head.dense.weight": torch.ones(32, 32), "cls_head.dense.bias": torch.ones(32),
     "cls_head.out_proj.weight": torch.ones(3, 32), "cls_head.out_proj.bias": torch.ones(3)},  # not 2-way
])
def test_unknown_keys_are_refused_by_name(extra):
    with pytest.raises(CheckpointError, match=re.escape(sorted(extra)[0])):
        convert_release_state_dict(_minimal_release(**extra))


def test_a_checkpoint_without_the_release_tables_is_refused():
    with pytest.raises(CheckpointError, match="pos_embeds.*--layout lavis"):
        convert_release_state_dict({"type_embeds": torch.ones(2, 1, 1, 8), "query_tokens": torch.ones(1, 4, 16)})
    with pytest.raises(CheckpointError, match="type_embeds has shape"):
        convert_release_state_dict(_minimal_release(type_embeds=torch.ones(3, 1, 1, 8)))


def test_script_layout_release(converted, tiny_t5_dir, tmp_path):
    from scripts.convert_lavis import main

    pth = converted[3]
    assert main(["--layout", "release", "--input", str(pth), "--output", str(tmp_path / "a")]) == 2
    assert main(["--layout", "release", "--input", str(pth), "--output", str(tmp_path / "b"),
                 "--base", str(tiny_t5_dir)]) == 0
    assert json.loads((tmp_path / "b" / "config.json").read_text())["multi_image"] == "concat"
