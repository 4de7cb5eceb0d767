"""rablip.benchmarks.infoseek: infoseek_{split}.jsonl with the question-type file."""

import json

import pytest

from rablip.benchmarks.infoseek import load_infoseek, read_question_types
from rablip.errors import DataError

RECORDS = [
    {
        "data_id": "val_00000000",
        "image_id": "oven_05050169",
        "question": "What country does this building belong to?",
        "answer": ["United States of America", "USA"],
        "answer_eval": ["United States of America", "USA", "US"],
        "data_split": "val_unseen_question",
    },
    {
        "data_id": "val_00000001",
        "image_id": "oven_01234567",
        "question": "How tall is this tower in metres?",
        "answer": ["330"],
        "answer_eval": [{"wikidata": 330.0, "range": [300.0, 360.0]}],
        "data_split": "val_unseen_entity",
    },
]
QTYPES = [
    {"data_id": "val_00000000", "question_type": "String"},
    {"data_id": "val_00000001", "question_type": "Numerical"},
    {"data_id": "val_99999999", "question_type": "Time"},
]


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_loads_records_with_question_types(tmp_path):
    data = _write_jsonl(tmp_path / "infoseek_val.jsonl", RECORDS)
    qtype = _write_jsonl(tmp_path / "infoseek_val_qtype.jsonl", QTYPES)
    examples = load_infoseek(data, qtype, image_root="/oven")
    assert [example.id for example in examples] == ["val_00000000", "val_00000001"]
    first, second = examples
    assert first.image == "/oven/oven_05050169.jpg"
    assert first.answers == ["United States of America", "USA"]
    assert first.question_type == "String" and second.question_type == "Numerical"
    assert second.extra["answer_eval"] == [{"wikidata": 330.0, "range": [300.0, 360.0]}]
    assert second.extra["data_split"] == "val_unseen_entity"
    assert second.extra["image_id"] == "oven_01234567"


def test_without_qtype_and_with_pattern(tmp_path):
    records = [{key: RECORDS[0][key] for key in ("data_id", "image_id", "question")}]
    data = _write_jsonl(tmp_path / "infoseek_test.jsonl", records)
    (example,) = load_infoseek(data, image_pattern="images/{image_id}.JPEG")
    assert example.image == "images/oven_05050169.JPEG"
    assert example.answers == [] and example.question_type is None


def test_bad_inputs(tmp_path):
    data = _write_jsonl(tmp_path / "infoseek_val.jsonl", RECORDS + [RECORDS[0]])
    with pytest.raises(DataError, match=r"line 3: duplicate data_id 'val_00000000' \(first on line 1\)"):
        load_infoseek(data)
    broken = dict(RECORDS[1])
    del broken["question"]
    data = _write_jsonl(tmp_path / "infoseek_val.jsonl", [RECORDS[0], broken])
    with pytest.raises(DataError, match=r"infoseek_val\.jsonl, line 2: missing required key 'question'"):
        load_infoseek(data)
    data = _write_jsonl(tmp_path / "infoseek_val.jsonl", RECORDS)
    qtype = _write_jsonl(tmp_path / "q.jsonl", QTYPES[:1])
    with pytest.raises(DataError, match="'val_00000001' has no entry in the question-type file"):
        load_infoseek(data, qtype)
    _write_jsonl(qtype, [{"data_id": "x", "question_type": "Numeric"}])
    with pytest.raises(DataError, match=r"q\.jsonl, line 1: question_type 'Numeric' is not one of"):
        read_question_types(qtype)
    with pytest.raises(DataError, match="must contain"):
        load_infoseek(data, image_pattern="img.jpg")


def test_entity_labels_join_each_question_and_the_noise_snippet_avoids_that_entity(tmp_path):
    from rablip.benchmarks.infoseek import load_infoseek
    from rablip.synthetic.infoseek_files import write_infoseek

    files = write_infoseek(tmp_path / "data", n_entities=3, n_questions=6, seed=0)
    labels = files.train.parent / "infoseek_train_withkb.jsonl"
    examples = load_infoseek(files.train, None, files.images, entity_labels_path=labels)
    records = [json.loads(line) for line in labels.read_text().splitlines()]
    assert [(ex.extra["entity_id"], ex.extra["entity_text"]) for ex in examples] == [
        (record["entity_id"], record["entity_text"]) for record in records]
    assert len({ex.extra["entity_text"] for ex in examples}) == 3
    unlabelled = load_infoseek(files.train, None, files.images)
    assert all("entity_text" not in ex.extra for ex in unlabelled)
