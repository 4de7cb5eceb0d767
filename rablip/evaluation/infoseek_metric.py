"""InfoSeek accuracy, equal to the official ``infoseek_eval.py`` (edchengg/infoseek_eval).

- String and Time questions: exact match after normalisation (lower-case, drop
  ``string.punctuation``, drop the words a/an/the, collapse white space) against any alias in
  ``answer_eval`` (the official script matches ``answer_eval`` only; ``answer`` is used when a
  record has no ``answer_eval``).
- Numerical questions (``answer_eval`` = ``[{"wikidata": v, "range": [lo, hi]}]``): the prediction
  is parsed as the official ``process_numerical_answer`` does (``"9-10"`` is a range, the first two
  numbers found are used, no number at all is the range [0, 0]); a single number counts when it lies
  in [lo, hi]; a range counts when it lies inside [lo, hi] or its IoU with it is >= 0.5.
- Each split's score is ``round(100 * accuracy, 2)``; a record belongs to the unseen-question split
  when its ``data_split`` ends with ``unseen_question``, otherwise to unseen-entity. The final score
  is the harmonic mean of the two rounded split scores (0 replaced by 1e-12), rounded to 2.

Difference from the official script, on purpose: a missing prediction counts as wrong (the official
script averages over the predictions it was given) and an unknown ``data_id`` is an error (the
official script skips it). With one prediction per reference question the numbers are equal.
Without a qtype file, numerical questions are recognised by the ``range`` in ``answer_eval``
(String and Time are scored the same way, so the split scores do not change).
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

from rablip.errors import DataError
from rablip.evaluation.predictions import add_unique, known_predictions, require_string
from rablip.utils.io import PathLike, iter_jsonl_with_lines, require_keys

SPLITS = ("unseen_question", "unseen_entity")
QUESTION_TYPES = ("string", "numerical", "time")
_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER = re.compile(r"[-+]?[.]?[\d]+(?:,\d\d\d)*[\.]?\d*(?:[eE][-+]?\d+)?")


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation, drop articles, collapse white space (SQuAD style)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, aliases: Sequence[str]) -> int:
    """1 if the normalised prediction equals any normalised alias."""
    normalized = normalize_answer(prediction)
    return int(any(normalized == normalize_answer(alias) for alias in aliases))


def _spaced_ranges(text: str) -> str:
    """``'9-10'`` -> ``'9 - 10'``: a hyphen right after a digit separates a range."""
    return "".join(" - " if ch == "-" and i >= 1 and text[i - 1].isdigit() else ch for i, ch in enumerate(text))


def parse_numeric_prediction(text: str) -> float | list[float]:
    """A single number or a ``[lo, hi]`` range, as the official ``process_numerical_answer``.

    Quirks kept: only the first two numbers are used; two numbers in decreasing order give the
    first number alone; no number gives the range ``[0, 0]``.
    """
    numbers = []
    for match in _NUMBER.findall(_spaced_ranges(text)):
        cleaned = match.replace(",", "").strip(".")
        if cleaned.count(".") > 1:
            cleaned = cleaned.split(".")[0]
        numbers.append(float(cleaned))
    numbers = numbers[:2]
    if len(numbers) == 2:
        return numbers if numbers[0] <= numbers[1] else numbers[0]
    if len(numbers) == 1:
        return numbers[0]
    return [0.0, 0.0]


def range_iou(first: Sequence[float], second: Sequence[float]) -> float:
    """Intersection over union of two closed ranges (lengths padded by 1e-12 as the official code)."""
    low_1, high_1 = min(first), max(first)
    low_2, high_2 = min(second), max(second)
    overlap = max(0.0, min(high_1, high_2) - max(low_1, low_2))
    union = (high_1 - low_1 + 1e-12) + (high_2 - low_2 + 1e-12) - overlap
    return overlap / union if union != 0 else 0.0


def numeric_match(prediction: str, reference_range: Sequence[float]) -> int:
    """1 if the parsed prediction (number or range) fits ``reference_range``."""
    low, high = reference_range
    parsed = parse_numeric_prediction(prediction)
    if not isinstance(parsed, list):
        return int(low <= parsed <= high)
    if low <= parsed[0] <= high and low <= parsed[1] <= high:
        return 1
    return int(range_iou(parsed, reference_range) >= 0.5 - 1e-12)


def harmonic_mean(*values: float) -> float:
    """Harmonic mean with zeros replaced by 1e-12, as the official code."""
    safe = [value if value != 0 else 1e-12 for value in values]
    return len(safe) / sum(1.0 / value for value in safe)


@dataclass
class InfoSeekQuestion:
    """What scoring needs from one reference record."""

    data_id: str
    split: str
    question_type: str
    aliases: list[str]
    numeric_range: list[float] | None


def _numeric_range(answer_eval: object, where: str) -> list[float] | None:
    """``[lo, hi]`` from ``[{"wikidata": v, "range": [lo, hi]}]`` (or the bare dict), else None."""
    entry = answer_eval[0] if isinstance(answer_eval, list) and answer_eval else answer_eval
    if not isinstance(entry, dict) or "range" not in entry:
        return None
    bounds = entry["range"]
    try:
        return [float(value) for value in bounds][:2] if len(bounds) >= 2 else None
    except (TypeError, ValueError):
        raise DataError(f"{where}: answer_eval range {bounds!r} is not two numbers.") from None


def read_question_types(path: PathLike) -> dict[str, str]:
    """``{data_id: "string"|"numerical"|"time"}`` from ``infoseek_val_qtype.jsonl``."""
    types = {}
    for line, record in iter_jsonl_with_lines(path, "InfoSeek qtype file"):
        where = f"InfoSeek qtype file {path}, line {line}"
        require_keys(record, {"data_id": str, "question_type": str}, where)
        kind = record["question_type"].lower()
        if kind not in QUESTION_TYPES:
            raise DataError(f"{where}: question_type {record['question_type']!r} is not String, Numerical or Time.")
        types[record["data_id"]] = kind
    return types


def load_infoseek_references(path: PathLike, question_types: dict[str, str] | None = None) -> list[InfoSeekQuestion]:
    """Read ``infoseek_{split}.jsonl`` reference records, in file order."""
    questions = []
    seen: set[str] = set()
    for line, record in iter_jsonl_with_lines(path, "InfoSeek reference file"):
        where = f"InfoSeek reference file {path}, line {line}"
        require_keys(record, {"data_id": str, "data_split": str}, where)
        data_id = record["data_id"]
        if data_id in seen:
            raise DataError(f"{where}: data_id {data_id!r} appears twice.")
        seen.add(data_id)
        if "answer_eval" not in record and "answer" not in record:
            raise DataError(f"{where}: no 'answer_eval' or 'answer' (a test-split file?). Score against val.")
        answer_eval = record.get("answer_eval", record.get("answer"))
        numeric_range = _numeric_range(answer_eval, where)
        if question_types is not None:
            if data_id not in question_types:
                raise DataError(f"{where}: data_id {data_id!r} has no entry in the qtype file.")
            kind = question_types[data_id]
            if kind == "numerical" and numeric_range is None:
                raise DataError(f"{where}: a Numerical question without an answer_eval range.")
        else:
            kind = "numerical" if numeric_range is not None else "string"
        aliases = [] if kind == "numerical" else _aliases(answer_eval, where)
        questions.append(InfoSeekQuestion(data_id, record["data_split"], kind, aliases, numeric_range))
    return questions


def _aliases(answer_eval: object, where: str) -> list[str]:
    values = answer_eval if isinstance(answer_eval, list) else [answer_eval]
    if not all(isinstance(value, str) for value in values):
        raise DataError(f"{where}: answer_eval must be a list of strings for a String/Time question.")
    return list(values)


def read_infoseek_predictions(path: PathLike, questions: Sequence[InfoSeekQuestion],
                              strict: bool = False) -> dict[str, str]:
    """Read a JSONL of ``{"data_id": str, "prediction": str}``.

    Ids the references lack are skipped with a warning as the official script does, or refused
    when ``strict`` (:func:`~rablip.evaluation.predictions.check_prediction_ids`).
    """
    predictions: dict[str, str] = {}
    for line, record in iter_jsonl_with_lines(path, "prediction file"):
        where = f"line {line}"
        require_keys(record, {"data_id": str}, f"prediction file {path}, {where}")
        require_keys(record, ["prediction"], f"prediction file {path}, {where}")
        prediction = require_string(record["prediction"], path, where, "prediction")
        add_unique(predictions, record["data_id"], prediction, path, where)
    return known_predictions(predictions, [q.data_id for q in questions], path, "data_id", strict)


def question_correct(question: InfoSeekQuestion, prediction: str) -> int:
    """1 if ``prediction`` answers ``question`` under the official rules."""
    if question.question_type == "numerical":
        return numeric_match(prediction, question.numeric_range)
    return exact_match(prediction, question.aliases)


def split_of(question: InfoSeekQuestion) -> str:
    """``unseen_question`` when ``data_split`` ends with it, else ``unseen_entity`` (official rule)."""
    return "unseen_question" if question.split.endswith("unseen_question") else "unseen_entity"


def _score(values: list[int]) -> float:
    return round((sum(values) / len(values) if values else 0) * 100, 2)


def score_infoseek(
    questions: Sequence[InfoSeekQuestion], predictions: dict[str, str], with_types: bool = False
) -> dict:
    """Split scores, their harmonic mean and (``with_types``) the per-type breakdown, in percent."""
    if not questions:
        raise DataError("the InfoSeek reference file holds no questions; nothing to score.")
    results: dict[str, list[int]] = {split: [] for split in SPLITS}
    by_type: dict[str, dict[str, list[int]]] = {split: {kind: [] for kind in QUESTION_TYPES} for split in SPLITS}
    for question in questions:
        prediction = predictions.get(question.data_id)
        correct = 0 if prediction is None else question_correct(question, prediction)
        results[split_of(question)].append(correct)
        by_type[split_of(question)][question.question_type].append(correct)
    split_scores = {split: _score(values) for split, values in results.items()}
    output = {
        "score": round(harmonic_mean(*split_scores.values()), 2),
        **split_scores,
        "counts": {split: len(values) for split, values in results.items()},
        "missing": sum(1 for q in questions if q.data_id not in predictions),
        "metric": {
            "name": "InfoSeek accuracy (infoseek_eval.py), harmonic mean of the two unseen splits",
            "missing_predictions": "scored 0",
        },
    }
    if with_types:
        output["per_type"] = {
            split: {kind: _score(values) for kind, values in kinds.items() if values}
            for split, kinds in by_type.items()
        }
    return output


def score_infoseek_files(
    references_path: PathLike, predictions_path: PathLike, qtypes_path: PathLike | None = None,
    strict: bool = False,
) -> dict:
    """Read the files and score them (see :func:`score_infoseek`; ``strict``: refuse unknown ids)."""
    question_types = read_question_types(qtypes_path) if qtypes_path is not None else None
    questions = load_infoseek_references(references_path, question_types)
    predictions = read_infoseek_predictions(predictions_path, questions, strict)
    return score_infoseek(questions, predictions, with_types=question_types is not None)
