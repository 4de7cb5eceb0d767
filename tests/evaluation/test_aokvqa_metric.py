"""A-OKVQA scorer: exact-match MC over all questions, DA without difficult questions, missing = 0."""

from __future__ import annotations

import json

import pytest

from rablip.errors import DataError
from rablip.evaluation.aokvqa_metric import (
    direct_answer_accuracy,
    load_aokvqa_answers,
    read_aokvqa_predictions,
    score_aokvqa,
)


def _record(qid, correct, direct, difficult=False):
    return {"question_id": qid, "image_id": 1, "question": "q?", "choices": ["red", "blue", "green", "pink"],
            "correct_choice_idx": correct, "direct_answers": direct, "difficult_direct_answer": difficult,
            "rationales": ["r1", "r2", "r3"]}


@pytest.fixture
def data_path(tmp_path):
    records = [
        _record("a", 0, ["red"] * 2 + ["Red"] * 8),
        _record("b", 1, ["blue"] * 10),
        _record("c", 2, ["green"] * 10, difficult=True),
        _record("d", 3, ["pink"] * 1 + ["rose"] * 9),
    ]
    path = tmp_path / "aokvqa_v1p0_val.json"
    path.write_text(json.dumps(records))
    return path


def test_direct_answer_is_exact_and_not_leave_one_out():
    assert direct_answer_accuracy("red", ["red"] * 2 + ["Red"] * 8) == 2 / 3
    assert direct_answer_accuracy("Red", ["red"] * 2 + ["Red"] * 8) == 1.0
    assert direct_answer_accuracy("red.", ["red"] * 10) == 0.0
    assert direct_answer_accuracy("pink", ["pink"] + ["rose"] * 9) == 1 / 3


def test_scores_with_difficult_filter_and_missing(tmp_path, data_path):
    questions = load_aokvqa_answers(data_path)
    predictions = {
        "a": {"multiple_choice": "red", "direct_answer": "red"},       # MC 1, DA 2/3
        "b": {"multiple_choice": "Blue", "direct_answer": "blue"},     # MC 0 (case), DA 1
        "c": {"multiple_choice": "green", "direct_answer": "nothing"},  # MC 1, DA left out
        # "d" missing: MC 0, DA 0
    }
    scores = score_aokvqa(questions, predictions)
    assert scores["mc"] == pytest.approx(50.0)  # 2 of 4
    assert scores["da"] == pytest.approx((2 / 3 + 1 + 0) / 3 * 100)  # 55.555...
    assert scores["per_question"]["c"] == {"mc": 100.0, "da": None}
    assert scores["per_question"]["d"] == {"mc": 0.0, "da": 0.0}
    assert scores["missing"] == {"mc": 1, "da": 1}
    assert scores["num_da_questions"] == 3


def test_setting_without_any_prediction_is_not_scored(data_path):
    questions = load_aokvqa_answers(data_path)
    scores = score_aokvqa(questions, {"a": {"direct_answer": "Red"}})
    assert scores["mc"] is None
    assert scores["da"] == pytest.approx(100 / 3)


def test_prediction_file_errors(tmp_path, data_path):
    questions = load_aokvqa_answers(data_path)
    cases = {
        "{": "malformed JSON",
        json.dumps([1]): "expected a JSON object",
        json.dumps({"a": "red"}): "expected an object",
        json.dumps({"a": {"multiple_choice": 0}}): "'multiple_choice' must be a string",
        json.dumps({"zzz": {"multiple_choice": "red"}}): "not in the reference data",
    }
    for text, message in cases.items():
        (tmp_path / "p.json").write_text(text)
        with pytest.raises(DataError, match=message):
            read_aokvqa_predictions(tmp_path / "p.json", questions, strict=True)


def test_test_split_file_is_refused(tmp_path):
    path = tmp_path / "aokvqa_v1p0_test.json"
    path.write_text(json.dumps([{"question_id": "x", "image_id": 1, "question": "q", "choices": ["a", "b"]}]))
    with pytest.raises(DataError, match="test-split"):
        load_aokvqa_answers(path)
