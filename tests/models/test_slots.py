"""Several image slots: shapes, masking of empty / text-only slots, ASKG weighting, freezing, refinement."""

from __future__ import annotations

import pytest
import torch

from rablip.models import RABlipForConditionalGeneration
from rablip.models.loss import IGNORE_INDEX

from .conftest import make_batch


@pytest.fixture(scope="module")
def t5_model(tiny_t5_dir):
    model = RABlipForConditionalGeneration.from_pretrained(tiny_t5_dir).eval()
    with torch.no_grad():  # non-zero slot tables so that slot identity matters in these tests
        model.slot_type_embeds.normal_(0.0, 0.3)
        model.slot_position_embeds.normal_(0.0, 0.3)
    return model


@pytest.fixture(scope="module")
def opt_model(tiny_opt_dir):
    return RABlipForConditionalGeneration.from_pretrained(tiny_opt_dir).eval()


@pytest.mark.parametrize("slot_mask", [[[True], [True]], [[True, True, False, True], [True, False, False, False]]])
def test_shapes_t5_and_opt(t5_model, opt_model, slot_mask):
    for model, decoder_only in ((t5_model, False), (opt_model, True)):
        batch = make_batch(model.config, slot_mask, decoder_only=decoder_only)
        with torch.no_grad():
            output = model(**batch)
        vocab = model.config.text_config.vocab_size
        expected_length = batch["input_ids"].shape[1] if decoder_only else batch["labels"].shape[1]
        assert output.logits.shape == (2, expected_length, vocab)
        assert torch.isfinite(output.loss)


def test_empty_slot_pixels_change_nothing(t5_model, opt_model):
    for model, decoder_only in ((t5_model, False), (opt_model, True)):
        batch = make_batch(model.config, [[True, False, True], [True, True, False]], decoder_only=decoder_only)
        with torch.no_grad():
            reference = model(**batch).logits
            batch["pixel_values"][0, 1] = torch.randn(3, 32, 32) * 5
            batch["pixel_values"][1, 2] = torch.randn(3, 32, 32) * 5
            batch["qformer_input_ids"][0, 1] = 7
            unchanged = model(**batch).logits
            batch["pixel_values"][0, 2] = torch.randn(3, 32, 32)  # a real slot: must matter
            changed = model(**batch).logits
        assert torch.equal(reference, unchanged)
        assert (changed - reference).abs().max() > 1e-5


def test_text_only_slots_contribute_no_image_tokens(t5_model):
    config = t5_model.config
    batch = make_batch(config, [[True, False, False]])
    assert int((batch["input_ids"] == config.image_token_index).sum()) == config.num_query_tokens
    with torch.no_grad():
        t5_model(**batch)
    batch["image_slot_mask"][0, 1] = True  # claims an image the text has no tokens for
    with pytest.raises(ValueError, match="image tokens"):
        t5_model(**batch)


def test_all_text_only_batch_runs(t5_model):
    batch = make_batch(t5_model.config, [[False, False]])
    with torch.no_grad():
        output = t5_model(**batch)
    assert torch.isfinite(output.loss)


def test_slot_order_matters(t5_model):
    """Swapping two real slots' images changes the output (type and position tables are per slot)."""
    batch = make_batch(t5_model.config, [[True, True, True]])
    with torch.no_grad():
        reference = t5_model(**batch).logits
        batch["pixel_values"] = batch["pixel_values"][:, [0, 2, 1]]
        swapped = t5_model(**batch).logits
    assert (swapped - reference).abs().max() > 1e-5


def test_three_items_with_askg_sample(t5_model):
    """3 retrieved items (image+text, text-only, image+text) for a QA sample and an ASKG sample."""
    batch = make_batch(t5_model.config, [[True, True, False, True], [True, True, False, True]], seed=4)
    batch["labels"][1, 2:] = IGNORE_INDEX  # the ASKG target is short ("1")
    batch["sample_weight"] = torch.tensor([1.0, 0.1])
    batch["sample_kind"] = torch.tensor([0, 1])
    with torch.no_grad():
        output = t5_model(**batch)
        plain = t5_model(**{k: v for k, v in batch.items() if k not in ("sample_weight", "sample_kind")})
    qa, askg = output.per_sample_loss.tolist()
    assert output.qa_loss.item() == pytest.approx(qa)
    assert output.askg_loss.item() == pytest.approx(askg)
    assert output.loss.item() == pytest.approx((1.0 * qa + 0.1 * askg) / 2, rel=1e-5)
    token_mean = (qa * 4 + askg * 2) / 6
    assert plain.loss.item() == pytest.approx(token_mean, rel=1e-5)
    assert plain.qa_loss is None


def test_frozen_parameters_get_no_gradient(tiny_opt_dir):
    model = RABlipForConditionalGeneration.from_pretrained(tiny_opt_dir)
    model.train()
    batch = make_batch(model.config, [[True, True], [True, False]], decoder_only=True)
    model(**batch).loss.backward()
    for name, parameter in model.named_parameters():
        trains = not name.startswith(("vision_model.", "language_model."))
        assert parameter.requires_grad == trains, name
        if trains:
            assert parameter.grad is not None, name
        else:
            assert parameter.grad is None, name
    assert not model.vision_model.training
    assert model.slot_type_embeds.grad.abs().sum() > 0


def test_refinement_keeps_top_m_patches(tiny_t5_dir):
    model = RABlipForConditionalGeneration.from_pretrained(tiny_t5_dir, refine_top_m=3).eval()
    batch = make_batch(model.config, [[True, True, False], [False, True, True]])
    cross_key = model.qformer.encoder.layer[0].crossattention.attention.key
    calls: list[int] = []
    hook = cross_key.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[1]) or None)
    with torch.no_grad():
        output = model(**batch)
    hook.remove()
    assert calls == [16 + 1, 3 + 1]
    assert torch.isfinite(output.loss)


def test_labels_only_output_layer_gives_the_same_losses_and_matches(opt_model):
    from rablip.stages.finetune import sequence_match

    batch = make_batch(opt_model.config, [[True, True, False], [True, False, True]], decoder_only=True, seed=6)
    batch["sample_weight"] = torch.tensor([1.0, 0.1])
    batch["sample_kind"] = torch.tensor([0, 1])
    with torch.no_grad():
        full = opt_model(**batch)
        lean = opt_model(**batch, return_logits=False)
        # a target the model predicts exactly for row 0: its own greedy tokens
        greedy = full.logits.argmax(-1)
        labelled = batch["labels"] != IGNORE_INDEX
        batch["labels"][0, 1:][labelled[0, 1:]] = greedy[0, :-1][labelled[0, 1:]]
        full_matched = opt_model(**batch)
        lean_matched = opt_model(**batch, return_logits=False)
    assert lean.logits is None and full.target_match is None
    for a, b in ((lean, full), (lean_matched, full_matched)):
        torch.testing.assert_close(a.loss, b.loss)
        torch.testing.assert_close(a.per_sample_loss, b.per_sample_loss)
        torch.testing.assert_close(a.qa_loss, b.qa_loss)
        torch.testing.assert_close(a.askg_loss, b.askg_loss)
    expected = sequence_match(full_matched.logits, batch["labels"], shift=True)
    assert lean_matched.target_match.tolist() == expected.tolist() and expected.tolist()[0] is True

