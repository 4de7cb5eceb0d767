"""RORA-VLM's query-oriented visual token refinement (off by default; ``model.refine.*``).

Before the Q-Former cross-attends to patch features, keep only the patches that matter for the query:

1. question image (slot 0): the top-m patches by cosine similarity to the question text embedding;
2. each retrieved image (slots 1..S-1): the top-m patches by the sum of their cosine similarities to
   the kept question-image patches.

When a sample has no question image (slot 0 empty, e.g. a text-only WebQA question), its retrieved
images are scored against the question text directly, the only query signal left. Kept patches stay
in their original (spatial) order; the CLS token, when present at index 0, is always kept in front.
Empty slots come back as zero features with index -1, so callers keep masking them.

The question text embedding must live in the patch feature space (width D); producing it (e.g. a
learned projection of pooled Q-Former text features) is the caller's job.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _top_patches(scores: torch.Tensor, m: int) -> torch.Tensor:
    """Indices of the m best scores along the last axis, in ascending (spatial) order."""
    return torch.topk(scores, m, dim=-1).indices.sort(dim=-1).values


def refine_slot_patches(
    patch_feats: torch.Tensor,
    slot_mask: torch.Tensor,
    question_text_emb: torch.Tensor,
    m: int,
    has_cls: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the m query-relevant patches of every image slot.

    Args:
        patch_feats: (B, S, P, D) vision features per slot; slot 0 is the question image. With
            ``has_cls``, position 0 of each slot is the CLS token and P-1 positions are patches.
        slot_mask: (B, S) bool, True where the slot holds an image.
        question_text_emb: (B, D) question embedding in the patch feature space.
        m: patches to keep per slot, 1 <= m <= number of patches.
        has_cls: whether position 0 is a CLS token (kept, not counted in m).

    Returns:
        ``(features, indices)``: (B, S, m+1, D) and (B, S, m+1) long (m instead of m+1 without CLS);
        indices point into P (CLS = 0); empty slots have zero features and index -1.
    """
    if patch_feats.dim() != 4:
        raise ValueError(f"patch_feats must be (B, S, P, D), got shape {tuple(patch_feats.shape)}")
    batch, slots, positions, _ = patch_feats.shape
    offset = 1 if has_cls else 0
    num_patches = positions - offset
    if not 1 <= m <= num_patches:
        raise ValueError(f"refine m={m} must be between 1 and the number of patches ({num_patches})")
    slot_mask = slot_mask.bool()
    patches = patch_feats[:, :, offset:]
    unit_patches = F.normalize(patches.float(), dim=-1)
    unit_text = F.normalize(question_text_emb.float(), dim=-1)

    question_scores = torch.einsum("bpd,bd->bp", unit_patches[:, 0], unit_text)
    kept_question = _top_patches(question_scores, m)  # (B, m)
    kept_unit = torch.gather(
        unit_patches[:, 0], 1, kept_question[..., None].expand(-1, -1, unit_patches.shape[-1])
    )
    # sum_k cos(p, q_k) = p . sum_k q_k for unit vectors; without a question image use the text.
    anchor = torch.where(slot_mask[:, :1], kept_unit.sum(dim=1), unit_text)  # (B, D)
    retrieved_scores = torch.einsum("bspd,bd->bsp", unit_patches[:, 1:], anchor)
    kept_retrieved = _top_patches(retrieved_scores, m)  # (B, S-1, m)
    kept = torch.cat([kept_question[:, None], kept_retrieved], dim=1) + offset  # (B, S, m)

    if has_cls:
        kept = torch.cat([torch.zeros(batch, slots, 1, dtype=kept.dtype, device=kept.device), kept], dim=2)
    features = torch.gather(patch_feats, 2, kept[..., None].expand(-1, -1, -1, patch_feats.shape[-1]))
    features = features * slot_mask[:, :, None, None].to(features.dtype)
    indices = kept.masked_fill(~slot_mask[:, :, None], -1)
    return features, indices
