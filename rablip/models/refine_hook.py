"""Where RORA-VLM's query-oriented visual token refinement enters the model (off by default).

The selection is :func:`rablip.models.refine.refine_slot_patches`, a pure function over
(B, S, P, D) slot features and a (B, D) question embedding in the same space. Relevance is
measured in the key/query space of the Q-Former's first cross-attention layer, the space in which
the learned queries will attend to the patches: patches enter as cross-attention keys, the question
(slot 0's Q-Former instruction) as the masked mean of its cross-attention query projections. The
returned indices then select the original patch features.
"""

from __future__ import annotations

import torch
from torch import nn

from rablip.errors import ConfigError
from rablip.models.refine import refine_slot_patches
from rablip.models.slots import SlotBatch


def _has_cls_token(model: nn.Module) -> bool:
    if model.config.vision_backbone == "blip":
        return True
    return getattr(model.vision_model.backbone, "num_prefix_tokens", 0) > 0


def refinement_indices(
    model: nn.Module,
    patches: torch.Tensor,
    slots: SlotBatch,
    batch_index: torch.Tensor,
    slot_index: torch.Tensor,
    top_m: int,
) -> torch.Tensor | None:
    """Indices (N, m') into each real slot's P patches of the ``top_m`` query-relevant patches (plus
    CLS), or None when ``top_m`` keeps every patch."""
    has_cls = _has_cls_token(model)
    num_patches = patches.shape[1] - int(has_cls)
    if top_m >= num_patches:
        return None
    if slots.qformer_input_ids is None or not hasattr(model.qformer, "embeddings"):
        raise ConfigError("model.refine_top_m needs the instruction-aware (InstructBLIP) Q-Former and its input ids")
    batch_size, num_slots = slots.image_slot_mask.shape
    cross_layer = next(layer for layer in model.qformer.encoder.layer if layer.has_cross_attention)
    cross_attention = cross_layer.crossattention.attention
    with torch.no_grad():
        keys = cross_attention.key(patches)
        grid = keys.new_zeros(batch_size, num_slots, patches.shape[1], keys.shape[-1])
        grid[batch_index, slot_index] = keys
        text_ids = slots.qformer_input_ids[:, 0]
        text_mask = slots.qformer_attention_mask[:, 0].unsqueeze(-1).to(keys.dtype)
        word_embeds = model.qformer.embeddings.word_embeddings(text_ids).to(keys.dtype)
        text_queries = cross_attention.query(word_embeds)
        question = (text_queries * text_mask).sum(dim=1) / text_mask.sum(dim=1).clamp(min=1)
        _, indices = refine_slot_patches(grid, slots.image_slot_mask, question, top_m, has_cls=has_cls)
    return indices[batch_index, slot_index]  # (N, m'), real slots only: no -1 entries


def apply_refinement(
    model: nn.Module,
    patches: torch.Tensor,
    slots: SlotBatch,
    batch_index: torch.Tensor,
    slot_index: torch.Tensor,
    top_m: int,
) -> torch.Tensor:
    """Keep the ``top_m`` query-relevant patches (plus CLS) of each real slot: (N, P, Dv) -> (N, m', Dv)."""
    keep = refinement_indices(model, patches, slots, batch_index, slot_index, top_m)
    if keep is None:
        return patches
    return torch.gather(patches, 1, keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
