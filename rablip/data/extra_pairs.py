"""Extra pre-training pairs read from a JSONL file (``data.extra_pairs``), for any dataset.

One JSON object per line::

    {"image": "images/000001.jpg", "question": "What does this creature eat?",
     "item": {"id": "x-1", "text": "The zorb eats moss.", "title": "zorb"}}

- ``image`` (required): the query image, a path relative to the file's directory that stays inside it;
- ``question`` (optional): the query text; empty or absent: the reader of the pair draws one;
- ``item`` (required): the target knowledge item as a knowledge-base JSONL record (``id``, ``text``,
  ``title``, optional ``image`` relative to the file's directory); it need not be in the knowledge base.

The whole file is checked when it is opened (a bad record is a DataError naming the file and line);
images are decoded when a pair is loaded, through :class:`~rablip.data.images.ImageLoader`. A corpus too
large to hold in memory is split into JSONL shards (or WebDataset tar shards) and streamed instead
(:mod:`rablip.data.pair_shards`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from rablip.data.images import ImageLoader
from rablip.data.kb_sources import check_image_reference, kb_item_from_record
from rablip.data.records import KBItem
from rablip.errors import DataError
from rablip.utils.io import check_type, iter_jsonl_with_lines, require_keys

WHAT = "extra-pairs file"


@dataclass(frozen=True)
class ExtraPair:
    """One record: its query image path (relative to the file's directory), question, target and line."""

    image: str
    question: str
    item: KBItem
    line: int


class ExtraPairs:
    """The records of one extra-pairs file and the loaders of their images."""

    def __init__(self, path: str | os.PathLike, on_bad_image: str = "error") -> None:
        self.path = Path(path)
        self.root = self.path.parent
        self.records = read_extra_pairs(self.path)
        self.images = ImageLoader(self.root, on_bad_image)

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> tuple[Image.Image | None, str, KBItem, Image.Image | None]:
        """Record ``index``: (query image, question, target item, target image or None)."""
        pair = self.records[index]
        where = f"{self.path}, line {pair.line}"
        query_image = self.images.load(pair.image, where)
        item_image = self.images.load(pair.item.image, where) if pair.item.modality != "text" else None
        return query_image, pair.question, pair.item, item_image


def read_extra_pairs(path: str | os.PathLike) -> list[ExtraPair]:
    """Every record of an extra-pairs file, checked; an empty file or a bad record is a DataError."""
    path = Path(path)
    root = path.parent
    pairs = [pair_from_record(record, f"{WHAT} {path}, line {line}", root, line, path.name)
             for line, record in iter_jsonl_with_lines(path, WHAT)]
    if not pairs:
        raise DataError(f"{WHAT} {path} holds no records; write one pair per line or set data.extra_pairs.share=0.")
    return pairs


def pair_from_record(record: object, where: str, root: Path, line: int, source: str) -> ExtraPair:
    """One extra-pairs record, checked (image path inside ``root``, the item a KB record); ``where``
    (file and line) starts every error message; ``source`` (the file name) is the item's. The JSONL
    shards of a sharded corpus are read with it too (:mod:`rablip.data.pair_shards`)."""
    require_keys(record, {"image": str, "item": dict}, where)
    check_image_reference(record["image"], where, root)
    question = record.get("question", "")
    check_type(question, str, where, "question")
    item = kb_item_from_record(record["item"], f"{where}, 'item'", source=source, kb_root=root)
    return ExtraPair(record["image"], question.strip(), item, line)


def questions_by_kind(question_kinds: Iterable[tuple[str, Iterable[str]]]) -> dict[str, list[str]]:
    """Question texts by the kind (``text``, ``image``) of the items relevant to them, each list sorted,
    from ``(question, kinds of its relevant items)`` pairs; a kind no question has falls back to every
    question. An extra pair with an empty question draws one from the list of its target's kind."""
    by_kind: dict[str, set[str]] = {"text": set(), "image": set()}
    for question, kinds in question_kinds:
        for kind in kinds:
            by_kind[kind].add(question)
    every = sorted(set().union(*by_kind.values()))
    return {kind: sorted(questions) or every for kind, questions in by_kind.items()}
