"""Re-ranker: a 2-way classifier over fused (query, item) features that re-scores a retriever's top-k.

RA-BLIP re-ranks the top-K pairs with a trainable classifier on frozen features. Here the features are
the fusion encoder's [CLS] state over the joint (query tokens, item tokens) sequence, the same fused
features ITM trains. By default the re-ranker shares the encoder's ITM ``match_head`` (the release
ships one 2-way head, and ITM already trains it to tell matching pairs from hard negatives);
``own_head=True`` gives it a fresh head, initialised from the ITM head, to fine-tune on frozen
features. The relevance score is the match log-odds ``logit[match] - logit[no match]``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from rablip.models.fusion import MultimodalRetrievalEncoder
from rablip.models.fusion_layers import TokenSequence


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

    @property
    def encoder(self) -> MultimodalRetrievalEncoder:
        return self._encoder[0]

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
