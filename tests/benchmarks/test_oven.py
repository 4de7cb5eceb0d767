"""rablip.benchmarks.oven: the entity and query files of a split, QID predictions from names, the scores."""

from __future__ import annotations

import json

import pytest

from rablip.benchmarks import BENCHMARKS, Answer
from rablip.benchmarks.oven import load_oven
from rablip.config.schema import SplitConfig
from rablip.errors import ConfigError, DataError
from tests.evaluation.test_entity_linking import write_entities

ENTITY_RECORDS = [
    {"data_id": "oven_entity_val_00000000", "image_id": "oven_01963180", "question": "what is this?",
     "entity_id": "Q31", "entity_text": "Belgium", "data_split": "entity_val_seen"},
    {"data_id": "oven_entity_val_00000001", "image_id": "oven_01963181", "question": "what is this?",
     "entity_id": "Q308", "entity_text": "Mercury (planet)", "data_split": "entity_val_unseen"},
]
QUERY_RECORDS = [
    {"data_id": "oven_query_val_00000000", "image_id": "oven_04925757", "question": "which building is this?",
     "entity_id": "Q2", "entity_text": "Paris", "data_split": "query_val_seen"},
    {"data_id": "oven_query_val_00000001", "image_id": "oven_04925758", "question": "what kind of fox is this?",
     "entity_id": "Q10", "entity_text": "Red Fox", "data_split": "query_val_unseen"},
]


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def _split(tmp_path, with_entities=True):
    entity = _write_jsonl(tmp_path / "oven_entity_val.jsonl", ENTITY_RECORDS)
    query = _write_jsonl(tmp_path / "oven_query_val.jsonl", QUERY_RECORDS)
    entities = str(write_entities(tmp_path / "wiki6m.jsonl")) if with_entities else ""
    return SplitConfig(path=str(entity), extra_paths=[str(query)], image_root="/oven", entities=entities)


def test_loads_both_files_in_order(tmp_path):
    split = _split(tmp_path)
    examples = BENCHMARKS["oven"].load(split)
    assert [ex.id for ex in examples] == [r["data_id"] for r in ENTITY_RECORDS + QUERY_RECORDS]
    first = examples[0]
    assert first.image == "/oven/oven_01963180.jpg" and first.answers == ["Belgium"]
    assert first.extra["entity_id"] == "Q31" and first.extra["data_split"] == "entity_val_seen"
    assert [BENCHMARKS["oven"].question_group(ex) for ex in examples] == [
        "entity_val_seen", "entity_val_unseen", "query_val_seen", "query_val_unseen"]
    assert BENCHMARKS["oven"].is_labelled(split, examples)


def test_test_split_records_and_image_pattern(tmp_path):
    record = {k: v for k, v in QUERY_RECORDS[0].items() if k not in ("entity_id", "entity_text")}
    (example,) = load_oven([_write_jsonl(tmp_path / "oven_query_test.jsonl", [record])],
                           image_pattern="{image_id}.JPEG")
    assert example.image == "oven_04925757.JPEG" and example.answers == []
    assert not BENCHMARKS["oven"].is_labelled(SplitConfig(), [example])


def test_bad_split_files(tmp_path):
    entity = _write_jsonl(tmp_path / "e.jsonl", ENTITY_RECORDS)
    again = _write_jsonl(tmp_path / "again.jsonl", ENTITY_RECORDS[1:])
    with pytest.raises(DataError, match=r"again\.jsonl, line 1: duplicate data_id 'oven_entity_val_00000001' "
                                        r"\(first at .*e\.jsonl, line 2\)"):
        load_oven([entity, again])
    broken = {k: v for k, v in ENTITY_RECORDS[0].items() if k != "data_split"}
    with pytest.raises(DataError, match=r"b\.jsonl, line 1: missing required key 'data_split'"):
        load_oven([_write_jsonl(tmp_path / "b.jsonl", [broken])])
    with pytest.raises(DataError, match=r"c\.jsonl, line 1: key 'entity_id' should be a string"):
        load_oven([_write_jsonl(tmp_path / "c.jsonl", [{**ENTITY_RECORDS[0], "entity_id": 31}])])
    with pytest.raises(DataError, match="must contain"):
        load_oven([entity], image_pattern="x.jpg")


def test_round_trip_maps_generated_names_to_qids(tmp_path):
    split = _split(tmp_path)
    benchmark = BENCHMARKS["oven"]
    answers = [Answer("oven_entity_val_00000000", "belgium"), Answer("oven_entity_val_00000001", "the planet mercury"),
               Answer("oven_query_val_00000000", "Paris"), Answer("oven_query_val_00000001", "a grey wolf")]
    path = benchmark.write_predictions(benchmark.predictions_file(tmp_path), answers, split)
    assert path == tmp_path / "predictions.jsonl"
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"data_id": "oven_entity_val_00000000", "pred_entity_id": "Q31"},  # exact title
        {"data_id": "oven_entity_val_00000001", "pred_entity_id": "Q308"},  # BM25
        {"data_id": "oven_query_val_00000000", "pred_entity_id": "Q2"},
        {"data_id": "oven_query_val_00000001", "pred_entity_id": ""},  # no title shares a word
    ]
    scores = benchmark.score(path, split)
    # query: seen 100, unseen 0 -> HM(100, 1e-12) ~ 0; entity 100 -> final ~ 0.
    assert scores == {"final": 0.0, "query_score": 0.0, "entity_score": 100.0, "query_seen": 100.0,
                      "query_unseen": 0.0, "entity_seen": 100.0, "entity_unseen": 100.0}
    assert benchmark.main_score(scores) == 0.0
    assert benchmark.question_scores(split, scores, answers) == {
        "oven_entity_val_00000000": 100.0, "oven_entity_val_00000001": 100.0,
        "oven_query_val_00000000": 100.0, "oven_query_val_00000001": 0.0}


def test_writing_predictions_needs_the_entity_list(tmp_path):
    benchmark = BENCHMARKS["oven"]
    with pytest.raises(ConfigError, match=r"data.<split>.entities is empty"):
        benchmark.write_predictions(tmp_path / "p.jsonl", [Answer("oven_entity_val_00000000", "Belgium")],
                                    _split(tmp_path, with_entities=False))
    assert not (tmp_path / "p.jsonl").exists()
