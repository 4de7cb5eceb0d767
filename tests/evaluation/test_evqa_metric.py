"""rablip.evaluation.evqa_metric: the official Encyclopedic-VQA normalisation, exact match, multi-answer IoU
and the score file, on edge cases written from the rules of ``evaluation_utils.py`` (expected values
worked out by hand from those rules)."""

from __future__ import annotations

import csv
import json

import pytest

from rablip.errors import DataError
from rablip.evaluation.evqa_metric import (
    EvqaQuestion,
    exact_match,
    load_evqa_references,
    multi_answer_match,
    normalize_answer,
    read_evqa_predictions,
    score_evqa,
    score_evqa_files,
    single_answer_match,
)

COLUMNS = ["question", "answer", "dataset_image_ids", "dataset_name", "question_type", "wikipedia_url",
           "evidence_section_id"]


def write_csv(path, rows, columns=COLUMNS):
    """A split CSV as the release writes it: header, then one row per question (csv quoting)."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row.get(column, "") for column in columns])
    return path


def write_predictions(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


@pytest.mark.parametrize("text, expected", [
    ("The Eiffel Tower.", "eiffel tower"),                      # article, punctuation, case
    ("  an Apple\tpie\nrecipe ", "apple pie recipe"),           # tabs/newlines, article 'an'
    ("The answer is Two", "2"),                                 # 'the answer is' prefix, number word
    ("TEN, none & zero", "10 0 0"),                             # '&' and ',' deleted
    ("True", "yes"), ("entailment", "yes"), ("False", "no"), ("contradiction", "no"),
    ("Don't", "don't"),                                         # apostrophe deleted, then 'dont' -> "don't"
    ("I'm", "im"),                                              # the table's 'Im' key never matches (quirk)
    ("somebody'd", "somebodyd"),                                # key with an apostrophe never matches
    ("‘quoted’ ´x` snake_case", "quoted x snakecase"),          # extra punctuation characters
    ("<extra_id_0> Paris", "paris"),                            # the T5 span prefix
    ("<extra_id_0> a <extra_id_0> b", "b"),                     # every occurrence goes (str.replace quirk)
    ("x <extra_id_0> y", "x extraid0 y"),                       # not at the start: only punctuation goes
    ("<extra_id_0>Paris", "extraid0paris"),                     # no space after it: not the prefix
    ("a-frame house", "aframe house"),                          # hyphen deleted before the article rule
    ("A.B.C.", "abc"),
    ("1,000 km", "1000 km"),
    ("Ångström", "ångström"),
    ("the", ""), ("", ""),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_single_answer_exact_match_and_empty_reference():
    assert single_answer_match("The Menger family", "menger family!")
    assert not single_answer_match("the Menger family", "William and Mary Menger")
    assert single_answer_match("two", "2") and single_answer_match("2", "Two.")
    with pytest.raises(ValueError, match="empty after normalisation"):
        single_answer_match("The.", "anything")


@pytest.mark.parametrize("reference, candidate, expected", [
    ("red&&blue&&green", "Red, blue and green", True),      # ' and ' separates: IoU 1
    ("red&&blue&&green", "red & blue", True),               # ' & ' separates: 2/3
    ("red&&blue&&green", "red", False),                     # 1/3
    ("red&&blue", "red", True),                             # 1/2: the threshold is inclusive
    ("red&&blue", "red, green", False),                     # 1/3
    ("red&&blue", "red AND blue", False),                   # case-sensitive ' and ': one part, IoU 0
    ("red&&blue", "red&blue", False),                       # '&' without spaces: one part 'redblue'
    ("red&&&&blue", "blue and red", True),                  # empty reference parts dropped
    ("the red&&a blue", "red,,blue, the", True),            # parts normalised, empty candidate parts dropped
    ("red&&blue", "", False),                               # no candidate parts: IoU 0
])
def test_multi_answer_iou(reference, candidate, expected):
    assert multi_answer_match(reference, candidate) is expected
    assert exact_match(reference, candidate, "multi_answer") is expected


def test_multi_answer_reference_empty_after_normalisation():
    with pytest.raises(ValueError, match="empty after normalisation"):
        multi_answer_match("the&&a", "x")
    # A single-answer question does not split on '&&' (it is punctuation there).
    assert exact_match("red&&blue", "redblue", "templated")


def test_alternatives_take_the_maximum():
    question = EvqaQuestion(0, "Where?", "automatic", ["Paris", "City of Paris"])
    assert question.exact_match("the city of Paris") == 1
    assert question.exact_match("Lyon") == 0


ROWS = [
    {"question": "q0", "answer": "Paris|City of Paris", "question_type": "templated"},     # right (2nd alt)
    {"question": "q1", "answer": "ten", "question_type": "automatic"},                     # right ('10')
    {"question": "q2", "answer": "oak&&elm&&ash", "question_type": "multi_answer"},        # right (2/3)
    {"question": "q3", "answer": "1850", "question_type": "2_hop"},                        # right, but 2-hop
    {"question": "q4", "answer": "a red fox", "question_type": "automatic"},               # wrong
    {"question": "q5", "answer": "granite", "question_type": "templated"},                 # missing prediction
]
PREDICTIONS = [
    {"question_id": 0, "prediction": "<extra_id_0> the city of paris"},
    {"question_id": 1, "prediction": "10"},
    {"question_id": 2, "prediction": "Oak and Elm"},
]


def test_score_file_groups_and_per_question(tmp_path):
    data = write_csv(tmp_path / "val.csv", ROWS)
    predictions = PREDICTIONS[:3] + [{"question_id": "3", "prediction": "1850"},
                                     {"question_id": 4, "prediction": "grey fox"}]
    scores = score_evqa_files(data, write_predictions(tmp_path / "p.jsonl", predictions))
    assert scores["per_question"] == {"0": 1, "1": 1, "2": 1, "3": 1, "4": 0, "5": 0}
    # single-hop: rows 0, 1, 2, 4, 5 (not the 2_hop row 3): 3 of 5.
    assert scores["single_hop"] == pytest.approx(60.0)
    # The README's single-hop headline: templated and automatic only: rows 0, 1, 4, 5 -> 2 of 4.
    assert scores["single_hop_templated_automatic"] == pytest.approx(50.0)
    assert scores["overall"] == pytest.approx(400 / 6)
    assert scores["per_question_type"] == pytest.approx(
        {"templated": 50.0, "automatic": 50.0, "multi_answer": 100.0, "2_hop": 100.0})
    assert scores["missing"] == 1 and scores["counts"]["questions"] == 6 and scores["counts"]["2_hop"] == 1
    assert scores["metric"]["model_based"] is False and "exact match" in scores["metric"]["name"]
    assert "exact_match" not in scores


def test_percentages_are_not_rounded(tmp_path):
    rows = [{"question": "q", "answer": "x", "question_type": "templated"}] * 3
    scores = score_evqa_files(write_csv(tmp_path / "v.csv", rows),
                              write_predictions(tmp_path / "p.jsonl", [{"question_id": 0, "prediction": "x"}]))
    assert scores["single_hop"] == 100 / 3 and scores["overall"] == 100 / 3


def test_predictions_reader(tmp_path):
    questions = load_evqa_references(write_csv(tmp_path / "v.csv", ROWS))
    path = write_predictions(tmp_path / "p.jsonl", [{"question_id": 0, "prediction": "a"},
                                                    {"question_id": "1", "prediction": "b"},
                                                    {"question_id": 99, "prediction": "c"}])
    assert read_evqa_predictions(path, questions) == {0: "a", 1: "b"}
    with pytest.raises(DataError, match="not in the reference data"):
        read_evqa_predictions(path, questions, strict=True)
    for record, message in [({"prediction": "x"}, "line 1: missing required key 'question_id'"),
                            ({"question_id": 0}, "line 1: missing required key 'prediction'"),
                            ({"question_id": True, "prediction": "x"}, "'question_id' must be the 0-based row"),
                            ({"question_id": 0, "prediction": 3}, "'prediction' must be a string")]:
        bad = write_predictions(tmp_path / "bad.jsonl", [record])
        with pytest.raises(DataError, match=message) as error:
            read_evqa_predictions(bad, questions)
        assert str(bad) in str(error.value)
    twice = write_predictions(tmp_path / "twice.jsonl", [{"question_id": 0, "prediction": "a"},
                                                         {"question_id": "0", "prediction": "b"}])
    with pytest.raises(DataError, match="line 2: a second prediction for id 0"):
        read_evqa_predictions(twice, questions)


def test_reference_reader_refuses_bad_rows(tmp_path):
    rows = [{"question": "q", "answer": "x", "question_type": "templated"},
            {"question": "q", "answer": "fine|The", "question_type": "automatic"}]
    with pytest.raises(DataError, match=r"line 3 \(question_id 1\): field 'answer': the reference 'The' is empty"):
        load_evqa_references(write_csv(tmp_path / "a.csv", rows))
    rows = [{"question": "q", "answer": "the&&an", "question_type": "multi_answer"}]
    with pytest.raises(DataError, match=r"line 2 \(question_id 0\): field 'answer'"):
        load_evqa_references(write_csv(tmp_path / "b.csv", rows))
    rows = [{"question": "q", "answer": "x", "question_type": "3_hop"}]
    with pytest.raises(DataError, match="question_type '3_hop' is not one of"):
        load_evqa_references(write_csv(tmp_path / "c.csv", rows))
    (tmp_path / "d.csv").write_text("question,answer,question_type\nq,x,templated\nq2,y\n")
    with pytest.raises(DataError, match=r"d.csv, line 3 \(question_id 1\): 2 of 3 columns; column 'question_type'"):
        load_evqa_references(tmp_path / "d.csv")
    (tmp_path / "e.csv").write_text("question,answer\nq,x\n")
    with pytest.raises(DataError, match="lacks the column\\(s\\) 'question_type'"):
        load_evqa_references(tmp_path / "e.csv")
    (tmp_path / "f.csv").write_text("question,answer,question_type\n")
    with pytest.raises(DataError, match="holds no questions"):
        load_evqa_references(tmp_path / "f.csv")


def test_rows_count_without_blank_lines_and_with_multiline_cells(tmp_path):
    # Row ids are data rows (pandas skips blank lines); a quoted cell may span lines.
    (tmp_path / "v.csv").write_text('question,answer,question_type\n"two\nlines",x,templated\n\nq,y,automatic\n')
    questions = load_evqa_references(tmp_path / "v.csv")
    assert [(q.question_id, q.question) for q in questions] == [(0, "two\nlines"), (1, "q")]


def test_model_based_judge_is_asked_only_where_exact_match_fails():
    questions = [EvqaQuestion(0, "q0", "templated", ["x"]), EvqaQuestion(1, "q1", "multi_answer", ["a1&&b1", "c1"]),
                 EvqaQuestion(2, "q2", "2_hop", ["y"]), EvqaQuestion(3, "q3", "automatic", ["z"])]
    asked = []

    class Judge:
        label = "fake judge"

        def __call__(self, triples):
            asked.extend(triples)
            return [1.0 if triple[1] == "c1" else 0.0 for triple in triples]

    scores = score_evqa(questions, {0: "x", 1: "nope", 2: "no"}, Judge())
    # q0 is an exact match (not asked); q3 has no prediction (not asked, 0); multi_answer '&&' shown as ','.
    assert asked == [("q1", "a1,b1", "nope"), ("q1", "c1", "nope"), ("q2", "y", "no")]
    assert scores["per_question"] == {"0": 1, "1": 1, "2": 0, "3": 0}
    assert scores["exact_match"]["per_question"] == {"0": 1, "1": 0, "2": 0, "3": 0}
    assert scores["single_hop"] == pytest.approx(200 / 3) and scores["exact_match"]["single_hop"] == pytest.approx(100 / 3)
    assert scores["metric"]["model_based"] is True and "fake judge" in scores["metric"]["name"]
