"""``multi_image="concat"``: RA-BLIP's release, several images of one example in ONE Q-Former pass.

For an example with real image slots (``image_slot_mask``) the computation is:

1. each real slot's patch features (the vision tower's output after its final layernorm, CLS
   included, P tokens; or the frozen-feature cache's copy of them);
2. + ``slot_type_embeds[r]`` where r is the image's rank among the example's real slots (0 for its
   first real slot, 1 for the next, ...), as the release numbers an example's images 1, 2 with the
   valid ones first;
3. concatenated in rank order, + ``patch_position_embeds`` over the concatenation (image r holds
   positions r*P ... r*P+P-1); the remaining ``max_image_slots`` - R image places are absent, i.e.
   masked out of the cross-attention exactly as the release masks its missing images;
4. ONE Q-Former pass (``num_query_tokens`` queries, the example's instruction: slot 0's row of
   ``qformer_input_ids``) -> ``language_projection`` -> ``num_query_tokens`` LLM image tokens.

An example without real slots gets no Q-Former pass and no image tokens (the release would still run
its queries over fully masked images; rablip's prompt packer then writes no image placeholders).
With refinement (``refine_top_m``), each slot keeps its top-m patches (plus CLS) first; a kept
patch keeps the position embedding of its ORIGINAL place (``r*P + index``), so the position table
means the same with and without refinement. Both tables start at zero: a model loaded from any
InstructBLIP checkpoint computes, for one image, exactly what InstructBLIP computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rablip.models.qformer import run_qformer
from rablip.models.refine_hook import refinement_indices
from rablip.models.slots import SlotBatch


@dataclass
class ExampleFeatures:
    """Q-Former outputs of the examples that hold at least one real image slot (concat mode)."""

    query_output: torch.Tensor  # (N, Q, Dq)
    language_inputs: torch.Tensor  # (N, Q, Dl), projected into the LLM's embedding space
    batch_index: torch.Tensor  # (N,) example of each row


def vision_tokens_per_image(config, vision_model: nn.Module) -> int:
    """P: the patch features the vision tower gives per image at its configured size, CLS included
    (a timm backbone without a ViT patch embedding is probed once with a blank image)."""
    vision = config.vision_config
    if config.vision_backbone == "blip":
        return (vision.image_size // vision.patch_size) ** 2 + 1
    backbone = vision_model.backbone
    patch_embed = getattr(backbone, "patch_embed", None)
    if patch_embed is not None and hasattr(patch_embed, "num_patches"):
        return int(patch_embed.num_patches) + int(getattr(backbone, "num_prefix_tokens", 0))
    weight = next(vision_model.parameters())
    training = vision_model.training
    vision_model.eval()  # no batch-norm statistics move
    try:
        with torch.no_grad():
            blank = torch.zeros(1, 3, vision.image_size, vision.image_size, device=weight.device, dtype=weight.dtype)
            return int(vision_model(blank).last_hidden_state.shape[1])
    finally:
        vision_model.train(training)


def patch_position_table(config, vision_model: nn.Module) -> nn.Parameter:
    """The zero-initialised ``patch_position_embeds`` (1, max_image_slots * P, Dv)."""
    tokens = vision_tokens_per_image(config, vision_model)
    return nn.Parameter(torch.zeros(1, config.max_image_slots * tokens, config.vision_config.hidden_size))


def image_ranks(image_slot_mask: torch.Tensor, batch_index: torch.Tensor, slot_index: torch.Tensor) -> torch.Tensor:
    """Rank of each listed real slot among its example's real slots (0 for the first)."""
    return (image_slot_mask.long().cumsum(dim=1) - 1)[batch_index, slot_index]


def concat_example_features(model: nn.Module, slots: SlotBatch, interpolate_pos_encoding: bool = False) -> ExampleFeatures:
    """Vision tower, tables, ONE Q-Former pass per example and projection (see the module docstring)."""
    config = model.config
    mask = slots.image_slot_mask
    examples = mask.any(dim=1).nonzero().flatten()
    batch_index, slot_index = mask.nonzero(as_tuple=True)
    if batch_index.numel() == 0:
        empty = model.query_tokens.new_zeros(0, config.num_query_tokens, config.qformer_config.hidden_size)
        return ExampleFeatures(empty, model.language_projection(empty), examples)
    patches = model.real_slot_patches(slots, batch_index, slot_index, interpolate_pos_encoding)  # (N, P, Dv)
    tokens = patches.shape[1]
    table = model.patch_position_embeds
    if table is not None and tokens * config.max_image_slots != table.shape[1]:
        raise ValueError(
            f"images give {tokens} patch features each, the patch position table is sized for "
            f"{table.shape[1] // config.max_image_slots} (multi_image='concat' needs the configured image size)"
        )
    positions = torch.arange(tokens, device=patches.device).expand(patches.shape[0], -1)
    if config.refine_top_m is not None:
        keep = refinement_indices(model, patches, slots, batch_index, slot_index, config.refine_top_m)
        if keep is not None:
            patches = torch.gather(patches, 1, keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
            positions = keep
    rank = image_ranks(mask, batch_index, slot_index)
    if model.slot_type_embeds is not None:
        patches = patches + model.slot_type_embeds[rank].unsqueeze(1).to(patches.dtype)
    if table is not None:
        patches = patches + table[0][rank.unsqueeze(1) * tokens + positions].to(patches.dtype)
    # (N, m, Dv) real images -> (E, R * m, Dv): example e's image r at places r*m ... r*m+m-1
    row = (mask.any(dim=1).long().cumsum(dim=0) - 1)[batch_index]
    most = int(mask.sum(dim=1).max())
    kept, width = patches.shape[1], patches.shape[2]
    grid = patches.new_zeros(examples.numel(), most, kept, width)
    grid[row, rank] = patches
    grid_mask = torch.zeros(examples.numel(), most, kept, dtype=torch.long, device=patches.device)
    grid_mask[row, rank] = 1
    instruction_ids = instruction_mask = None
    if slots.qformer_input_ids is not None:
        instruction_ids = slots.qformer_input_ids[examples, 0]
        instruction_mask = slots.qformer_attention_mask[examples, 0]
    query_tokens = model.query_tokens.expand(examples.numel(), -1, -1)
    query_output = run_qformer(
        model.qformer, query_tokens, grid.view(examples.numel(), most * kept, width),
        grid_mask.view(examples.numel(), most * kept), instruction_ids, instruction_mask,
    )
    language_inputs = model.language_projection(query_output.to(model.language_projection.weight.dtype))
    return ExampleFeatures(query_output, language_inputs, examples)
