"""BEM, the model-based answer-equivalence judge of the official Encyclopedic-VQA score (optional).

The official ``evaluation_utils.py`` gives a question 1 when exact match fails but BEM (Bulian et al.,
EMNLP 2022: a BERT-base classifier fine-tuned for answer equivalence, published on TF-Hub) says the
candidate is equivalent to the reference. rablip cannot ship or download that model: the user supplies
a transformers checkpoint directory of it (``AutoModelForSequenceClassification`` with two labels,
label 1 = equivalent, plus its BERT-uncased tokenizer), and every number it produces is labelled
model-based.

Input, as the official code builds it: word pieces of the candidate, the reference and the question
(each tokenised on its own, no special tokens) combined as ``[CLS] candidate [SEP] reference [SEP]
question [SEP]`` with segment ids 0, 1 and 2 (``tensorflow_text.combine_segments``); more than 512 tokens
is refused (the official padding to 512 fails there too). A question is judged equivalent when the
softmax probability of label 1 is >= 0.5.

Two assumptions, since the TF-Hub model cannot be inspected here: padding is masked out (rablip pads a
batch with an attention mask instead of padding to 512 with zeros), and a segment id beyond the
checkpoint's token-type table (BERT has 2 rows, the question is segment 2) adds a zero vector, as the
one-hot type embedding of the TF BERT encoder does. The checkpoint is loaded from safetensors only, with
remote code off.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from rablip.errors import DataError

MAX_TOKENS = 512
"""The official input length (inputs are padded to it; a longer one cannot be scored)."""
THRESHOLD = 0.5


class BemScorer:
    """A BEM checkpoint as a callable: ``scorer(triples)`` -> 1.0/0.0 per (question, reference, candidate)."""

    def __init__(self, checkpoint_dir: str | Path, device: str | None = None, batch_size: int = 32) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = Path(checkpoint_dir)
        if not path.is_dir():
            raise DataError(f"BEM checkpoint {path} is not a directory; give a transformers checkpoint directory "
                            "(config.json, model.safetensors, tokenizer files) of a BEM model.")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                path, local_files_only=True, use_safetensors=True, trust_remote_code=False)
        except (OSError, ValueError, KeyError) as err:
            raise DataError(f"BEM checkpoint {path} cannot be loaded as a transformers sequence classifier with "
                            f"its tokenizer (safetensors weights): {str(err).splitlines()[0]}") from None
        if self.model.config.num_labels != 2:
            raise DataError(f"BEM checkpoint {path} has {self.model.config.num_labels} labels; BEM has 2 "
                            "(0: not equivalent, 1: equivalent).")
        table = getattr(getattr(self.model.base_model, "embeddings", None), "token_type_embeddings", None)
        if not isinstance(table, torch.nn.Embedding):
            raise DataError(f"BEM checkpoint {path} is not a BERT-style model (no token type embeddings).")
        if self.tokenizer.cls_token_id is None or self.tokenizer.sep_token_id is None:
            raise DataError(f"BEM checkpoint {path}: its tokenizer has no [CLS] or [SEP] token.")
        self.type_rows = table.num_embeddings
        self._known_types: torch.Tensor | None = None
        table.register_forward_hook(self._zero_unknown_types)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        self.label = f"BEM (model-based answer equivalence, checkpoint {path})"

    def _zero_unknown_types(self, module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        """Segment ids beyond the table were clamped to its last row; their embedding becomes zero."""
        if self._known_types is None:
            return output
        return output * self._known_types.unsqueeze(-1).to(output.dtype)

    def encode(self, question: str, reference: str, candidate: str) -> tuple[list[int], list[int]]:
        """Token ids and segment ids of ``[CLS] candidate [SEP] reference [SEP] question [SEP]``."""
        ids, types = [self.tokenizer.cls_token_id], [0]
        for segment, text in enumerate((candidate, reference, question)):
            pieces = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += [*pieces, self.tokenizer.sep_token_id]
            types += [segment] * (len(pieces) + 1)
        if len(ids) > MAX_TOKENS:
            raise DataError(f"BEM input of {len(ids)} tokens exceeds {MAX_TOKENS} (question {question[:60]!r}, "
                            f"candidate {candidate[:60]!r}); the official scorer cannot score it either. "
                            "Shorten the prediction.")
        return ids, types

    @torch.inference_mode()
    def probabilities(self, triples: Sequence[tuple[str, str, str]]) -> list[float]:
        """P(equivalent) of each (question, reference, candidate) triple."""
        pad = self.tokenizer.pad_token_id or 0
        result: list[float] = []
        for start in range(0, len(triples), self.batch_size):
            encoded = [self.encode(*triple) for triple in triples[start:start + self.batch_size]]
            width = max(len(ids) for ids, _ in encoded)
            ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in encoded], device=self.device)
            types = torch.tensor([t + [0] * (width - len(t)) for _, t in encoded], device=self.device)
            mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in encoded], device=self.device)
            self._known_types = types < self.type_rows
            try:
                logits = self.model(input_ids=ids, attention_mask=mask,
                                    token_type_ids=types.clamp(max=self.type_rows - 1)).logits
            finally:
                self._known_types = None
            result += torch.softmax(logits.float(), dim=-1)[:, 1].tolist()
        return result

    def __call__(self, triples: Sequence[tuple[str, str, str]]) -> list[float]:
        """1.0 where P(equivalent) >= 0.5, else 0.0 (the official thresholded score)."""
        return [float(p >= THRESHOLD) for p in self.probabilities(triples)]
