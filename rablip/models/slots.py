"""Normalizing model inputs to the multi-slot layout of the batch contract.

InstructBLIP's single-image shapes ((B, 3, H, W) pixels, (B, Lq) instruction) become one slot.
Slots may also come with precomputed patch features (``image_embeds`` (B, S, P, D), from the
frozen-feature cache): where ``image_embeds_mask`` is True the model uses them instead of running
the vision tower on that slot's pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SlotBatch:
    """Image slots of a batch: pixels (B, S, 3, H, W), instruction (B, S, Lq), real-slot mask (B, S), and
    optionally precomputed patch features (B, S, P, D) with the mask (B, S) of the slots that use them."""

    pixel_values: torch.Tensor
    qformer_input_ids: torch.Tensor | None
    qformer_attention_mask: torch.Tensor | None
    image_slot_mask: torch.Tensor
    image_embeds: torch.Tensor | None = None
    image_embeds_mask: torch.Tensor | None = None


def _check_image_embeds(
    image_embeds: torch.Tensor | None,
    image_embeds_mask: torch.Tensor | None,
    image_slot_mask: torch.Tensor,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Bring (B, P, D) features to one slot, default the mask to the real slots, and check both."""
    if image_embeds is None:
        if image_embeds_mask is not None:
            raise ValueError("image_embeds_mask was given without image_embeds")
        return None, None
    batch_size, num_slots = image_slot_mask.shape
    if image_embeds.dim() == 3:
        image_embeds = image_embeds.unsqueeze(1)
    if image_embeds.dim() != 4 or tuple(image_embeds.shape[:2]) != (batch_size, num_slots):
        raise ValueError(
            f"image_embeds must be (B, S, P, D) with (B, S) = ({batch_size}, {num_slots}) as pixel_values, "
            f"got {tuple(image_embeds.shape)}"
        )
    if image_embeds_mask is None:
        image_embeds_mask = image_slot_mask
    if tuple(image_embeds_mask.shape) != (batch_size, num_slots):
        raise ValueError(
            f"image_embeds_mask {tuple(image_embeds_mask.shape)} does not match the slots ({batch_size}, {num_slots})"
        )
    image_embeds_mask = image_embeds_mask.bool()
    if (image_embeds_mask & ~image_slot_mask).any():
        raise ValueError("image_embeds_mask marks slots that image_slot_mask says hold no image")
    return image_embeds, image_embeds_mask


def normalize_slot_inputs(
    pixel_values: torch.Tensor,
    qformer_input_ids: torch.Tensor | None,
    qformer_attention_mask: torch.Tensor | None,
    image_slot_mask: torch.Tensor | None,
    max_image_slots: int,
    image_embeds: torch.Tensor | None = None,
    image_embeds_mask: torch.Tensor | None = None,
) -> SlotBatch:
    """Check shapes and bring single-image inputs to one slot; ``image_slot_mask`` defaults to all True,
    ``image_embeds_mask`` (when ``image_embeds`` is given) to ``image_slot_mask``."""
    if pixel_values.dim() == 4:
        pixel_values = pixel_values.unsqueeze(1)
    if pixel_values.dim() != 5:
        raise ValueError(f"pixel_values must be (B, S, 3, H, W) or (B, 3, H, W), got {tuple(pixel_values.shape)}")
    batch_size, num_slots = pixel_values.shape[:2]
    if num_slots > max_image_slots:
        raise ValueError(f"{num_slots} image slots per example exceed config.max_image_slots={max_image_slots}")
    if qformer_input_ids is not None:
        if qformer_input_ids.dim() == 2:
            qformer_input_ids = qformer_input_ids.unsqueeze(1).expand(-1, num_slots, -1)
            if qformer_attention_mask is not None:
                qformer_attention_mask = qformer_attention_mask.unsqueeze(1).expand(-1, num_slots, -1)
        if qformer_input_ids.shape[:2] != (batch_size, num_slots):
            raise ValueError(
                f"qformer_input_ids {tuple(qformer_input_ids.shape)} do not match pixel_values slots "
                f"({batch_size}, {num_slots})"
            )
        if qformer_attention_mask is None:
            qformer_attention_mask = torch.ones_like(qformer_input_ids)
    if image_slot_mask is None:
        image_slot_mask = torch.ones(batch_size, num_slots, dtype=torch.bool, device=pixel_values.device)
    if tuple(image_slot_mask.shape) != (batch_size, num_slots):
        raise ValueError(
            f"image_slot_mask {tuple(image_slot_mask.shape)} does not match pixel_values slots ({batch_size}, {num_slots})"
        )
    image_slot_mask = image_slot_mask.bool()
    image_embeds, image_embeds_mask = _check_image_embeds(image_embeds, image_embeds_mask, image_slot_mask)
    return SlotBatch(pixel_values, qformer_input_ids, qformer_attention_mask, image_slot_mask, image_embeds,
                     image_embeds_mask)


def check_image_tokens(input_ids: torch.Tensor, image_token_index: int, expected: torch.Tensor, per: str) -> torch.Tensor:
    """The (B, L) positions of ``image_token_index`` in ``input_ids``; ValueError naming the examples whose count
    differs from ``expected`` (B,), ``per`` saying what the expected count is made of."""
    image_positions = input_ids == image_token_index
    found = image_positions.sum(dim=1)
    if not torch.equal(found.cpu(), expected.cpu()):
        bad = (found != expected).nonzero().flatten().tolist()
        raise ValueError(
            f"image tokens (id {image_token_index}) in input_ids do not match the real image slots: examples {bad} "
            f"have {found[bad].tolist()} image tokens, expected {expected[bad].tolist()} ({per})"
        )
    return image_positions
