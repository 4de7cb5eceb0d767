"""RORA-VLM query-oriented visual token refinement on hand-built patch features."""

from __future__ import annotations

import pytest
import torch

from rablip.models.refine import refine_slot_patches

E = torch.eye(4)
CLS = torch.tensor([9.0, 9.0, 9.0, 9.0])
# Slot 0 (question image): text = e0, so content patches 1 (e0, cos 1) and 3 (cos 0.8) win.
QUESTION_PATCHES = [E[1], E[0], E[2], 0.8 * E[0] + 0.6 * E[1], E[3], -E[0]]
# Slot 1: summed similarity to the kept patches (anchor 1.8 e0 + 0.6 e1): [0.6, 0, 1.8, 0, -0.6, -1.8].
RETRIEVED_PATCHES = [E[1], E[2], E[0], E[3], -E[1], -E[0]]


def _slots(with_cls: bool = True) -> torch.Tensor:
    """(1, 3, P, 4): question image, one retrieved image, one empty slot (noise that must not leak)."""
    slots = []
    for patches in (QUESTION_PATCHES, RETRIEVED_PATCHES, [torch.randn(4) for _ in range(6)]):
        slots.append(torch.stack(([CLS] if with_cls else []) + list(patches)))
    return torch.stack(slots)[None]


def test_refinement_keeps_the_known_top_patches_and_cls():
    feats = _slots()
    features, indices = refine_slot_patches(feats, torch.tensor([[True, True, False]]), E[0][None], m=2)
    assert features.shape == (1, 3, 3, 4) and indices.shape == (1, 3, 3)
    # Positions count the CLS token at 0; kept patches come back in spatial order.
    assert indices[0, 0].tolist() == [0, 2, 4]
    assert indices[0, 1].tolist() == [0, 1, 3]
    assert indices[0, 2].tolist() == [-1, -1, -1]
    torch.testing.assert_close(features[0, 0], feats[0, 0, [0, 2, 4]])
    torch.testing.assert_close(features[0, 1], feats[0, 1, [0, 1, 3]])
    assert (features[0, 2] == 0).all()


def test_retrieved_images_use_the_kept_query_patches_not_the_text():
    # By the text alone, retrieved patch 0 (e1) scores 0 and ties with e2/e3; via the kept question
    # patches it scores 0.6 and is the runner-up.
    _, indices = refine_slot_patches(_slots(), torch.tensor([[True, True, False]]), E[0][None], m=2)
    assert 1 in indices[0, 1].tolist()


def test_without_a_question_image_retrieved_images_are_scored_by_the_text():
    _, indices = refine_slot_patches(_slots(), torch.tensor([[False, True, False]]), E[0][None], m=1)
    assert indices[0, 0].tolist() == [-1, -1]
    assert indices[0, 1].tolist() == [0, 3]  # e0 is the patch closest to the question text


def test_no_cls_layout_and_batch_independence():
    feats = torch.cat(
        [_slots(with_cls=False), _slots(with_cls=False).flip(1)]
    )  # second sample: slots reversed
    slot_mask = torch.tensor([[True, True, False], [False, True, True]])
    text = torch.stack([E[0], E[0]])
    features, indices = refine_slot_patches(feats, slot_mask, text, m=2, has_cls=False)
    assert features.shape == (2, 3, 2, 4)
    assert indices[0].tolist() == [[1, 3], [0, 2], [-1, -1]]
    assert indices[1, 0].tolist() == [-1, -1]
    # Second sample has no question image: its slot 2 (the question patches) is ranked by the text.
    assert indices[1, 2].tolist() == [1, 3]


def test_m_must_fit_the_patch_count():
    with pytest.raises(ValueError, match="between 1 and the number of patches"):
        refine_slot_patches(_slots(), torch.ones(1, 3, dtype=torch.bool), E[0][None], m=7)
    with pytest.raises(ValueError, match=r"\(B, S, P, D\)"):
        refine_slot_patches(torch.zeros(3, 7, 4), torch.ones(1, 3, dtype=torch.bool), E[0][None], m=2)
