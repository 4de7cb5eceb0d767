"""WebQA QA-FL: fluency by BARTScore against the reference answers, as the official WebQA evaluation.

The official script (WebQnA/WebQA_Baseline ``vlp/eval_1022.py``) scores a candidate ``c`` against
references ``A``:

- texts are lightly normalised: punctuation removed, white space collapsed;
- ``BARTScore(src, tgt)`` is the mean log-likelihood per target token of ``tgt`` given ``src``
  (BART ``bart-large-cnn`` fine-tuned on ParaBank, ``bart.pth``);
- ``FL = min(1, max_i exp(BARTScore(A_i, c)) / exp(BARTScore(A_i, A_i)))``.

This module needs a local checkpoint directory in transformers format (``config.json``, weights as
safetensors, tokenizer files). To reproduce leaderboard numbers, convert ``bart-large-cnn`` with the
ParaBank weights to that format yourself; rablip never unpickles ``bart.pth``.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from pathlib import Path

from rablip.errors import DataError

_PUNCTUATION_TABLE = str.maketrans(dict.fromkeys(string.punctuation))


def normalize_for_bart(text: str) -> str:
    """Punctuation removal and white-space fix, the official ``normalize_text_for_bart``."""
    return " ".join(text.translate(_PUNCTUATION_TABLE).split())


class BartScorer:
    """Mean per-token log-likelihood of targets given sources under a local BART checkpoint."""

    def __init__(
        self, checkpoint_dir: str | Path | None, device: str = "cpu", max_length: int = 1024, batch_size: int = 8
    ) -> None:
        if checkpoint_dir is None:
            raise DataError(
                "QA-FL needs a BART checkpoint: pass --bart-checkpoint DIR (a transformers-format "
                "bart-large-cnn with the ParaBank weights). Without it, FL and QA are reported as absent."
            )
        checkpoint_dir = Path(checkpoint_dir)
        if not (checkpoint_dir / "config.json").is_file():
            raise DataError(
                f"BART checkpoint {checkpoint_dir}: no config.json there. Point --bart-checkpoint at a "
                "directory written by save_pretrained (config, safetensors weights, tokenizer)."
            )
        import torch
        from transformers import AutoTokenizer, BartForConditionalGeneration

        self.torch = torch
        self.device = device
        self.max_length = max_length
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir)
        self.model = BartForConditionalGeneration.from_pretrained(checkpoint_dir, use_safetensors=True)
        self.model.to(device).eval()

    def score(self, sources: Sequence[str], targets: Sequence[str]) -> list[float]:
        """``log p(target | source)`` summed over target tokens and divided by their number, per pair."""
        torch = self.torch
        scores: list[float] = []
        pad_id = self.tokenizer.pad_token_id
        for start in range(0, len(sources), self.batch_size):
            batch_sources = list(sources[start : start + self.batch_size])
            batch_targets = list(targets[start : start + self.batch_size])
            encoded_sources = self.tokenizer(
                batch_sources, max_length=self.max_length, truncation=True, padding=True, return_tensors="pt"
            ).to(self.device)
            encoded_targets = self.tokenizer(
                batch_targets, max_length=self.max_length, truncation=True, padding=True, return_tensors="pt"
            ).to(self.device)
            labels = encoded_targets["input_ids"]
            with torch.no_grad():
                logits = self.model(
                    input_ids=encoded_sources["input_ids"],
                    attention_mask=encoded_sources["attention_mask"],
                    labels=labels,
                ).logits
            log_probs = torch.log_softmax(logits, dim=-1)
            token_log_probs = log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
            token_log_probs = token_log_probs.masked_fill(labels == pad_id, 0.0)
            lengths = encoded_targets["attention_mask"].sum(dim=1)
            scores.extend((token_log_probs.sum(dim=1) / lengths).tolist())
        return scores


def fluency(candidate: str, references: Sequence[str], scorer: BartScorer) -> float:
    """Official QA-FL of one answer: ``min(1, max_i p(c | A_i) / p(A_i | A_i))`` in BARTScore terms."""
    if not references:
        return 0.0
    normalized_refs = [normalize_for_bart(reference) for reference in references]
    normalized_candidate = normalize_for_bart(candidate)
    normalizers = scorer.score(normalized_refs, normalized_refs)
    candidate_scores = scorer.score(normalized_refs, [normalized_candidate] * len(normalized_refs))
    ratios = [math.exp(value) / math.exp(norm) for value, norm in zip(candidate_scores, normalizers)]
    return min(1.0, max(ratios))
