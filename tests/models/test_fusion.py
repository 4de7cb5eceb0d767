"""Fusion encoder and MultimodalRetrievalEncoder: norms, modality routing, instruction switch, save/load."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from transformers import (
    InstructBlipQFormerConfig,
    InstructBlipQFormerModel,
    InstructBlipVisionConfig,
    InstructBlipVisionModel,
)

from rablip.config.schema import FusionConfig
from rablip.errors import ConfigError, RablipError
from rablip.models.fusion import MultimodalRetrievalEncoder
from rablip.models.fusion_checkpoint import CONFIG_FILE
from rablip.models.fusion_layers import (
    TEXT,
    VISION,
    VISION_LANGUAGE,
    FusionEncoder,
    TokenSequence,
)
from rablip.models.vision import TimmVisionEncoder

VOCAB = 100
NUM_QUERIES = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def build_tiny_encoder(seed: int = 0, timm_vision: bool = False, **fusion_kwargs) -> MultimodalRetrievalEncoder:
    """Vision 32 wide / 2 layers (or timm's test_resnet projected to 32), Q-Former 32 wide / 2 layers,
    2 fusion layers; eval mode."""
    torch.manual_seed(seed)
    vision = TimmVisionEncoder("test_resnet", 32) if timm_vision else InstructBlipVisionModel(
        InstructBlipVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
            initializer_range=0.02,
        )
    )
    qformer = InstructBlipQFormerModel(
        InstructBlipQFormerConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            encoder_hidden_size=32,
            vocab_size=VOCAB,
            max_position_embeddings=64,
        )
    )
    query_tokens = nn.Parameter(torch.randn(1, NUM_QUERIES, 32) * 0.02)
    config = FusionConfig(
        **{"layers": 2, "heads": 4, "dim": 16, "vl_expert_layers": 1, **fusion_kwargs}
    )
    encoder = MultimodalRetrievalEncoder(vision, query_tokens, qformer, FusionEncoder(config, 32))
    return encoder.eval()


def text_ids(lengths: list[int], width: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Q-Former ids (first token 1 as [CLS], pad 0) and mask for rows of the given lengths."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        if length:
            ids[row, :length] = torch.randint(2, VOCAB, (length,), generator=gen)
            ids[row, 0] = 1
            mask[row, :length] = 1
    return ids, mask


def item_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Rows: 0 image-only, 1 text-only, 2 image+text, 3 image+text."""
    gen = torch.Generator().manual_seed(seed)
    ids, mask = text_ids([0, 5, 4, 6], seed=seed + 1)
    return {
        "pixel_values": torch.randn(4, 3, 32, 32, generator=gen),
        "image_mask": torch.tensor([True, False, True, True]),
        "qformer_input_ids": ids,
        "qformer_attention_mask": mask,
    }


def query_batch(seed: int = 10, n: int = 4) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids, mask = text_ids([3 + (i % 3) for i in range(n)], seed=seed + 1)
    return {
        "pixel_values": torch.randn(n, 3, 32, 32, generator=gen),
        "qformer_input_ids": ids,
        "qformer_attention_mask": mask,
    }


@torch.no_grad()
def test_embeddings_are_unit_norm_for_every_item_modality_and_queries():
    encoder = build_tiny_encoder()
    items = encoder.encode_items(item_batch())
    queries = encoder.encode_queries(query_batch())
    assert items.shape == (4, 16) and queries.shape == (4, 16)
    assert items.dtype == torch.float32
    torch.testing.assert_close(items.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(queries.norm(dim=-1), torch.ones(4))
    # The three modalities land in different places, not a collapsed constant.
    assert (items[0] - items[1]).abs().max() > 1e-3 and (items[1] - items[2]).abs().max() > 1e-3


@torch.no_grad()
def test_uninstructed_switch_changes_query_embeddings_only():
    encoder = build_tiny_encoder()
    queries, items = query_batch(), item_batch()
    instructed_q, instructed_i = encoder.encode_queries(queries), encoder.encode_items(items)
    encoder.instruct_queries = False
    uninstructed_q, uninstructed_i = encoder.encode_queries(queries), encoder.encode_items(items)
    assert (instructed_q - uninstructed_q).abs().max() > 1e-4
    torch.testing.assert_close(instructed_i, uninstructed_i)


@torch.no_grad()
def test_text_only_items_ignore_pixel_values():
    encoder = build_tiny_encoder()
    batch = item_batch()
    before = encoder.encode_items(batch)
    noisy = dict(batch, pixel_values=torch.randn_like(batch["pixel_values"]) * 5)
    after = encoder.encode_items(noisy)
    torch.testing.assert_close(before[1], after[1])
    assert (before[0] - after[0]).abs().max() > 1e-4  # image rows do depend on pixels


@torch.no_grad()
def test_row_embedding_does_not_depend_on_batch_neighbours():
    encoder = build_tiny_encoder()
    batch = item_batch()
    together = encoder.encode_items(batch)
    for row in range(4):
        alone = encoder.encode_items({key: value[row : row + 1] for key, value in batch.items()})
        torch.testing.assert_close(alone[0], together[row], atol=1e-5, rtol=1e-5)


def _perturb_expert(encoder: MultimodalRetrievalEncoder, expert_id: int) -> MultimodalRetrievalEncoder:
    changed = copy.deepcopy(encoder)
    with torch.no_grad():
        for layer in changed.fusion.layers:
            for param in layer.ffn.experts[expert_id].parameters():
                param.add_(torch.randn_like(param))
    return changed


@torch.no_grad()
def test_expert_routing_by_modality():
    encoder = build_tiny_encoder()
    batch = item_batch()  # 0 image-only, 1 text-only, 2-3 image+text
    base = encoder.encode_items(batch)

    def changed_rows(expert_id: int) -> list[bool]:
        out = _perturb_expert(encoder, expert_id).encode_items(batch)
        return [bool((out[row] - base[row]).abs().max() > 1e-5) for row in range(4)]

    assert changed_rows(VISION) == [True, False, True, True]  # fused rows use V in the lower layer
    assert changed_rows(TEXT) == [False, True, True, True]
    assert changed_rows(VISION_LANGUAGE) == [False, False, True, True]


def test_expert_ids_follow_the_documented_rule():
    fusion = FusionEncoder(FusionConfig(layers=3, heads=4, vl_expert_layers=1, dim=8), 32)
    modality = torch.tensor([[VISION, VISION, TEXT], [VISION, VISION, TEXT], [VISION, VISION, TEXT]])
    mask = torch.tensor([[True, True, False], [False, False, True], [True, True, True]])
    seq = TokenSequence(torch.zeros(3, 3, 32), modality, mask, torch.zeros(3, 3, dtype=torch.long))
    lower, _, top = fusion.expert_ids(seq)
    assert lower.tolist() == [
        [VISION, VISION, VISION, TEXT],
        [TEXT, VISION, VISION, TEXT],
        [VISION_LANGUAGE, VISION, VISION, TEXT],
    ]
    assert top[:2].tolist() == lower[:2].tolist()
    assert top[2].tolist() == [VISION_LANGUAGE] * 4


def test_rows_without_any_token_are_rejected():
    encoder = build_tiny_encoder()
    batch = item_batch()
    batch["image_mask"] = torch.tensor([False, False, True, True])  # row 0 now has no image and no text
    with pytest.raises(ValueError, match=r"rows \[0\]"):
        encoder.encode_items(batch)


def test_fusion_config_checks():
    with pytest.raises(ConfigError, match="vl_expert_layers"):
        FusionConfig(layers=2, vl_expert_layers=3)
    with pytest.raises(ConfigError, match="num_heads"):
        FusionEncoder(FusionConfig(heads=4), 30)


@pytest.mark.parametrize("timm_vision", [False, True], ids=["instructblip_vit", "timm"])
def test_save_and_load_round_trip(tmp_path, timm_vision):
    encoder = build_tiny_encoder(seed=3, timm_vision=timm_vision)
    encoder.instruct_queries = False
    encoder.save_pretrained(tmp_path / "enc")
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == [
        "retrieval_encoder.json",
        "retrieval_encoder.safetensors",
    ]
    loaded = MultimodalRetrievalEncoder.from_pretrained(tmp_path / "enc").eval()
    assert loaded.instruct_queries is False
    assert loaded.fusion.config == encoder.fusion.config
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_items(item_batch()), encoder.encode_items(item_batch()))
        torch.testing.assert_close(
            loaded.encode_queries(query_batch()), encoder.encode_queries(query_batch())
        )


def test_load_rejects_mismatched_weights(tmp_path):
    build_tiny_encoder().save_pretrained(tmp_path / "enc")
    config_path = tmp_path / "enc" / CONFIG_FILE
    meta = json.loads(config_path.read_text())
    meta["fusion"]["embed_dim"] = 8
    config_path.write_text(json.dumps(meta))
    with pytest.raises(RablipError, match="wrong shape"):
        MultimodalRetrievalEncoder.from_pretrained(tmp_path / "enc")
    with pytest.raises(RablipError, match="does not exist"):
        MultimodalRetrievalEncoder.from_pretrained(tmp_path / "missing")


def test_saved_fusion_section_keeps_its_layout(tmp_path):
    """Encoders saved before the one fusion config load, and re-saving writes the same section."""
    build_tiny_encoder().save_pretrained(tmp_path / "enc")
    meta = json.loads((tmp_path / "enc" / CONFIG_FILE).read_text())
    assert meta["fusion"] == {"num_layers": 2, "hidden_size": None, "num_heads": 4, "mlp_ratio": 4.0,
                              "vl_expert_layers": 1, "embed_dim": 16, "dropout": 0.0, "layer_norm_eps": 1e-6}
    assert MultimodalRetrievalEncoder.from_pretrained(tmp_path / "enc").fusion.config == FusionConfig(
        layers=2, heads=4, dim=16, vl_expert_layers=1)


def test_a_bad_fusion_shape_is_a_config_error_naming_the_key():
    from rablip.config import load_config

    with pytest.raises(ConfigError, match=r"model\.fusion\.vl_expert_layers.*command line"):
        load_config(None, ["model.fusion.layers=2", "model.fusion.vl_expert_layers=3"])
    assert load_config(None, []).model.fusion.heads == 0  # the Q-Former's heads (tests/models/test_fusion_heads.py)
