"""Text-only warm-up of a freshly built LLM on (lead, prompt, answer) examples: the answer tokens are the target.

Used when the synthetic demo builds its tiny generator, so that its from-scratch LLM can read before
it is fine-tuned (see :mod:`rablip.synthetic.reading`). The lead stands where the generator puts
the question image's tokens, before the special tokens that start the text. Decoder-only LLMs read
``lead <bos> prompt answer <eos>`` with the loss on ``answer <eos>``; encoder-decoders read the lead
and the prompt and decode the answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch

from rablip.synthetic.warmup import run_warm_up


class TextPair(Protocol):
    lead: str
    prompt: str
    answer: str


def tokenize_pairs(tokenizer, examples: list[TextPair], decoder_only: bool) -> dict[str, torch.Tensor]:
    leads = [tokenizer(e.lead, add_special_tokens=False)["input_ids"] if e.lead else [] for e in examples]
    prompts = [tokenizer(e.prompt, add_special_tokens=False)["input_ids"] for e in examples]
    answers = [tokenizer(" " + e.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
               for e in examples]
    pad = tokenizer.pad_token_id
    if not decoder_only:
        inputs = [lead + p + [tokenizer.eos_token_id] for lead, p in zip(leads, prompts)]
        width, answer_width = max(map(len, inputs)), max(map(len, answers))
        return {"input_ids": torch.tensor([p + [pad] * (width - len(p)) for p in inputs]),
                "attention_mask": torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in inputs]),
                "labels": torch.tensor([a + [-100] * (answer_width - len(a)) for a in answers])}
    rows = [lead + [tokenizer.bos_token_id] + p + a for lead, p, a in zip(leads, prompts, answers)]
    width = max(map(len, rows))
    labels = [[-100] * (len(r) - len(a)) + a + [-100] * (width - len(r)) for r, a in zip(rows, answers)]
    return {"input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in rows]),
            "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
            "labels": torch.tensor(labels)}


def answer_loss(language_model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """A decoder-only LLM's mean loss on its labelled tokens, with the output layer applied to the
    positions that predict them only (a few per row, instead of every position's vocabulary logits)."""
    hidden = language_model.get_decoder()(input_ids=batch["input_ids"],
                                          attention_mask=batch["attention_mask"]).last_hidden_state
    labels = batch["labels"][:, 1:]
    predicting = labels != -100
    logits = language_model.get_output_embeddings()(hidden[:, :-1][predicting])
    return torch.nn.functional.cross_entropy(logits.float(), labels[predicting])


def warm_up_language_model(language_model: torch.nn.Module, tokenizer, examples: Iterator[TextPair],
                           steps: int, batch_size: int = 16, lr: float = 3e-3, warmup_steps: int = 30,
                           seed: int = 0, show_progress: bool = True) -> list[float]:
    """Train ``language_model`` in place for ``steps`` AdamW steps (cosine to lr/10); returns the losses."""
    torch.manual_seed(seed)
    decoder_only = not language_model.config.is_encoder_decoder

    def step_loss(_: int) -> torch.Tensor:
        batch = tokenize_pairs(tokenizer, [next(examples) for _ in range(batch_size)], decoder_only)
        return answer_loss(language_model, batch) if decoder_only else language_model(**batch).loss

    return run_warm_up(language_model, step_loss, steps, lr=lr, warmup_steps=warmup_steps,
                       desc="LLM reading warm-up", show_progress=show_progress)
