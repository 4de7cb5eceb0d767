"""Retrieval metrics against relevance labels: recall@k, MRR, precision@k, WebQA-style source F1."""

from __future__ import annotations

from collections.abc import Sequence


def recall_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    """1 when any relevant item is among the top ``k``."""
    return float(any(item in relevant for item in ranked[:k]))


def precision_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    """Share of the top ``k`` that is relevant (out of ``k``)."""
    return sum(item in relevant for item in ranked[:k]) / k


def reciprocal_rank(ranked: Sequence[str], relevant: set[str]) -> float:
    for rank, item in enumerate(ranked, start=1):
        if item in relevant:
            return 1.0 / rank
    return 0.0


def source_f1(chosen: Sequence[str], relevant: set[str]) -> float:
    """F1 of a set of chosen sources against the relevant ones (WebQA's retrieval F1 per question)."""
    chosen_set = set(chosen)
    hits = len(chosen_set & relevant)
    if not chosen_set or not relevant or not hits:
        return 0.0
    precision, recall = hits / len(chosen_set), hits / len(relevant)
    return 2 * precision * recall / (precision + recall)


def retrieval_scores(ranked_per_question: Sequence[Sequence[str]], relevant_per_question: Sequence[set[str]],
                     ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Mean recall@k, precision@k (percent) and MRR over questions that have relevance labels."""
    pairs = [(r, rel) for r, rel in zip(ranked_per_question, relevant_per_question) if rel]
    if not pairs:
        return {}
    n = len(pairs)
    scores = {f"recall@{k}": 100.0 * sum(recall_at_k(r, rel, k) for r, rel in pairs) / n for k in ks}
    scores.update({f"precision@{k}": 100.0 * sum(precision_at_k(r, rel, k) for r, rel in pairs) / n for k in ks})
    scores["mrr"] = sum(reciprocal_rank(r, rel) for r, rel in pairs) / n
    scores["questions"] = n
    return scores
