"""OK-VQA and VQAv2 (same format; the synthetic world writes it too): split loader, results file, VQA accuracy.

Files (unchanged from the official release): ``OpenEnded_mscoco_{split}_questions.json`` holds
``{"questions": [{image_id, question, question_id}, ...]}``; ``mscoco_{split}_annotations.json``
holds ``{"annotations": [{image_id, question_id, question_type, answer_type, confidence,
answers: [{answer, raw_answer, answer_confidence, answer_id} x 10]}, ...]}``. Images follow the
COCO naming rule ``{split}/COCO_{split}_{image_id:012d}.jpg``.

Predictions: ``predictions.json``, the VQA results file ``[{"question_id": int, "answer": str}]``.
Scores: :func:`rablip.evaluation.vqa_metric.score_vqa_files`; headline ``overall``; a split is
labelled when it names an annotations file; the report groups questions by ``question_type`` as
the annotations give it (OK-VQA's knowledge categories; the synthetic world's seen/unseen groups).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rablip.benchmarks.base import Answer, Benchmark
from rablip.config.schema import SplitConfig
from rablip.data.records import QAExample
from rablip.errors import DataError
from rablip.evaluation.vqa_metric import score_vqa_files
from rablip.utils.io import atomic_write_json, check_type, read_json, record_location, require_keys

QUESTION_KEYS = {"image_id": int, "question": str, "question_id": int}
ANNOTATION_KEYS = {"question_id": int, "answers": list}
# Keys of an annotation that have their own QAExample field; every other key goes to ``extra``.
_ANNOTATION_FIELDS = {"question_id", "answers", "question_type", "relevant_ids"}


def coco_image_path(image_root: str | os.PathLike, image_split: str, image_id: int) -> str:
    """``{image_root}/{image_split}/COCO_{image_split}_{image_id:012d}.jpg`` (relative when root is empty)."""
    return str(Path(image_root, image_split, f"COCO_{image_split}_{image_id:012d}.jpg"))


def _records_list(document: Any, key: str, path: Path, what: str) -> list[Any]:
    """The list under ``key`` of a VQA-style top-level object."""
    if not isinstance(document, dict) or key not in document:
        found = f"keys {sorted(document)}" if isinstance(document, dict) else type(document).__name__
        raise DataError(f"{what} {path}: expected a JSON object with a {key!r} list, found {found}.")
    records = document[key]
    if not isinstance(records, list):
        raise DataError(f"{what} {path}: {key!r} should be a list, got {type(records).__name__}.")
    return records


def _read_questions(path: Path, image_root: str | os.PathLike, image_split: str) -> dict[int, QAExample]:
    what = "questions file"
    examples: dict[int, QAExample] = {}
    for index, record in enumerate(_records_list(read_json(path, what), "questions", path, what)):
        where = record_location(what, path, index)
        require_keys(record, QUESTION_KEYS, where)
        question_id = record["question_id"]
        if question_id in examples:
            raise DataError(
                f"{where}: duplicate question_id {question_id} in {path}. Each question must appear once."
            )
        extra = {key: value for key, value in record.items() if key not in QUESTION_KEYS}
        extra["image_id"] = record["image_id"]
        examples[question_id] = QAExample(
            id=str(question_id),
            image=coco_image_path(image_root, image_split, record["image_id"]),
            question=record["question"],
            extra=extra,
        )
    return examples


def _answer_strings(answers: list[Any], where: str) -> list[str]:
    strings = []
    for position, answer in enumerate(answers):
        require_keys(answer, {"answer": str}, f"{where}, answers[{position}]")
        strings.append(answer["answer"])
    return strings


def _attach_annotations(path: Path, examples: dict[int, QAExample]) -> None:
    what = "annotations file"
    annotated: set[int] = set()
    for index, record in enumerate(_records_list(read_json(path, what), "annotations", path, what)):
        where = record_location(what, path, index)
        require_keys(record, ANNOTATION_KEYS, where)
        question_id = record["question_id"]
        if question_id not in examples:
            raise DataError(
                f"{where}: question_id {question_id} is not in the questions file. "
                "Check that the questions and annotations files are of the same split."
            )
        if question_id in annotated:
            raise DataError(f"{where}: duplicate annotation for question_id {question_id} in {path}.")
        annotated.add(question_id)
        example = examples[question_id]
        if "image_id" in record and record["image_id"] != example.extra["image_id"]:
            raise DataError(
                f"{where}: question_id {question_id} has image_id {record['image_id']} here but "
                f"{example.extra['image_id']} in the questions file."
            )
        example.answers = _answer_strings(record["answers"], where)
        if "question_type" in record:
            check_type(record["question_type"], str, where, "question_type")
            example.question_type = record["question_type"]
        if "relevant_ids" in record:
            # Added by the synthetic world; the official tools ignore unknown keys.
            check_type(record["relevant_ids"], list, where, "relevant_ids")
            for position, item_id in enumerate(record["relevant_ids"]):
                check_type(item_id, (str, int), where, f"relevant_ids[{position}]")
            example.relevant_ids = [str(item_id) for item_id in record["relevant_ids"]]
        example.extra.update((key, value) for key, value in record.items() if key not in _ANNOTATION_FIELDS)
    missing = [question_id for question_id in examples if question_id not in annotated]
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        raise DataError(
            f"annotations file {path}: {len(missing)} question(s) of the questions file have no "
            f"annotation (question_id {shown}). Use the annotations of the same split, or load "
            "the questions alone for a test-style split."
        )


def load_okvqa(
    questions_path: str | os.PathLike,
    annotations_path: str | os.PathLike | None = None,
    image_root: str | os.PathLike = "",
    image_split: str = "val2014",
) -> list[QAExample]:
    """Load an OK-VQA / VQAv2 split in the order of its questions file.

    ``image_split`` names the image folder and file prefix (``train2014``, ``val2014``,
    ``test2015``, or any other subfolder such as a synthetic world's). Without an annotations
    file the examples have no answers (test-style splits). ``extra`` holds ``image_id``,
    ``answer_type`` and every other key of the annotation.
    """
    examples = _read_questions(Path(questions_path), image_root, image_split)
    if annotations_path is not None:
        _attach_annotations(Path(annotations_path), examples)
    return list(examples.values())


class OKVQA(Benchmark):
    """OK-VQA / VQAv2: VQA accuracy (GT-Vision-Lab/VQA, 2021 version), optionally lemmatized."""

    name = "okvqa"
    predictions_suffix = ".json"
    main_metric = "overall"
    score_help = "OK-VQA / VQAv2 accuracy (official VQA evaluation)"

    def load(self, split: SplitConfig) -> list[QAExample]:
        return load_okvqa(split.path, split.annotations or None, split.image_root, split.image_split or "val2014")

    def is_labelled(self, split: SplitConfig, examples: Sequence[QAExample]) -> bool:
        return bool(split.annotations)

    def write_predictions(self, path: Path, answers: Sequence[Answer], split: SplitConfig) -> Path:
        atomic_write_json(path, [{"question_id": int(a.question_id), "answer": a.text} for a in answers], indent=None)
        return path

    def score(self, path: Path, split: SplitConfig, *, lemmatize: bool = False, strict: bool = False) -> dict:
        return score_vqa_files(split.path, split.annotations, path, lemmatize=lemmatize, strict=strict)

    def question_scores(self, split: SplitConfig, scores: Mapping, answers: Sequence[Answer]) -> dict[str, float]:
        return {qid: float(value) for qid, value in scores["per_question"].items()}

    def add_score_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--questions", required=True, help="OpenEnded_mscoco_*_questions.json")
        parser.add_argument("--annotations", required=True, help="mscoco_*_annotations.json")
        parser.add_argument("--predictions", required=True, help='results file: [{"question_id": int, "answer": str}]')
        parser.add_argument("--lemmatize", action="store_true",
                            help="lemmatize predictions first (BLIP-2/LAVIS practice; not the official metric)")

    def score_from_args(self, args: argparse.Namespace) -> dict:
        return score_vqa_files(args.questions, args.annotations, args.predictions, lemmatize=args.lemmatize,
                               strict=args.strict)


BENCHMARK = OKVQA()
