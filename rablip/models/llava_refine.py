"""RORA-VLM's query-oriented visual token refinement on LLaVA's visual tokens (``model.refine``, LLaVA family).

LLaVA turns every image into a block of patch tokens (576 for CLIP ViT-L/14-336); RORA-VLM keeps only
``top_m`` of them per image, chosen by the question:

1. question image (slot 0): its top-m tokens by the inner product ⟨x_query,i, t⟩ with the question's
   text embedding t;
2. each retrieved image (slots 1..S-1): its top-m tokens by s_j = Σ_i ⟨x_query,i, x_retrieved,j⟩, the
   sum over the question-image tokens kept in step 1.

Similarities are plain inner products, as the paper writes them (the InstructBLIP-side refinement,
:mod:`rablip.models.refine`, uses cosines); Σ_i ⟨x_i, y⟩ = ⟨Σ_i x_i, y⟩, so step 2 scores every token
against the sum of the kept query tokens. Kept tokens stay in their original (spatial) order, so the
LLM reads a sparser grid in the same order as the full one. Every image token counts, CLS too when
the ``full`` feature strategy keeps it (LLaVA-1.5's ``default`` drops it). An example without a
question image (slot 0 empty) scores its retrieved images against t directly, the only query signal
it has (as the InstructBLIP side does).

Embedding spaces (``model.refine.space``; the paper does not say which it uses):

* ``projected`` (default): both steps on the projector's outputs, the LLM's input embedding space.
  LLaVA has no text tower, so the only question embedding in any image token's space is the mean of
  the LLM's input token embeddings of the question (:func:`question_embedding`), and the projector is
  trained precisely to put image tokens where the LLM reads them beside those word embeddings; step
  2 then measures relevance on the very vectors the LLM receives.
* ``vision``: step 1 as above (the text lives nowhere else), step 2 on the vision tower's features
  before the projector (layer ``vision_feature_layer``), where CLIP was trained for image-image
  similarity. Meant for a projector that is still fresh or being re-trained, whose outputs do not
  yet carry CLIP's geometry.

The question reaches the model as tensors (``question_ids`` / ``question_mask``, (B, Lt), LLM token
ids of the question text without special tokens, right-padded), which the processor
(:class:`rablip.models.processing.Collator`) emits for a LLaVA generator with refinement on.
"""

from __future__ import annotations

import torch
from torch import nn


def question_embedding(embeddings: nn.Module, question_ids: torch.Tensor, question_mask: torch.Tensor) -> torch.Tensor:
    """The question's text embedding t (B, D): the masked mean of the LLM's input token embeddings of
    ``question_ids`` (B, Lt); an example without question tokens gets zeros."""
    if question_ids.dim() != 2 or question_mask.shape != question_ids.shape:
        raise ValueError(f"question_ids and question_mask must both be (B, Lt), got {tuple(question_ids.shape)} "
                         f"and {tuple(question_mask.shape)}")
    vectors = embeddings(question_ids).float()
    weights = question_mask.to(vectors.dtype).unsqueeze(-1)
    return (vectors * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def _top_tokens(scores: torch.Tensor, m: int) -> torch.Tensor:
    """Indices of the m best scores along the last axis, in ascending (original) order."""
    return torch.topk(scores, m, dim=-1).indices.sort(dim=-1).values


def refinement_indices(
    projected: torch.Tensor,
    compared: torch.Tensor,
    question: torch.Tensor,
    batch_index: torch.Tensor,
    slot_index: torch.Tensor,
    top_m: int,
) -> torch.Tensor:
    """Per real image slot, the indices (N, top_m) of its kept tokens, ascending.

    Args:
        projected: (N, P, Dl) projected tokens of the N real slots (the space of ``question``).
        compared: (N, P, Dc) the tokens in which retrieved images are scored against the kept query
            tokens (``projected`` itself, or the vision features: module docstring).
        question: (B, Dl) the question's text embedding per example.
        batch_index, slot_index: (N,) example and slot of each real slot; slot 0 is the question image.
        top_m: tokens kept per image, 1 <= top_m <= P.
    """
    if projected.dim() != 3 or compared.shape[:2] != projected.shape[:2]:
        raise ValueError(f"projected (N, P, D) and compared (N, P, D') must agree on (N, P), got "
                         f"{tuple(projected.shape)} and {tuple(compared.shape)}")
    tokens = projected.shape[1]
    if not 1 <= top_m <= tokens:
        raise ValueError(f"refine top_m={top_m} must be between 1 and the tokens per image ({tokens})")
    projected, compared = projected.float(), compared.float()
    text_scores = torch.einsum("npd,nd->np", projected, question.float()[batch_index])  # ⟨x, t⟩
    kept_by_text = _top_tokens(text_scores, top_m)  # right for question images (step 1)

    is_query = slot_index == 0
    anchor = compared.new_zeros(question.shape[0], compared.shape[-1])  # Σ_i x_query,i per example
    has_query = torch.zeros(question.shape[0], dtype=torch.bool, device=compared.device)
    rows = is_query.nonzero().flatten()
    kept_query = torch.gather(compared[rows], 1, kept_by_text[rows].unsqueeze(-1).expand(-1, -1, compared.shape[-1]))
    anchor[batch_index[rows]] = kept_query.sum(dim=1)
    has_query[batch_index[rows]] = True

    image_scores = torch.einsum("npd,nd->np", compared, anchor[batch_index])  # s_j (step 2)
    by_text = is_query | ~has_query[batch_index]
    scores = torch.where(by_text.unsqueeze(-1), text_scores, image_scores)
    return _top_tokens(scores, top_m)
