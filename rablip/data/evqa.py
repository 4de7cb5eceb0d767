"""Encyclopedic-VQA split files: the CSV rows, and where each question's images are on disk.

Split files: ``{train,val,test}.csv`` of the google-research ``encyclopedic_vqa`` release, one question
per row, with a header row naming the columns (``question``, ``answer``, ``dataset_image_ids``,
``dataset_name``, ``question_type``, ``wikipedia_url``, ...). The CSV has no id column, so rablip keys a
question by its 0-based data row (blank lines skipped, as ``pandas.read_csv`` does): that row number is
the ``question_id`` of prediction files.

Images: ``dataset_image_ids`` lists up to five ids ('|'-separated) of one image dataset:
- ``inaturalist``: iNaturalist 2021 ids; an annotation file (``train.json``, ``val.json``) maps each id
  to its ``file_name`` under the iNat root. The annotation files are streamed
  (:class:`~rablip.utils.json_stream.JsonStream`) and only the ids the split needs are kept.
- ``landmarks``: Google Landmarks v2 ids, stored as ``root/id[0]/id[1]/id[2]/{id}.jpg``.

Every problem (a missing column, a row with too few or too many cells, an unknown question type, an
image id the annotation files lack, an image file that is not there) is a DataError that names the
file, the line and the row.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rablip.errors import ConfigError, DataError
from rablip.utils.io import PathLike, reading
from rablip.utils.json_stream import JsonStream, open_json_text

QUESTION_TYPES = ("templated", "automatic", "multi_answer", "2_hop")
"""The question types of the release (the official scorer refuses any other)."""
DATASET_NAMES = ("inaturalist", "landmarks")
SPLIT_WHAT = "Encyclopedic-VQA split CSV"
INAT_WHAT = "iNaturalist 2021 annotation file"


@dataclass
class EvqaRow:
    """One data row of a split CSV."""

    row: int
    """0-based data row: the question's id."""
    line: int
    """1-based line of the file the row starts on."""
    fields: dict[str, str]
    """Column name -> cell text."""

    def where(self, path: PathLike) -> str:
        """``<file>, line L (question_id R)``: the start of every message about this row."""
        return f"{SPLIT_WHAT} {path}, line {self.line} (question_id {self.row})"


def _open_csv(path: Path):
    with reading(path, SPLIT_WHAT):
        return path.open("r", encoding="utf-8-sig", newline="")


def iter_evqa_rows(path: PathLike, required: Sequence[str]) -> Iterator[EvqaRow]:
    """Stream the data rows of a split CSV, checked to have every column of the header.

    ``required`` columns must be in the header; a row with fewer cells than the header names the first
    column it lacks, one with more says so; ``question_type``, when required, must be one of
    :data:`QUESTION_TYPES`.
    """
    path = Path(path)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # evidence passages can be long
    with _open_csv(path) as handle:
        reader = csv.reader(handle)
        row_number, next_line = 0, 1
        header: list[str] | None = None
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                break
            except UnicodeDecodeError:
                raise DataError(f"{SPLIT_WHAT} {path}: not valid UTF-8 near line {reader.line_num + 1}. "
                                "Re-save it as UTF-8.") from None
            except csv.Error as err:
                raise DataError(f"{SPLIT_WHAT} {path}, line {reader.line_num}: cannot parse the row ({err}).") from None
            line, next_line = next_line, reader.line_num + 1
            if not cells or cells == [""]:
                continue
            if header is None:
                header = [cell.strip() for cell in cells]
                missing = [column for column in required if column not in header]
                if missing:
                    raise DataError(f"{SPLIT_WHAT} {path}, line {line}: the header lacks the column(s) "
                                    f"{', '.join(map(repr, missing))}; it has {header}. Use the release's CSV.")
                continue
            entry = EvqaRow(row_number, line, {})
            if len(cells) < len(header):
                raise DataError(f"{entry.where(path)}: {len(cells)} of {len(header)} columns; column "
                                f"{header[len(cells)]!r} is missing. Fix the row or download the file again.")
            if len(cells) > len(header):
                raise DataError(f"{entry.where(path)}: {len(cells)} cells but the header names {len(header)} "
                                "columns. Fix the row (quote cells that hold commas).")
            entry.fields = dict(zip(header, cells))
            if "question_type" in required and entry.fields["question_type"] not in QUESTION_TYPES:
                raise DataError(f"{entry.where(path)}: question_type {entry.fields['question_type']!r} is not one "
                                f"of {', '.join(QUESTION_TYPES)}.")
            row_number += 1
            yield entry
    if header is None:
        raise DataError(f"{SPLIT_WHAT} {path} is empty; expected a header row and one row per question.")


