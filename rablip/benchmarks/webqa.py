"""WebQA: split loader, predictions file with the chosen sources, QA-Acc and retrieval F1.

Split file: ``WebQA_train_val.json`` / ``WebQA_test.json``, an object keyed by Guid (records and
facts: :mod:`rablip.data.webqa`, which also reads the facts and ``imgs.tsv`` as a knowledge base).
A split of the shared train/val file is chosen by ``data.<split>.split``.

Predictions: ``predictions.json``, ``{guid: {"sources": [fact ids], "answer": str}}``; the sources
are the first :attr:`WebQA.chosen_sources` references the model was given. Scores:
:func:`rablip.evaluation.webqa_metric.score_webqa` (fractions in [0, 1]); headline ``qa_acc`` in
percent (``qa_acc_approx`` when the data lack ``Keywords_A``). Retrieval adds
``webqa_retrieval_f1``: the F1 of the top :attr:`WebQA.chosen_sources` retrieved ids against the
positive facts, averaged over the labelled questions (a fraction, as the official evaluation
reports it; a question without results scores 0).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rablip.benchmarks.base import Answer, Benchmark
from rablip.config.schema import SplitConfig
from rablip.data.records import QAExample
from rablip.data.webqa import (
    LABELLED_FACT_LISTS,
    UNLABELLED_FACT_LISTS,
    fact_id,
    fact_list,
    in_split,
    read_records,
)
from rablip.evaluation.retrieval_metrics import Retrieved, evaluate_retrieval, ranked_and_relevant, source_f1
from rablip.evaluation.webqa_metric import (
    approximate_accuracy,
    keyword_accuracy,
    load_webqa_references,
    read_webqa_predictions,
    score_webqa,
)
from rablip.utils.io import atomic_write_json, check_type, require_keys

_NOT_EXTRA = {"Q", "A", "Qcate", *LABELLED_FACT_LISTS, *UNLABELLED_FACT_LISTS}


def _unquote(text: str) -> str:
    """WebQA wraps questions and answers in literal double quotes; drop one wrapping pair."""
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    return text


def _to_example(guid: str, record: Any, where: str) -> QAExample:
    require_keys(record, {"Q": str}, where)
    raw_answers = record.get("A", [])
    check_type(raw_answers, list, where, "A")
    for position, answer in enumerate(raw_answers):
        check_type(answer, str, where, f"A[{position}]")
    if "Qcate" in record:
        check_type(record["Qcate"], str, where, "Qcate")
    labelled = any(key in record for key in LABELLED_FACT_LISTS)
    positives = fact_list(record, "txt_posFacts", where) + fact_list(record, "img_posFacts", where)
    negatives = fact_list(record, "txt_negFacts", where) + fact_list(record, "img_negFacts", where)
    candidates = fact_list(record, "txt_Facts", where) + fact_list(record, "img_Facts", where)
    extra = {key: value for key, value in record.items() if key not in _NOT_EXTRA}
    extra["raw_question"] = record["Q"]
    extra["raw_answers"] = list(raw_answers)
    if labelled:
        extra["negative_ids"] = [fact_id(fact) for fact in negatives]
    if candidates:
        extra["candidate_ids"] = [fact_id(fact) for fact in candidates]
    return QAExample(
        id=guid,
        image=None,
        question=_unquote(record["Q"]),
        answers=[_unquote(answer) for answer in raw_answers],
        question_type=record.get("Qcate"),
        relevant_ids=[fact_id(fact) for fact in positives] if labelled else None,
        extra=extra,
    )


def load_webqa(json_path: str | os.PathLike, split: str | None = None) -> list[QAExample]:
    """Load WebQA questions in file order, keeping only records of ``split`` when given.

    ``relevant_ids`` are the positive facts (text facts by ``snippet_id``, image facts by
    ``str(image_id)``); ``extra`` holds ``negative_ids``, ``candidate_ids`` (test files),
    ``Keywords_A``, ``split``, ``topic`` and the unstripped ``raw_question`` / ``raw_answers``.
    ``image`` is None: WebQA questions have no image of their own.
    """
    json_path = Path(json_path)
    examples = []
    for guid, record in read_records(json_path).items():
        where = f"WebQA file {json_path}, record {guid!r}"
        if isinstance(record, dict) and not in_split(record, split, where):
            continue
        examples.append(_to_example(guid, record, where))
    return examples


class WebQA(Benchmark):
    """WebQA: WebQnA/WebQA_Baseline ``eval_1022.py`` (retrieval F1, QA-Acc; QA-FL with a BART model)."""

    name = "webqa"
    predictions_suffix = ".json"
    main_metric = "qa_acc"
    score_help = "WebQA retrieval F1, QA-Acc and (with a BART checkpoint) QA-FL / QA"
    chosen_sources = 2
    """Sources submitted per question: the top references (WebQA questions have one or two positives)."""

    def load(self, split: SplitConfig) -> list[QAExample]:
        return load_webqa(split.path, split.split or None)

    def is_labelled(self, split: SplitConfig, examples: Sequence[QAExample]) -> bool:
        return any(ex.answers for ex in examples)

    def write_predictions(self, path: Path, answers: Sequence[Answer], split: SplitConfig) -> Path:
        document = {a.question_id: {"sources": [i for i, _ in a.references[:self.chosen_sources]], "answer": a.text}
                    for a in answers}
        atomic_write_json(path, document, indent=None)
        return path

    def score(self, path: Path, split: SplitConfig, *, lemmatize: bool = False, strict: bool = False) -> dict:
        questions = load_webqa_references(split.path, split.split or None)
        return score_webqa(questions, read_webqa_predictions(path, questions, strict))

    def main_score(self, scores: Mapping) -> float:
        value = scores["qa_acc"] if scores.get("qa_acc") is not None else scores["qa_acc_approx"]
        return 100.0 * value

    def question_scores(self, split: SplitConfig, scores: Mapping, answers: Sequence[Answer]) -> dict[str, float]:
        predicted = {a.question_id: a.text for a in answers}
        values = {}
        for q in load_webqa_references(split.path, split.split or None):
            answer = predicted.get(q.guid, "")
            if q.keywords is not None:
                values[q.guid] = 100.0 * keyword_accuracy(answer, q.keywords, q.category)
            else:
                values[q.guid] = 100.0 * approximate_accuracy(answer, q.answers[0] if q.answers else "", q.category)
        return values

    def retrieval_metrics(self, results: Mapping[str, Retrieved], examples: Sequence[QAExample],
                          ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
        scores = evaluate_retrieval(results, examples, ks)
        ranked, relevant = ranked_and_relevant(results, examples)
        if ranked:
            f1 = [source_f1(ids[:self.chosen_sources], rel) for ids, rel in zip(ranked, relevant, strict=True)]
            scores["webqa_retrieval_f1"] = sum(f1) / len(f1)
        return scores

    def add_score_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--data", required=True, help="WebQA_train_val.json (or a file with Keywords_A)")
        parser.add_argument("--predictions", required=True, help='{guid: {"sources": [ids], "answer": str}}')
        parser.add_argument("--split", help="score only records of this split (e.g. val)")
        parser.add_argument("--bart-checkpoint", help="local transformers-format BART dir for QA-FL")
        parser.add_argument("--device", default="cpu", help="device for the BART model (default cpu)")

    def score_from_args(self, args: argparse.Namespace) -> dict:
        questions = load_webqa_references(args.data, split=args.split)
        predictions = read_webqa_predictions(args.predictions, questions, args.strict)
        fluency_fn: Callable[[str, list[str]], float] | None = None
        if args.bart_checkpoint is not None:
            from rablip.evaluation.bartscore import BartScorer, fluency

            scorer = BartScorer(args.bart_checkpoint, device=args.device)

            def fluency_fn(answer: str, references: list[str]) -> float:
                return fluency(answer, references, scorer)

        return score_webqa(questions, predictions, fluency_fn)


BENCHMARK = WebQA()
