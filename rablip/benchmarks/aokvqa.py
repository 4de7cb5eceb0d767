"""A-OKVQA: split loader, predictions file and multiple-choice / direct-answer accuracy.

Split file: ``aokvqa_v1p0_{train,val,test}.json``, a JSON list of records: ``question_id`` (str),
``image_id`` (int, COCO 2017), ``question``, ``choices`` (4 str), ``correct_choice_idx``,
``direct_answers`` (10 str), ``difficult_direct_answer`` (bool), ``rationales`` (3 str). Test records
lack the answer fields. Images: ``{split}2017/{image_id:012d}.jpg``.

Predictions: ``predictions.json``, ``{question_id: {"multiple_choice": str, "direct_answer": str}}``
(``multiple_choice`` only for questions with choices). Scores:
:func:`rablip.evaluation.aokvqa_metric.score_aokvqa_files`; headline ``da`` (``mc`` when the file has
no direct answers); a question's score is its DA value, else its MC value. A split is labelled when
an example has direct answers or a correct choice.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rablip.benchmarks.base import Answer, Benchmark
from rablip.config.schema import SplitConfig
from rablip.data.records import QAExample
from rablip.errors import DataError
from rablip.evaluation.aokvqa_metric import score_aokvqa_files
from rablip.utils.io import atomic_write_json, check_type, read_json, record_location, require_keys

RECORD_KEYS = {"question_id": str, "image_id": int, "question": str}
_SPLIT_IN_NAME = re.compile(r"aokvqa_v\d+p\d+_(?P<split>[A-Za-z0-9]+)\.json$")
# Keys with their own QAExample field; the rest (difficult_direct_answer, rationales, ...) go to extra.
_FIELD_KEYS = {"question_id", "question", "choices", "correct_choice_idx", "direct_answers"}


def coco2017_image_path(image_root: str | os.PathLike, split: str, image_id: int) -> str:
    """``{image_root}/{split}2017/{image_id:012d}.jpg`` (relative when root is empty)."""
    return str(Path(image_root, f"{split}2017", f"{image_id:012d}.jpg"))


def split_from_filename(path: str | os.PathLike) -> str | None:
    """``val`` for ``aokvqa_v1p0_val.json``; None when the name does not follow the release."""
    match = _SPLIT_IN_NAME.search(Path(path).name)
    return match.group("split") if match else None


def _string_list(record: dict[str, Any], key: str, where: str) -> list[str]:
    values = record[key]
    check_type(values, list, where, key)
    for position, value in enumerate(values):
        check_type(value, str, where, f"{key}[{position}]")
    return list(values)


def _to_example(record: Any, where: str, image_root: str | os.PathLike, split: str) -> QAExample:
    require_keys(record, RECORD_KEYS, where)
    choices = _string_list(record, "choices", where) if "choices" in record else None
    correct_choice_idx = record.get("correct_choice_idx")
    if correct_choice_idx is not None:
        check_type(correct_choice_idx, int, where, "correct_choice_idx")
        if choices is None or not 0 <= correct_choice_idx < len(choices):
            count = 0 if choices is None else len(choices)
            raise DataError(
                f"{where}: correct_choice_idx {correct_choice_idx} does not index the {count} choices."
            )
    answers = _string_list(record, "direct_answers", where) if "direct_answers" in record else []
    if "difficult_direct_answer" in record:
        check_type(record["difficult_direct_answer"], bool, where, "difficult_direct_answer")
    if "rationales" in record:
        _string_list(record, "rationales", where)
    extra = {key: value for key, value in record.items() if key not in _FIELD_KEYS}
    extra["split"] = split
    return QAExample(
        id=record["question_id"],
        image=coco2017_image_path(image_root, split, record["image_id"]),
        question=record["question"],
        answers=answers,
        choices=choices,
        correct_choice_idx=correct_choice_idx,
        extra=extra,
    )


def load_aokvqa(
    path: str | os.PathLike, image_root: str | os.PathLike = "", split: str | None = None
) -> list[QAExample]:
    """Load one A-OKVQA split file in file order.

    ``split`` (``train``, ``val``, ``test``) picks the COCO 2017 image folder; when None it is
    read from the official file name ``aokvqa_v1p0_{split}.json``. ``extra`` holds ``image_id``,
    ``split``, ``difficult_direct_answer`` and ``rationales`` when present.
    """
    what = "A-OKVQA file"
    path = Path(path)
    if split is None:
        split = split_from_filename(path)
        if split is None:
            raise DataError(
                f"{what} {path}: cannot tell the split from the file name (expected "
                "aokvqa_v1p0_{train,val,test}.json); pass split= explicitly."
            )
    records = read_json(path, what)
    if not isinstance(records, list):
        raise DataError(f"{what} {path}: expected a JSON list of records, got {type(records).__name__}.")
    examples: list[QAExample] = []
    first_index: dict[str, int] = {}
    for index, record in enumerate(records):
        where = record_location(what, path, index)
        example = _to_example(record, where, image_root, split)
        if example.id in first_index:
            raise DataError(
                f"{where}: duplicate question_id {example.id!r} in {path} (first at record {first_index[example.id]})."
            )
        first_index[example.id] = index
        examples.append(example)
    return examples


class AOKVQA(Benchmark):
    """A-OKVQA: allenai/aokvqa ``eval_predictions.py`` (MC exact match, DA min(1, matches / 3))."""

    name = "aokvqa"
    predictions_suffix = ".json"
    main_metric = "da"
    score_help = "A-OKVQA multiple-choice and direct-answer accuracy"

    def load(self, split: SplitConfig) -> list[QAExample]:
        return load_aokvqa(split.path, split.image_root, split.image_split or None)

    def is_labelled(self, split: SplitConfig, examples: Sequence[QAExample]) -> bool:
        return any(ex.answers or ex.correct_choice_idx is not None for ex in examples)

    def write_predictions(self, path: Path, answers: Sequence[Answer], split: SplitConfig) -> Path:
        document = {}
        for a in answers:
            document[a.question_id] = {"direct_answer": a.text}
            if a.choice is not None:
                document[a.question_id]["multiple_choice"] = a.choice
        atomic_write_json(path, document, indent=None)
        return path

    def score(self, path: Path, split: SplitConfig, *, lemmatize: bool = False, strict: bool = False) -> dict:
        return score_aokvqa_files(split.path, path, strict=strict)

    def main_score(self, scores: Mapping) -> float:
        value = scores["da"] if scores["da"] is not None else scores["mc"]
        return float(value)

    def question_scores(self, split: SplitConfig, scores: Mapping, answers: Sequence[Answer]) -> dict[str, float]:
        return {qid: float(v["da"] if v["da"] is not None else (v["mc"] or 0.0))
                for qid, v in scores["per_question"].items()}

    def add_score_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--data", required=True, help="aokvqa_v1p0_{train,val}.json")
        parser.add_argument("--predictions", required=True,
                            help='{question_id: {"multiple_choice": str, "direct_answer": str}}')

    def score_from_args(self, args: argparse.Namespace) -> dict:
        return score_aokvqa_files(args.data, args.predictions, strict=args.strict)


BENCHMARK = AOKVQA()
