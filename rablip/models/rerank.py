"""Re-ranker: a 2-way classifier over fused (query, item) features that re-scores a retriever's top-k.

RA-BLIP re-ranks the top-K pairs with a trainable classifier on frozen features. Here the features are
the fusion encoder's [CLS] state over the joint (query tokens, item tokens) sequence, the same fused
features ITM trains. By default the re-ranker shares the encoder's ITM ``match_head`` (the release
ships one 2-way head, and ITM already trains it to tell matching pairs from hard negatives);
``own_head=True`` gives it a fresh head, initialised from the ITM head, to fine-tune on frozen
features. The relevance score is the match log-odds ``logit[match] - logit[no match]``.

A trained head (``run_pretrain.py train.stage=rerank``, :mod:`rablip.stages.rerank`) is saved as
``rerank_head.safetensors`` beside the encoder's own files (:data:`HEAD_FILE`), with the fingerprint
of the encoder it was trained on in its metadata; :meth:`FusionReranker.from_pretrained` scores with
it when the encoder directory holds one, with the ITM head otherwise. The encoder's own files stay as
they are, so the encoder's fingerprint (and every index built for it) is unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from rablip.errors import RablipError
from rablip.models.fusion import MultimodalRetrievalEncoder
from rablip.models.fusion_layers import TokenSequence

HEAD_FILE = "rerank_head.safetensors"
"""The trained re-ranker head in a retrieval encoder directory (absent: the ITM head scores)."""
HEAD_FORMAT = "rablip.rerank_head"


class FusionReranker(nn.Module):
    """Scores aligned (query, item) rows with a 2-way head over fused features."""

    def __init__(self, encoder: MultimodalRetrievalEncoder, own_head: bool = False) -> None:
        super().__init__()
        # Kept out of the module tree: the encoder is saved and trained on its own.
        self._encoder = [encoder]
        self.head: nn.Linear | None = None
        if own_head:
            self.head = nn.Linear(encoder.fusion.hidden_size, 2)
            self.head.load_state_dict(encoder.match_head.state_dict())

    @classmethod
    def from_pretrained(cls, encoder: MultimodalRetrievalEncoder, directory: str | os.PathLike,
                        encoder_fingerprint: str | None = None) -> FusionReranker:
        """The re-ranker of the encoder saved in ``directory``: its trained head (:data:`HEAD_FILE`) when
        there is one, the encoder's ITM head otherwise. With ``encoder_fingerprint`` a head trained on
        another encoder is refused."""
        reranker = cls(encoder)
        reranker.head = load_rerank_head(directory, encoder.fusion.hidden_size, encoder_fingerprint)
        return reranker

    @property
    def encoder(self) -> MultimodalRetrievalEncoder:
        return self._encoder[0]

    @property
    def trained(self) -> bool:
        """Whether the re-ranker scores with its own head (trained or to be trained) instead of the ITM head."""
        return self.head is not None

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        """(N, H) fused [CLS] features -> (N,) match log-odds (see :meth:`classify`)."""
        return self.classify(fused)

    def classify(self, fused: torch.Tensor) -> torch.Tensor:
        """(N, H) fused [CLS] features -> (N,) match log-odds."""
        head = self.head if self.head is not None else self.encoder.match_head
        logits = head(fused).float()
        return logits[:, 1] - logits[:, 0]

    def rerank_scores(
        self, query_batch: Mapping[str, torch.Tensor], item_batch: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """(N,) relevance logits of query row i with item row i (batches as the encoder takes them)."""
        encoder = self.encoder
        query_seq, item_seq = encoder.query_sequence(query_batch), encoder.item_sequence(item_batch)
        return self.classify(encoder.fusion(TokenSequence.concat([query_seq, item_seq])))

    def rerank_topk(
        self, query_batch: Mapping[str, torch.Tensor], candidate_batch: Mapping[str, torch.Tensor], k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Score B queries against their k candidates and order them.

        ``candidate_batch`` holds B*k item rows, query-major (rows b*k .. b*k+k-1 are query b's
        candidates). Each query is encoded once and paired with its k candidates. Returns
        ``(order, scores)``, both (B, k): ``order[b]`` lists candidate positions 0..k-1 best first and
        ``scores[b]`` their relevance logits in that order.
        """
        encoder = self.encoder
        query_seq = encoder.query_sequence(query_batch)
        batch_size = query_seq.tokens.shape[0]
        if candidate_batch["pixel_values"].shape[0] != batch_size * k:
            raise ValueError(
                f"candidate_batch has {candidate_batch['pixel_values'].shape[0]} rows, expected {batch_size} queries x k={k}"
            )
        repeated = query_seq.select(
            torch.arange(batch_size, device=query_seq.tokens.device).repeat_interleave(k)
        )
        item_seq = encoder.item_sequence(candidate_batch)
        scores = self.classify(encoder.fusion(TokenSequence.concat([repeated, item_seq]))).view(batch_size, k)
        return reorder_by_scores(scores)


def reorder_by_scores(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, k) scores -> (order, sorted scores), descending; ties keep the retriever's order."""
    sorted_scores, order = torch.sort(scores, dim=1, descending=True, stable=True)
    return order, sorted_scores


def apply_order(ids: list[list[str]], order: torch.Tensor) -> list[list[str]]:
    """Reorder a retriever's per-query id lists (B lists of k ids) by ``order`` (B, k)."""
    return [[row_ids[j] for j in row_order] for row_ids, row_order in zip(ids, order.tolist(), strict=True)]


def save_rerank_head(head: nn.Linear, directory: str | os.PathLike, encoder_fingerprint: str) -> Path:
    """Write ``head`` as :data:`HEAD_FILE` in ``directory`` (a temporary name first, then renamed), with
    the fingerprint of the encoder whose fused features it was trained on; returns the file."""
    path = Path(directory) / HEAD_FILE
    tmp = path.with_name(path.name + ".tmp")
    state = {name: tensor.detach().float().contiguous().cpu() for name, tensor in head.state_dict().items()}
    save_file(state, str(tmp), metadata={"format": HEAD_FORMAT, "encoder_fingerprint": encoder_fingerprint})
    os.replace(tmp, path)
    return path


def load_rerank_head(directory: str | os.PathLike, hidden_size: int,
                     encoder_fingerprint: str | None = None) -> nn.Linear | None:
    """The trained head saved in ``directory`` (None when it holds none). A file of another format, of
    another width than ``hidden_size``, or (with ``encoder_fingerprint``) trained on another encoder
    is a RablipError."""
    path = Path(directory) / HEAD_FILE
    if not path.is_file():
        return None
    retrain = "train the re-ranker again (run_pretrain.py train.stage=rerank) or delete the file"
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError) as exc:
        raise RablipError(f"{path} cannot be read as safetensors ({exc}); {retrain}") from None
    if metadata.get("format") != HEAD_FORMAT:
        raise RablipError(f"{path}: format {metadata.get('format')!r} is not {HEAD_FORMAT!r}; {retrain}")
    trained_on = metadata.get("encoder_fingerprint")
    if encoder_fingerprint is not None and trained_on != encoder_fingerprint:
        raise RablipError(f"{path} was trained on the encoder with fingerprint {trained_on}, but the encoder "
                          f"beside it has {encoder_fingerprint}; {retrain}")
    head = nn.Linear(hidden_size, 2)
    expected = {name: tuple(value.shape) for name, value in head.state_dict().items()}
    found = {name: tuple(value.shape) for name, value in state.items()}
    if found != expected:
        raise RablipError(f"{path} holds {found}, but a re-ranker head of this encoder needs {expected}; {retrain}")
    head.load_state_dict(state)
    return head
