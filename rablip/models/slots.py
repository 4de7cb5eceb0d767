"""Normalizing model inputs to the multi-slot layout of the batch contract.

InstructBLIP's single-image shapes ((B, 3, H, W) pixels, (B, Lq) instruction) become one slot.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SlotBatch:
    """Image slots of a batch: pixels (B, S, 3, H, W), instruction (B, S, Lq) and real-slot mask (B, S)."""

    pixel_values: torch.Tensor
    qformer_input_ids: torch.Tensor | None
    qformer_attention_mask: torch.Tensor | None
    image_slot_mask: torch.Tensor


def normalize_slot_inputs(
    pixel_values: torch.Tensor,
    qformer_input_ids: torch.Tensor | None,
    qformer_attention_mask: torch.Tensor | None,
    image_slot_mask: torch.Tensor | None,
    max_image_slots: int,
) -> SlotBatch:
    """Check shapes and bring single-image inputs to one slot; ``image_slot_mask`` defaults to all True."""
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
    return SlotBatch(pixel_values, qformer_input_ids, qformer_attention_mask, image_slot_mask.bool())
