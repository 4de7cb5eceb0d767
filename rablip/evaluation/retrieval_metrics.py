"""Retrieval metrics against relevance labels: recall@k, MRR, precision@k, WebQA-style source F1.

:func:`evaluate_retrieval` scores ranked results against the examples' ``relevant_ids``; a
benchmark adds its own metrics on top (WebQA's retrieval F1 of the chosen sources:
:meth:`rablip.benchmarks.webqa.WebQA.retrieval_metrics`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rablip.data.records import QAExample

Retrieved = Sequence[tuple[str, float | None]]
"""Ranked (item id, score) of one question."""


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


def ranked_and_relevant(results: Mapping[str, Retrieved], examples: Sequence[QAExample],
                        ) -> tuple[list[list[str]], list[set[str]]]:
    """Ranked ids and relevant ids of the examples that have ``relevant_ids`` (a question missing from
    ``results`` retrieved nothing), in example order."""
    labelled = [ex for ex in examples if ex.relevant_ids]
    ranked = [[item_id for item_id, _ in results.get(ex.id, [])] for ex in labelled]
    return ranked, [set(ex.relevant_ids) for ex in labelled]


def evaluate_retrieval(results: Mapping[str, Retrieved], examples: Sequence[QAExample],
                       ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """recall@k, precision@k (percent) and MRR of ``results`` (question id -> ranked (item id, score)).

    Examples without ``relevant_ids`` are left out; one missing from ``results`` counts as retrieving
    nothing (``questions_without_results`` says how many). Returns ``{}`` when no example is labelled.
    """
    ranked, relevant = ranked_and_relevant(results, examples)
    scores = retrieval_scores(ranked, relevant, ks)
    if scores:
        scores["questions_without_results"] = sum(1 for ex in examples if ex.relevant_ids and not results.get(ex.id))
    return scores