def answer_alternatives(answer: str) -> list[str]:
    """The reference answers of a cell: alternatives separated by '|' (a multi_answer one keeps its '&&')."""
    return answer.split("|")


def image_ids(row: EvqaRow, path: PathLike) -> list[str]:
    """The row's ``dataset_image_ids`` ('|'-separated), at least one."""
    ids = [each.strip() for each in row.fields["dataset_image_ids"].split("|") if each.strip()]
    if not ids:
        raise DataError(f"{row.where(path)}: dataset_image_ids is empty; every question has an image.")
    return ids


def landmark_image_path(root: PathLike, image_id: str) -> Path:
    """Google Landmarks v2 layout: ``root/id[0]/id[1]/id[2]/{id}.jpg``."""
    return Path(root, image_id[0], image_id[1], image_id[2], f"{image_id}.jpg")


def read_inat_file_names(paths: Sequence[PathLike], wanted: set[str]) -> dict[str, str]:
    """``image id -> file_name`` for the ``wanted`` ids, from the ``images`` arrays of iNat annotation files.

    Each file is streamed; the other members (``annotations``, ``categories``, ...) are read past one
    element at a time. A file without an ``images`` array, or an image record without an integer ``id``
    and a string ``file_name``, is a DataError naming the file and the element.
    """
    found: dict[str, str] = {}
    for path in paths:
        with open_json_text(path, INAT_WHAT) as handle:
            stream = JsonStream(handle, path, INAT_WHAT)
            saw_images = False
            for key in stream.members():
                if stream.peek() != "[":
                    stream.value()
                    continue
                if key != "images":
                    for _ in stream.elements():
                        pass
                    continue
                saw_images = True
                for index, record in enumerate(stream.elements()):
                    if not (isinstance(record, dict) and isinstance(record.get("id"), int)
                            and isinstance(record.get("file_name"), str)):
                        raise DataError(f"{INAT_WHAT} {path}: images[{index}] needs an integer 'id' and a string "
                                        f"'file_name', got {str(record)[:80]}.")
                    if str(record["id"]) in wanted:
                        found[str(record["id"])] = record["file_name"]
            stream.finish()
        if not saw_images:
            raise DataError(f"{INAT_WHAT} {path} has no 'images' array; give the iNat 2021 train.json or val.json.")
    return found


def question_image_paths(rows: Sequence[EvqaRow], path: PathLike, inat_root: str, inat_annotations: Sequence[str],
                         landmarks_root: str) -> list[list[str]]:
    """Each row's image files, in ``dataset_image_ids`` order, each checked to exist.

    iNaturalist ids resolve through ``inat_annotations`` under ``inat_root``; Landmarks ids under
    ``landmarks_root``. A dataset whose keys are empty is a ConfigError naming the key; an id without a
    file, or a file that is not there, a DataError naming the row.
    """
    ids = [image_ids(row, path) for row in rows]
    for row in rows:
        if row.fields["dataset_name"] not in DATASET_NAMES:
            raise DataError(f"{row.where(path)}: dataset_name {row.fields['dataset_name']!r} is not one of "
                            f"{', '.join(DATASET_NAMES)}.")
    inat_ids = {each for row, row_ids in zip(rows, ids) if row.fields["dataset_name"] == "inaturalist"
                for each in row_ids}
    if inat_ids and not (inat_root and inat_annotations):
        raise ConfigError("data.<split>.inat_root and inat_annotations must be set: the split has iNaturalist "
                          "questions, whose images are found through the iNat 2021 annotation files.")
    if not landmarks_root and any(row.fields["dataset_name"] == "landmarks" for row in rows):
        raise ConfigError("data.<split>.landmarks_root is empty: the split has Google Landmarks v2 questions.")
    inat_files = read_inat_file_names(inat_annotations, inat_ids) if inat_ids else {}
    paths: list[list[str]] = []
    for row, row_ids in zip(rows, ids):
        files = []
        for image_id in row_ids:
            if row.fields["dataset_name"] == "inaturalist":
                if image_id not in inat_files:
                    raise DataError(f"{row.where(path)}: iNaturalist image {image_id!r} is in none of the "
                                    f"annotation files {list(inat_annotations)}. Add the file that lists it.")
                file = Path(inat_root, inat_files[image_id])
            else:
                if len(image_id) < 3:
                    raise DataError(f"{row.where(path)}: Landmarks image id {image_id!r} is shorter than 3 characters.")
                file = landmark_image_path(landmarks_root, image_id)
            if not file.is_file():
                raise DataError(f"{row.where(path)}: image {image_id!r} ({row.fields['dataset_name']}) is not at "
                                f"{file}. Download the images or fix the image root in your config.")
            files.append(str(file))
        paths.append(files)
    return paths
