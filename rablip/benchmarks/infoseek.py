"""InfoSeek: split loader, JSONL predictions and the official accuracy (harmonic mean of the unseen splits).

Split file: ``infoseek_{train,val,test}.jsonl``, records ``{data_id, image_id, question, answer
(list), answer_eval, data_split}``; numeric questions carry ``answer_eval`` as ``[{"wikidata": value,
"range": [lo, hi]}]``. The optional question-type file (``infoseek_val_qtype.jsonl``) maps ``data_id``
to ``question_type`` (String, Numerical, Time). Images are OVEN images named by ``image_id``.

Predictions: ``predictions.jsonl``, one ``{"data_id": str, "prediction": str}`` per line. Scores:
:func:`rablip.evaluation.infoseek_metric.score_infoseek_files`; headline ``score``; a question's score
is 100 when its prediction is right under the official rules. A split is labelled when an example
has answers or ``answer_eval``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from rablip.benchmarks.base import Answer, Benchmark
from rablip.config.schema import SplitConfig
from rablip.data.records import QAExample
from rablip.errors import DataError
from rablip.evaluation import infoseek_metric
from rablip.utils.io import atomic_write_text, check_type, iter_jsonl_with_lines, require_keys

RECORD_KEYS = {"data_id": str, "image_id": str, "question": str}
QUESTION_TYPES = ("String", "Numerical", "Time")
DEFAULT_IMAGE_PATTERN = "{image_id}.jpg"
_FIELD_KEYS = {"data_id", "question", "answer"}


def read_question_types(qtype_path: str | os.PathLike) -> dict[str, str]:
    """``data_id -> question_type`` from an InfoSeek question-type JSONL file."""
    what = "InfoSeek question-type file"
    types: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for line_number, record in iter_jsonl_with_lines(qtype_path, what):
        where = f"{what} {qtype_path}, line {line_number}"
        require_keys(record, {"data_id": str, "question_type": str}, where)
        data_id, question_type = record["data_id"], record["question_type"]
        if question_type not in QUESTION_TYPES:
            raise DataError(f"{where}: question_type {question_type!r} is not one of {QUESTION_TYPES}.")
        if data_id in first_line:
            raise DataError(f"{where}: duplicate data_id {data_id!r} (first on line {first_line[data_id]}).")
        first_line[data_id] = line_number
        types[data_id] = question_type
    return types


def infoseek_image_path(
    image_root: str | os.PathLike, image_id: str, image_pattern: str = DEFAULT_IMAGE_PATTERN
) -> str:
    """``{image_root}/{image_pattern with image_id filled in}`` (relative when root is empty)."""
    return str(Path(image_root, image_pattern.replace("{image_id}", image_id)))


def load_infoseek(
    jsonl_path: str | os.PathLike,
    qtype_path: str | os.PathLike | None = None,
    image_root: str | os.PathLike = "",
    image_pattern: str = DEFAULT_IMAGE_PATTERN,
    entity_labels_path: str | os.PathLike | None = None,
) -> list[QAExample]:
    """Load an InfoSeek split in file order.

    With ``entity_labels_path`` (the split's ``*_withkb.jsonl``) each question's ``extra`` also holds its
    ``entity_id`` and ``entity_text``; a labels file naming only some of the questions is fine.

    With ``qtype_path`` every question gets its ``question_type`` (String / Numerical / Time);
    entries for other data ids are ignored, so a subset of a split can share the split's file.
    ``extra`` holds ``image_id``, ``answer_eval`` and ``data_split`` (and any other key).
    ``image_pattern`` has ``{image_id}`` replaced by the id to name the file under ``image_root``.
    """
    what = "InfoSeek file"
    if "{image_id}" not in image_pattern:
        raise DataError(f"image_pattern {image_pattern!r} must contain '{{image_id}}'.")
    question_types = read_question_types(qtype_path) if qtype_path is not None else None
    labels = read_entity_labels(entity_labels_path) if entity_labels_path is not None else {}
    examples: list[QAExample] = []
    first_line: dict[str, int] = {}
    for line_number, record in iter_jsonl_with_lines(jsonl_path, what):
        where = f"{what} {jsonl_path}, line {line_number}"
        require_keys(record, RECORD_KEYS, where)
        data_id = record["data_id"]
        if data_id in first_line:
            raise DataError(f"{where}: duplicate data_id {data_id!r} (first on line {first_line[data_id]}).")
        first_line[data_id] = line_number
        answers = record.get("answer", [])
        check_type(answers, list, where, "answer")
        for position, answer in enumerate(answers):
            check_type(answer, str, where, f"answer[{position}]")
        if "answer_eval" in record:
            check_type(record["answer_eval"], list, where, "answer_eval")
        question_type = None
        if question_types is not None:
            if data_id not in question_types:
                raise DataError(
                    f"{where}: data_id {data_id!r} has no entry in the question-type file {qtype_path}. "
                    "Use the question-type file of the same split."
                )
            question_type = question_types[data_id]
        examples.append(
            QAExample(
                id=data_id,
                image=infoseek_image_path(image_root, record["image_id"], image_pattern),
                question=record["question"],
                answers=list(answers),
                question_type=question_type,
                extra={**{key: value for key, value in record.items() if key not in _FIELD_KEYS},
                       **labels.get(data_id, {})},
            )
        )
    return examples


def read_entity_labels(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """``data_id -> {"entity_id", "entity_text"}`` from an InfoSeek ``*_withkb.jsonl`` file."""
    what = "InfoSeek entity-label file"
    labels: dict[str, dict[str, str]] = {}
    for line_number, record in iter_jsonl_with_lines(path, what):
        require_keys(record, {"data_id": str, "entity_id": str, "entity_text": str}, f"{what} {path}, line {line_number}")
        labels[record["data_id"]] = {"entity_id": record["entity_id"], "entity_text": record["entity_text"]}
    return labels


class InfoSeek(Benchmark):
    """InfoSeek: edchengg/infoseek_eval ``infoseek_eval.py``."""

    name = "infoseek"
    predictions_suffix = ".jsonl"
    main_metric = "score"
    score_help = "InfoSeek accuracy (harmonic mean of the unseen splits)"

    def load(self, split: SplitConfig) -> list[QAExample]:
        return load_infoseek(split.path, split.qtypes or None, split.image_root, split.image_pattern,
                             split.entity_labels or None)

    def is_labelled(self, split: SplitConfig, examples: Sequence[QAExample]) -> bool:
        return any(ex.answers or ex.extra.get("answer_eval") is not None for ex in examples)

    def write_predictions(self, path: Path, answers: Sequence[Answer], split: SplitConfig) -> Path:
        lines = [json.dumps({"data_id": a.question_id, "prediction": a.text}) for a in answers]
        atomic_write_text(path, "\n".join(lines) + "\n")
        return path

    def score(self, path: Path, split: SplitConfig, *, lemmatize: bool = False, strict: bool = False) -> dict:
        return infoseek_metric.score_infoseek_files(split.path, path, split.qtypes or None, strict=strict)

    def question_scores(self, split: SplitConfig, scores: Mapping, answers: Sequence[Answer]) -> dict[str, float]:
        predicted = {a.question_id: a.text for a in answers}
        types = infoseek_metric.read_question_types(split.qtypes) if split.qtypes else None
        return {q.data_id: 100.0 * infoseek_metric.question_correct(q, predicted.get(q.data_id, ""))
                for q in infoseek_metric.load_infoseek_references(split.path, types)}

    def add_score_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--references", required=True, help="infoseek_val.jsonl")
        parser.add_argument("--predictions", required=True, help='JSONL of {"data_id": str, "prediction": str}')
        parser.add_argument("--qtypes", help="infoseek_val_qtype.jsonl (adds a per-type breakdown)")

    def score_from_args(self, args: argparse.Namespace) -> dict:
        return infoseek_metric.score_infoseek_files(args.references, args.predictions, args.qtypes,
                                                    strict=args.strict)


BENCHMARK = InfoSeek()
