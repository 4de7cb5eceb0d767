"""Score retrieval results against the examples' relevance labels.

recall@k, precision@k (percent) and MRR over the questions that have relevance labels
(:func:`rablip.evaluation.retrieval_metrics.retrieval_scores`), plus, for WebQA, the retrieval F1 of
the sources a system would submit (the top ``chosen_k`` retrieved ids, per question, against the
positive facts; a fraction in [0, 1] as the official evaluation reports it, averaged over the
labelled questions, a question without results scoring 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rablip.data.records import QAExample
from rablip.evaluation.retrieval_metrics import retrieval_scores, source_f1

Retrieved = Sequence[tuple[str, float]]


def evaluate_retrieval(results: Mapping[str, Retrieved], examples: Sequence[QAExample], dataset: str = "",
                       ks: Sequence[int] = (1, 5, 10), chosen_k: int = 2) -> dict[str, float]:
    """Retrieval metrics of ``results`` (question id -> ranked (item id, score)) over ``examples``.

    Examples without ``relevant_ids`` are left out; one missing from ``results`` counts as retrieving
    nothing. With ``dataset == "webqa"`` the result also holds ``webqa_retrieval_f1`` over the top
    ``chosen_k`` ids (WebQA questions have one or two positive sources; 2 is the default).
    Returns ``{}`` when no example is labelled.
    """
    labelled = [ex for ex in examples if ex.relevant_ids]
    ranked = [[item_id for item_id, _ in results.get(ex.id, [])] for ex in labelled]
    relevant = [set(ex.relevant_ids) for ex in labelled]
    scores = retrieval_scores(ranked, relevant, ks)
    if dataset == "webqa" and labelled:
        f1 = [source_f1(ids[:chosen_k], rel) for ids, rel in zip(ranked, relevant, strict=True)]
        scores["webqa_retrieval_f1"] = sum(f1) / len(f1)
    if scores:
        scores["questions_without_results"] = sum(1 for ex in labelled if not results.get(ex.id))
    return scores
