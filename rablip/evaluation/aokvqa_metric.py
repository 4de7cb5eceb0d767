"""A-OKVQA accuracy, equal to allenai/aokvqa ``evaluation/eval_predictions.py`` (current version).

- Multiple choice (MC): ``prediction == choices[correct_choice_idx]`` (exact string equality),
  averaged over *all* questions.
- Direct answer (DA): questions with ``difficult_direct_answer`` true are left out; for the rest
  ``min(1, (number of the 10 direct answers exactly equal to the prediction) / 3)``. No
  normalisation at all and no leave-one-out averaging.
- A missing prediction scores 0 (the official ``strict=False``). As in the official script, a
  setting is only scored when the file holds at least one prediction for it (else it is None).
- Scores are 100 x mean, not rounded (the official script prints the raw value).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rablip.errors import DataError
from rablip.evaluation.predictions import known_predictions, require_container, require_string
from rablip.utils.io import PathLike, check_type, read_json, record_location, require_keys

PREDICTION_KEYS = ("multiple_choice", "direct_answer")


@dataclass
class AOKVQAQuestion:
    """The answer fields of one A-OKVQA record."""

    question_id: str
    choices: list[str]
    correct_choice_idx: int
    direct_answers: list[str]
    difficult_direct_answer: bool


def _string_list(record: dict, key: str, where: str) -> list[str]:
    check_type(record[key], list, where, key)
    for position, item in enumerate(record[key]):
        check_type(item, str, where, f"{key}[{position}]")
    return list(record[key])


def load_aokvqa_answers(path: PathLike) -> list[AOKVQAQuestion]:
    """Read ``aokvqa_v1p0_{split}.json`` (a JSON list) with its answer fields, in file order."""
    document = read_json(path, "A-OKVQA file")
    if not isinstance(document, list):
        raise DataError(f"A-OKVQA file {path}: expected a JSON list of questions, got {type(document).__name__}.")
    questions = []
    seen: set[str] = set()
    for index, record in enumerate(document):
        where = record_location("A-OKVQA file", path, index)
        if isinstance(record, dict) and "choices" in record and "correct_choice_idx" not in record:
            raise DataError(f"{where}: no answer fields (a test-split file?). Score against train or val.")
        require_keys(
            record,
            {"question_id": str, "choices": list, "correct_choice_idx": int, "direct_answers": list,
             "difficult_direct_answer": bool},
            where,
        )
        choices = _string_list(record, "choices", where)
        if not 0 <= record["correct_choice_idx"] < len(choices):
            raise DataError(f"{where}: correct_choice_idx {record['correct_choice_idx']} is outside the {len(choices)} choices.")
        if record["question_id"] in seen:
            raise DataError(f"{where}: question_id {record['question_id']!r} appears twice.")
        seen.add(record["question_id"])
        questions.append(
            AOKVQAQuestion(
                record["question_id"], choices, record["correct_choice_idx"],
                _string_list(record, "direct_answers", where), record["difficult_direct_answer"],
            )
        )
    return questions


def read_aokvqa_predictions(path: PathLike, questions: Sequence[AOKVQAQuestion],
                            strict: bool = False) -> dict[str, dict[str, str]]:
    """Read ``{question_id: {"multiple_choice": str, "direct_answer": str}}`` (either key may be absent).

    Ids the data lack are ignored with a warning, or refused when ``strict``
    (:func:`~rablip.evaluation.predictions.check_prediction_ids`).
    """
    document = read_json(path, "prediction file")
    require_container(document, dict, path, 'a JSON object {question_id: {"multiple_choice": ..., "direct_answer": ...}}')
    predictions: dict[str, dict[str, str]] = {}
    for question_id, entry in document.items():
        record = f"question_id {question_id!r}"
        if not isinstance(entry, dict):
            raise DataError(
                f"prediction file {path}, {record}: expected an object with 'multiple_choice' and/or "
                f"'direct_answer', got {type(entry).__name__}."
            )
        predictions[question_id] = {
            key: require_string(entry[key], path, record, key) for key in PREDICTION_KEYS if key in entry
        }
    return known_predictions(predictions, [q.question_id for q in questions], path, "question_id", strict)


def direct_answer_accuracy(prediction: str, direct_answers: Sequence[str]) -> float:
    """``min(1, exact matches / 3)`` with no normalisation."""
    return min(1.0, sum(prediction == answer for answer in direct_answers) / 3.0)


def score_aokvqa(questions: Sequence[AOKVQAQuestion], predictions: dict[str, dict[str, str]]) -> dict:
    """MC and DA scores (percent) and per-question values, as the CLI prints them."""
    if not questions:
        raise DataError("the A-OKVQA file holds no questions; nothing to score.")
    has_mc = any("multiple_choice" in entry for entry in predictions.values())
    has_da = any("direct_answer" in entry for entry in predictions.values())
    mc_values: list[float] = []
    da_values: list[float] = []
    per_question: dict[str, dict[str, float | None]] = {}
    missing = {"mc": 0, "da": 0}
    for question in questions:
        entry = predictions.get(question.question_id, {})
        mc = da = None
        if has_mc:
            if "multiple_choice" in entry:
                mc = float(entry["multiple_choice"] == question.choices[question.correct_choice_idx])
            else:
                mc, missing["mc"] = 0.0, missing["mc"] + 1
            mc_values.append(mc)
        if has_da and not question.difficult_direct_answer:
            if "direct_answer" in entry:
                da = direct_answer_accuracy(entry["direct_answer"], question.direct_answers)
            else:
                da, missing["da"] = 0.0, missing["da"] + 1
            da_values.append(da)
        per_question[question.question_id] = {
            "mc": None if mc is None else 100 * mc,
            "da": None if da is None else 100 * da,
        }
    return {
        "mc": sum(mc_values) / len(mc_values) * 100 if mc_values else None,
        "da": sum(da_values) / len(da_values) * 100 if da_values else None,
        "per_question": per_question,
        "num_questions": len(questions),
        "num_da_questions": sum(1 for q in questions if not q.difficult_direct_answer),
        "missing": missing,
        "metric": {
            "name": "A-OKVQA accuracy (allenai/aokvqa eval_predictions.py)",
            "missing_predictions": "scored 0",
            "unscored_setting": "None when the file has no prediction for that setting",
        },
    }


def score_aokvqa_files(data_path: PathLike, predictions_path: PathLike, strict: bool = False) -> dict:
    """Read the data and prediction files and score them (see :func:`score_aokvqa`; ``strict``: refuse unknown ids)."""
    questions = load_aokvqa_answers(data_path)
    return score_aokvqa(questions, read_aokvqa_predictions(predictions_path, questions, strict))
