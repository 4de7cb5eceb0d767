"""The extra-pairs file (``data.extra_pairs``): its records load through the core's image loading, and a
bad record is a DataError naming the file and the line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from rablip.data.extra_pairs import ExtraPairs, questions_by_kind, read_extra_pairs
from rablip.errors import DataError

ITEM = {"id": "x-1", "text": "The zorb eats moss.", "title": "zorb"}


def write_pairs(root: Path, *records: dict | str) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(root / "images" / "a.jpg")
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path = root / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_records_load_their_images_relative_to_the_file(tmp_path):
    path = write_pairs(tmp_path, {"image": "images/a.jpg", "question": "What does it eat?", "item": ITEM},
                       {"image": "images/a.jpg", "item": {**ITEM, "id": "x-2", "image": "images/a.jpg"}})
    pairs = ExtraPairs(path)
    assert len(pairs) == 2
    image, question, item, item_image = pairs.load(0)
    assert image.size == (8, 8) and question == "What does it eat?" and item.modality == "text" and item_image is None
    image, question, item, item_image = pairs.load(1)
    assert question == "" and item.modality == "image+text" and item_image.size == (8, 8)


@pytest.mark.parametrize("record, message", [
    ({"question": "q", "item": ITEM}, "missing required key 'image'"),
    ({"image": "../outside.jpg", "item": ITEM}, "outside the root"),
    ({"image": "images/a.jpg", "item": {"text": "no id"}}, "'id'"),
    ({"image": "images/a.jpg", "question": 3, "item": ITEM}, "'question'"),
    ({"image": "images/a.jpg", "item": "x-1"}, "'item'"),
    ('{"image": "images/a.jpg", "item": ', "malformed JSON"),
])
def test_a_bad_record_names_the_file_and_line(tmp_path, record, message):
    path = write_pairs(tmp_path, {"image": "images/a.jpg", "item": ITEM}, record)
    with pytest.raises(DataError, match=message) as error:
        read_extra_pairs(path)
    assert str(path) in str(error.value) and "line 2" in str(error.value)


def test_a_missing_image_names_the_file_and_line_when_loaded(tmp_path):
    path = write_pairs(tmp_path, {"image": "images/a.jpg", "item": ITEM}, {"image": "images/gone.jpg", "item": ITEM})
    pairs = ExtraPairs(path)
    with pytest.raises(DataError, match=r"gone\.jpg.*line 2"):
        pairs.load(1)
    assert ExtraPairs(path, on_bad_image="skip").load(1)[0] is None


def test_an_empty_or_missing_file_is_refused(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="holds no records"):
        read_extra_pairs(tmp_path / "empty.jsonl")
    with pytest.raises(DataError, match="not found"):
        read_extra_pairs(tmp_path / "nope.jsonl")


def test_questions_by_kind_sorts_each_kind_and_falls_back_to_every_question():
    assert questions_by_kind([("b?", ["text"]), ("a?", ["text", "image"]), ("c?", [])]) == \
        {"text": ["a?", "b?"], "image": ["a?"]}
    assert questions_by_kind([("b?", ["text"]), ("a?", ["text"])]) == {"text": ["a?", "b?"], "image": ["a?", "b?"]}
