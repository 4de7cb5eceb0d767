"""Re-ranker over fused (query, item) features: shapes, ordering, head sharing."""

from __future__ import annotations

import pytest
import torch

from rablip.models.rerank import FusionReranker, apply_order, reorder_by_scores
from tests.models.test_fusion import build_tiny_encoder, item_batch, query_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _candidates(k: int, batch_size: int) -> dict[str, torch.Tensor]:
    """B*k item rows, query-major, cycling through the four item modalities of item_batch."""
    items = item_batch(seed=4)
    rows = torch.arange(batch_size * k) % 4
    return {key: value[rows] for key, value in items.items()}


@torch.no_grad()
def test_rerank_scores_shape_and_dependence_on_the_pair():
    encoder = build_tiny_encoder()
    reranker = FusionReranker(encoder)
    queries, items = query_batch(n=4), item_batch()
    scores = reranker.rerank_scores(queries, items)
    assert scores.shape == (4,) and scores.dtype == torch.float32
    swapped = reranker.rerank_scores(queries, {key: value[[1, 0, 3, 2]] for key, value in items.items()})
    assert (scores - swapped).abs().max() > 1e-5


@torch.no_grad()
def test_rerank_topk_orders_candidates_by_pairwise_scores():
    encoder = build_tiny_encoder()
    reranker = FusionReranker(encoder)
    k, batch_size = 3, 2
    queries, candidates = query_batch(n=batch_size), _candidates(k, batch_size)
    order, sorted_scores = reranker.rerank_topk(queries, candidates, k)
    assert order.shape == (batch_size, k) and sorted_scores.shape == (batch_size, k)
    # The same numbers as scoring each (query, candidate) pair on its own, sorted best first.
    repeated = {key: value.repeat_interleave(k, dim=0) for key, value in queries.items()}
    pairwise = reranker.rerank_scores(repeated, candidates).view(batch_size, k)
    torch.testing.assert_close(sorted_scores, torch.gather(pairwise, 1, order), atol=1e-5, rtol=1e-5)
    assert (sorted_scores[:, :-1] >= sorted_scores[:, 1:]).all()
    for row in range(batch_size):
        assert sorted(order[row].tolist()) == list(range(k))


def test_reorder_and_apply_order_on_a_known_case():
    scores = torch.tensor([[0.5, 2.0, 2.0, -1.0], [3.0, 0.0, 1.0, 2.0]])
    order, sorted_scores = reorder_by_scores(scores)
    assert order.tolist() == [[1, 2, 0, 3], [0, 3, 2, 1]]  # the tie keeps the retriever's order
    assert sorted_scores.tolist() == [[2.0, 2.0, 0.5, -1.0], [3.0, 2.0, 1.0, 0.0]]
    ids = [["a", "b", "c", "d"], ["e", "f", "g", "h"]]
    assert apply_order(ids, order) == [["b", "c", "a", "d"], ["e", "h", "g", "f"]]


def test_shared_head_by_default_and_own_head_on_request():
    encoder = build_tiny_encoder()
    shared = FusionReranker(encoder)
    assert list(shared.parameters()) == []  # scores with encoder.match_head, trained by ITM
    own = FusionReranker(encoder, own_head=True)
    torch.testing.assert_close(own.head.weight, encoder.match_head.weight)
    queries, items = query_batch(n=4), item_batch()
    with torch.no_grad():
        torch.testing.assert_close(own.rerank_scores(queries, items), shared.rerank_scores(queries, items))
        own.head.bias.add_(torch.tensor([0.0, 1.0]))
        shifted = own.rerank_scores(queries, items)
        torch.testing.assert_close(shifted, shared.rerank_scores(queries, items) + 1.0)
    assert own.head.weight.data_ptr() != encoder.match_head.weight.data_ptr()
