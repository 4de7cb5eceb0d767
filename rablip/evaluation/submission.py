"""Predictions in each benchmark's official submission format, scored by rablip's official-equivalent scorers.

=============  ==========================  ============================================================
dataset        file                        format
=============  ==========================  ============================================================
okvqa, vqav2,  ``predictions.json``        ``[{"question_id": int, "answer": str}]`` (VQA results file)
synthetic
aokvqa         ``predictions.json``        ``{question_id: {"multiple_choice": str, "direct_answer": str}}``
infoseek       ``predictions.jsonl``       ``{"data_id": str, "prediction": str}`` per line
webqa          ``predictions.json``        ``{guid: {"sources": [fact ids], "answer": str}}``
=============  ==========================  ============================================================

A split without labels (e.g. an OK-VQA test split without annotations) is written but not scored.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rablip.config.schema import SplitConfig
from rablip.data.records import QAExample
from rablip.utils.io import atomic_write_json, atomic_write_text

VQA_DATASETS = ("okvqa", "vqav2", "synthetic")
MAIN_METRIC = {"okvqa": "overall", "vqav2": "overall", "synthetic": "overall", "aokvqa": "da",
               "infoseek": "score", "webqa": "qa_acc"}
"""The headline number of each dataset's scores (WebQA without keywords: ``qa_acc_approx``)."""


@dataclass
class Answer:
    """What the model answered for one question."""

    question_id: str
    text: str
    """The generated (direct) answer."""
    choice: str | None = None
    """The multiple-choice option with the highest likelihood (A-OKVQA), else None."""
    references: list[tuple[str, float | None]] = field(default_factory=list)
    """The references it was given, in prompt order: (item id, retrieval score or None)."""


def predictions_file(run_dir: Path, dataset: str, name: str = "predictions") -> Path:
    return run_dir / f"{name}.{'jsonl' if dataset == 'infoseek' else 'json'}"


def write_predictions(path: Path, dataset: str, answers: Sequence[Answer], webqa_sources: int = 2) -> Path:
    """Write ``answers`` in ``dataset``'s official format (atomically)."""
    if dataset in VQA_DATASETS:
        atomic_write_json(path, [{"question_id": int(a.question_id), "answer": a.text} for a in answers], indent=None)
    elif dataset == "aokvqa":
        document = {}
        for a in answers:
            document[a.question_id] = {"direct_answer": a.text}
            if a.choice is not None:
                document[a.question_id]["multiple_choice"] = a.choice
        atomic_write_json(path, document, indent=None)
    elif dataset == "infoseek":
        lines = [json.dumps({"data_id": a.question_id, "prediction": a.text}) for a in answers]
        atomic_write_text(path, "\n".join(lines) + "\n")
    elif dataset == "webqa":
        document = {a.question_id: {"sources": [i for i, _ in a.references[:webqa_sources]], "answer": a.text}
                    for a in answers}
        atomic_write_json(path, document, indent=None)
    else:
        raise ValueError(f"no submission format for dataset {dataset!r}")
    return path


def is_labelled(dataset: str, split: SplitConfig, examples: Sequence[QAExample]) -> bool:
    """Whether the split's files carry what the official scorer needs."""
    if dataset in VQA_DATASETS:
        return bool(split.annotations)
    if dataset == "aokvqa":
        return any(ex.answers or ex.correct_choice_idx is not None for ex in examples)
    return any(ex.answers or ex.extra.get("answer_eval") is not None for ex in examples)


def score_predictions(path: Path, dataset: str, split: SplitConfig, lemmatize: bool = False) -> dict:
    """The official-equivalent scores of a prediction file against the split's own files."""
    if dataset in VQA_DATASETS:
        from rablip.evaluation.vqa_metric import score_vqa_files

        return score_vqa_files(split.path, split.annotations, path, lemmatize=lemmatize)
    if dataset == "aokvqa":
        from rablip.evaluation.aokvqa_metric import score_aokvqa_files

        return score_aokvqa_files(split.path, path)
    if dataset == "infoseek":
        from rablip.evaluation.infoseek_metric import score_infoseek_files

        return score_infoseek_files(split.path, path, split.qtypes or None)
    from rablip.evaluation.webqa_metric import load_webqa_references, read_webqa_predictions, score_webqa

    questions = load_webqa_references(split.path, split.split or None)
    return score_webqa(questions, read_webqa_predictions(path, questions))


def main_score(dataset: str, scores: dict) -> float:
    """The headline number of ``scores`` in percent."""
    if dataset == "webqa":
        value = scores["qa_acc"] if scores.get("qa_acc") is not None else scores["qa_acc_approx"]
        return 100.0 * value
    value = scores[MAIN_METRIC[dataset]]
    if value is None and dataset == "aokvqa":
        value = scores["mc"]
    return float(value)


def question_scores(dataset: str, split: SplitConfig, scores: dict, answers: Sequence[Answer]) -> dict[str, float]:
    """Question id -> that question's score in percent, by the dataset's official rule."""
    if dataset in VQA_DATASETS:
        return {qid: float(value) for qid, value in scores["per_question"].items()}
    if dataset == "aokvqa":
        return {qid: float(v["da"] if v["da"] is not None else (v["mc"] or 0.0))
                for qid, v in scores["per_question"].items()}
    predicted = {a.question_id: a.text for a in answers}
    if dataset == "infoseek":
        from rablip.evaluation.infoseek_metric import (
            load_infoseek_references,
            question_correct,
            read_question_types,
        )

        types = read_question_types(split.qtypes) if split.qtypes else None
        return {q.data_id: 100.0 * question_correct(q, predicted.get(q.data_id, ""))
                for q in load_infoseek_references(split.path, types)}
    from rablip.evaluation.webqa_metric import approximate_accuracy, keyword_accuracy, load_webqa_references

    values = {}
    for q in load_webqa_references(split.path, split.split or None):
        answer = predicted.get(q.guid, "")
        if q.keywords is not None:
            values[q.guid] = 100.0 * keyword_accuracy(answer, q.keywords, q.category)
        else:
            values[q.guid] = 100.0 * approximate_accuracy(answer, q.answers[0] if q.answers else "", q.category)
    return values
