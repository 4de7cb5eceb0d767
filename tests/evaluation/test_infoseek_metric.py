"""InfoSeek scorer: normalised exact match over aliases, numeric ranges and IoU, harmonic mean."""

from __future__ import annotations

import json

import pytest

from rablip.errors import DataError
from rablip.evaluation.infoseek_metric import (
    exact_match,
    harmonic_mean,
    load_infoseek_references,
    normalize_answer,
    numeric_match,
    parse_numeric_prediction,
    range_iou,
    read_infoseek_predictions,
    read_question_types,
    score_infoseek,
)


def test_normalisation_and_aliases():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert exact_match("an Apple.", ["apple"]) == 1
    assert exact_match("Big Ben", ["Elizabeth Tower", "big ben"]) == 1
    assert exact_match("Ben", ["big ben"]) == 0


def test_numeric_parsing_quirks():
    assert parse_numeric_prediction("about 1,200 m") == 1200.0
    assert parse_numeric_prediction("9-10") == [9.0, 10.0]
    assert parse_numeric_prediction("10 - 5") == 10.0  # decreasing pair: first number only
    assert parse_numeric_prediction("no idea") == [0.0, 0.0]
    assert parse_numeric_prediction("1 2 3") == [1.0, 2.0]


def test_numeric_ranges_and_iou():
    assert numeric_match("17", [15.0, 25.0]) == 1
    assert numeric_match("25", [15.0, 25.0]) == 1  # inclusive
    assert numeric_match("26", [15.0, 25.0]) == 0
    assert numeric_match("16 - 18", [15.0, 25.0]) == 1  # contained
    assert range_iou([10, 20], [12, 22]) == pytest.approx(8 / 12)
    assert numeric_match("10-20", [12.0, 22.0]) == 1  # IoU 0.667
    assert range_iou([10, 20], [15, 25]) == pytest.approx(5 / 15)
    assert numeric_match("10-20", [15.0, 25.0]) == 0  # IoU 0.333
    assert numeric_match("10-20", [15.0, 20.0]) == 1  # IoU exactly 0.5


def test_harmonic_mean():
    assert harmonic_mean(50.0, 100.0) == pytest.approx(200 / 3)
    assert harmonic_mean(0.0, 100.0) == pytest.approx(2e-12, rel=1e-3)


def _write(tmp_path):
    refs = [
        {"data_id": "q1", "image_id": "i", "question": "?", "answer": ["Paris"], "answer_eval": ["Paris", "City of Light"],
         "data_split": "val_unseen_question"},
        {"data_id": "q2", "image_id": "i", "question": "?", "answer": ["20"],
         "answer_eval": [{"wikidata": 20.0, "range": [18.0, 22.0]}], "data_split": "val_unseen_question"},
        {"data_id": "e1", "image_id": "i", "question": "?", "answer": ["1889"], "answer_eval": ["1889"],
         "data_split": "val_unseen_entity"},
        {"data_id": "e2", "image_id": "i", "question": "?", "answer": ["oak"], "answer_eval": ["oak", "quercus"],
         "data_split": "val_unseen_entity"},
    ]
    qtypes = [{"data_id": "q1", "question_type": "String"}, {"data_id": "q2", "question_type": "Numerical"},
              {"data_id": "e1", "question_type": "Time"}, {"data_id": "e2", "question_type": "String"}]
    (tmp_path / "ref.jsonl").write_text("\n".join(json.dumps(r) for r in refs) + "\n")
    (tmp_path / "qtype.jsonl").write_text("\n".join(json.dumps(r) for r in qtypes) + "\n")
    return tmp_path / "ref.jsonl", tmp_path / "qtype.jsonl"


def test_split_scores_and_harmonic_mean(tmp_path):
    ref_path, qtype_path = _write(tmp_path)
    questions = load_infoseek_references(ref_path, read_question_types(qtype_path))
    predictions = {"q1": "city of light", "q2": "21", "e1": "1889"}  # e2 missing -> wrong
    scores = score_infoseek(questions, predictions, with_types=True)
    assert scores["unseen_question"] == 100.0
    assert scores["unseen_entity"] == 50.0
    assert scores["score"] == 66.67
    assert scores["missing"] == 1
    assert scores["per_type"]["unseen_question"] == {"string": 100.0, "numerical": 100.0}
    assert scores["per_type"]["unseen_entity"] == {"string": 0.0, "time": 100.0}


def test_types_inferred_without_qtype_file(tmp_path):
    ref_path, _ = _write(tmp_path)
    questions = load_infoseek_references(ref_path)
    assert [q.question_type for q in questions] == ["string", "numerical", "string", "string"]
    scores = score_infoseek(questions, {"q1": "x", "q2": "30", "e1": "1889", "e2": "Quercus"})
    assert (scores["unseen_question"], scores["unseen_entity"]) == (0.0, 100.0)
    assert scores["score"] == 0.0


def test_prediction_file_errors(tmp_path):
    ref_path, _ = _write(tmp_path)
    questions = load_infoseek_references(ref_path)
    cases = {
        '{"data_id": "q1", "prediction": "x"}\n{oops\n': "malformed JSON on line 2",
        '{"data_id": "q1", "prediction": 5}\n': "'prediction' must be a string",
        '{"data_id": "zz", "prediction": "x"}\n': "not in the reference data",
        '["q1", "x"]\n': "expected a JSON object",
        '{"data_id": "q1", "prediction": "x"}\n{"data_id": "q1", "prediction": "y"}\n': "second prediction",
    }
    for text, message in cases.items():
        (tmp_path / "p.jsonl").write_text(text)
        with pytest.raises(DataError, match=message):
            read_infoseek_predictions(tmp_path / "p.jsonl", questions, strict=True)
