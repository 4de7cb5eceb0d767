"""With one image slot the model computes exactly what transformers' InstructBLIP / BLIP-2 computes,
in both ``multi_image`` modes (their new tables start at zero)."""

from __future__ import annotations

import pytest
import torch
from transformers import Blip2ForConditionalGeneration, InstructBlipForConditionalGeneration

from rablip.models import RABlipForConditionalGeneration


def _single_image_inputs(config, decoder_only: bool, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    batch_size, num_queries = 2, config.num_query_tokens
    text = torch.randint(3, 100, (batch_size, 5), generator=generator)
    input_ids = torch.cat([torch.full((batch_size, num_queries), config.image_token_index), text], dim=1)
    qformer_input_ids = torch.randint(1, 90, (batch_size, 6), generator=generator)
    inputs = {
        "pixel_values": torch.randn(batch_size, 3, 32, 32, generator=generator),
        "qformer_input_ids": qformer_input_ids,
        "qformer_attention_mask": torch.ones_like(qformer_input_ids),
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
    }
    if decoder_only:
        labels = input_ids.clone()
        labels[:, : num_queries + 2] = -100
    else:
        labels = torch.randint(3, 100, (batch_size, 4), generator=generator)
    inputs["labels"] = labels
    return inputs


def _check_parity(reference, ours, inputs, decoder_only: bool):
    with torch.no_grad():
        expected = reference(**inputs)
        got = ours(**inputs)
    assert got.logits.shape == expected.logits.shape
    assert (got.logits - expected.logits).abs().max().item() <= 1e-5
    assert abs(got.loss.item() - expected.loss.item()) <= 1e-5
    generate_inputs = {key: value for key, value in inputs.items() if key != "labels"}
    expected_ids = reference.generate(**generate_inputs, max_new_tokens=4, do_sample=False)
    got_ids = ours.generate(**generate_inputs, max_new_tokens=4, do_sample=False)
    if decoder_only and expected_ids.shape[1] > got_ids.shape[1]:
        expected_ids = expected_ids[:, inputs["input_ids"].shape[1]:]
    assert torch.equal(got_ids, expected_ids)


MODES = pytest.mark.parametrize("multi_image", ["per_slot", "concat"])


@MODES
def test_parity_t5(tiny_t5_dir, multi_image):
    reference = InstructBlipForConditionalGeneration.from_pretrained(tiny_t5_dir).eval()
    ours = RABlipForConditionalGeneration.from_pretrained(tiny_t5_dir, multi_image=multi_image).eval()
    _check_parity(reference, ours, _single_image_inputs(reference.config, decoder_only=False), decoder_only=False)


@MODES
def test_parity_opt(tiny_opt_dir, multi_image):
    reference = InstructBlipForConditionalGeneration.from_pretrained(tiny_opt_dir).eval()
    ours = RABlipForConditionalGeneration.from_pretrained(tiny_opt_dir, multi_image=multi_image).eval()
    _check_parity(reference, ours, _single_image_inputs(reference.config, decoder_only=True), decoder_only=True)


@MODES
def test_parity_blip2(tiny_blip2_dir, multi_image):
    reference = Blip2ForConditionalGeneration.from_pretrained(tiny_blip2_dir).eval()
    ours = RABlipForConditionalGeneration.from_pretrained(tiny_blip2_dir, multi_image=multi_image).eval()
    assert ours.config.qformer_text_input is False
    inputs = _single_image_inputs(reference.config, decoder_only=True)
    with torch.no_grad():
        expected = reference(
            pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        )
        got = ours(**{key: value for key, value in inputs.items() if key != "labels"})
    assert (got.logits - expected.logits).abs().max().item() <= 1e-5


def test_nonzero_slot_tables_change_the_output(tiny_t5_dir):
    """The parity above is not vacuous: the slot tables do enter the computation."""
    ours = RABlipForConditionalGeneration.from_pretrained(tiny_t5_dir).eval()
    inputs = _single_image_inputs(ours.config, decoder_only=False)
    with torch.no_grad():
        before = ours(**inputs).logits
        ours.slot_type_embeds.fill_(0.5)
        after_type = ours(**inputs).logits
        ours.slot_type_embeds.zero_()
        ours.slot_position_embeds.fill_(0.5)
        after_position = ours(**inputs).logits
    assert (after_type - before).abs().max() > 1e-4
    assert (after_position - before).abs().max() > 1e-4
