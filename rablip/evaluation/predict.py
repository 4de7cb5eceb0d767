"""Answer samples with a generator: batched generation and multiple-choice likelihood ranking."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rablip.data.samples import Sample
from rablip.models.processing import Collator

GENERATE_INPUTS = ("pixel_values", "image_slot_mask", "qformer_input_ids", "qformer_attention_mask",
                   "input_ids", "attention_mask", "image_embeds", "image_embeds_mask", "question_ids", "question_mask")
"""Batch keys ``generate`` reads (``image_embeds*`` only in batches with cached reference features,
``question_*`` only for a LLaVA generator refining its visual tokens)."""


@torch.no_grad()
def generate_answers(model: torch.nn.Module, collator: Collator, samples: Sequence[Sample], *, batch_size: int,
                     num_beams: int = 1, max_new_tokens: int = 10, repetition_penalty: float = 1.0,
                     length_penalty: float = 1.0) -> list[str]:
    """Generated answer text per sample, in order."""
    generate = collator.with_mode("generate")
    device = next(model.parameters()).device
    answers: list[str] = []
    for start in range(0, len(samples), batch_size):
        batch = generate(list(samples[start:start + batch_size]))
        inputs = {k: batch[k].to(device) for k in GENERATE_INPUTS if k in batch}
        kwargs = {"num_beams": num_beams, "max_new_tokens": max_new_tokens, "do_sample": False}
        if num_beams > 1:
            kwargs["length_penalty"] = length_penalty
        if repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = repetition_penalty
        tokens = model.generate(**inputs, **kwargs)
        answers.extend(text.strip() for text in collator.llm_tokenizer.batch_decode(tokens, skip_special_tokens=True))
    return answers


@torch.no_grad()
def choose_answers(model: torch.nn.Module, collator: Collator, samples: Sequence[Sample], *,
                   batch_size: int) -> list[int]:
    """Per sample, the index of its most likely choice: the lowest mean token loss of the choice as
    the target (length-normalised, so long options are not penalised for their length)."""
    score = collator.with_mode("score")
    device = next(model.parameters()).device
    chosen: list[int] = []
    for start in range(0, len(samples), batch_size):
        chunk = list(samples[start:start + batch_size])
        batch = score(chunk)
        inputs = {k: batch[k].to(device) for k in (*GENERATE_INPUTS, "labels") if k in batch}
        losses = model(**inputs).per_sample_loss.float().cpu()
        best = torch.full((len(chunk),), float("inf"))
        best_choice = torch.zeros(len(chunk), dtype=torch.long)
        for loss, example, choice in zip(losses, batch["example_index"], batch["choice_index"], strict=True):
            if loss < best[example]:
                best[example], best_choice[example] = loss, choice
        chosen.extend(int(c) for c in best_choice)
    return chosen
