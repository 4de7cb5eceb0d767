"""VQA accuracy (OK-VQA / VQAv2): the official rules, hand-computed values, and a naive re-statement."""

from __future__ import annotations

import json
import random
import re

import pytest

from rablip.errors import DataError
from rablip.evaluation.vqa_metric import (
    CONTRACTIONS,
    load_vqa_annotations,
    process_digit_article,
    process_punctuation,
    read_vqa_predictions,
    score_vqa,
    vqa_accuracy,
)


def test_identical_answers_are_not_normalised():
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0
    assert vqa_accuracy("yes", ["yes"] * 10) == 1.0
    assert vqa_accuracy(" yes\n", ["yes"] * 10) == 1.0  # step 1 still applies
    # One different answer switches normalisation on, for the prediction too.
    assert vqa_accuracy("Yes", ["yes"] * 9 + ["no"]) == 1.0


@pytest.mark.parametrize("matches, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_leave_one_out_values(matches, expected):
    answers = ["cat"] * matches + ["dog"] * (10 - matches)
    if matches == 10:
        answers = ["cat"] * 10
    assert vqa_accuracy("cat", answers) == expected


def test_leave_one_out_drops_equal_records_like_the_official_comparison():
    # Two identical records (same answer and answer_id): leaving one out drops both.
    answers = ["cat", "cat", "cat", "dog", "dog", "dog", "dog", "dog", "dog", "dog"]
    identities = [1, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    # For each of the first two 'cat's only one other 'cat' remains -> 1/3; third 'cat' -> 2/3;
    # each 'dog' left out leaves 3 'cat's -> 1.
    expected = (1 / 3 + 1 / 3 + 2 / 3 + 7 * 1) / 10
    assert vqa_accuracy("cat", answers, identities) == pytest.approx(expected)
    assert vqa_accuracy("cat", answers) == 0.9


def test_period_rule_keeps_decimals_and_strips_others():
    assert process_punctuation("2.5") == "2.5"
    assert process_punctuation("end.") == "end"
    assert process_punctuation(".5") == ".5"
    # Only 32 periods are removed: the official code passes re.UNICODE (32) as `count`.
    assert process_punctuation("." * 40) == "." * 8
    assert vqa_accuracy("2.5", ["2.5", "2.5", "2.5", "3"] + ["4"] * 6) == 0.9


def test_punctuation_rule_space_and_digit_comma_digit():
    assert process_punctuation("black-white") == "black white"  # replaced by a space
    assert process_punctuation("black - white") == "black  white"  # space beside it: deleted
    assert process_punctuation("1,000") == "1000"
    assert process_punctuation("a,b") == "a b"
    # A digit-comma-digit anywhere makes every mark vanish, even without spaces.
    assert process_punctuation("1,000 x-y") == "1000 xy"
    # Characters outside the list stay.
    assert process_punctuation("it's 5:30 #1") == "it's 5:30 #1"


def test_digits_articles_contractions():
    assert process_digit_article("The Two dogs") == "2 dogs"
    assert process_digit_article("none") == "0"
    assert process_digit_article("dont know") == "don't know"
    assert process_digit_article("an apple a day") == "apple day"
    assert process_digit_article("eleven") == "eleven"  # only none/zero..ten are mapped
    assert len(CONTRACTIONS) > 110
    assert CONTRACTIONS["somebody'd"] == "somebodyd"  # the official table's oddity, kept
    assert vqa_accuracy("Two", ["2", "2", "2", "two", "3", "3", "3", "3", "3", "3"]) == 1.0
    assert vqa_accuracy("dont", ["don't"] * 3 + ["no"] * 7) == 0.9


def _write_vqa(tmp_path, questions):
    """Questions/annotations files in the official format from (qid, qtype, atype, answers)."""
    qfile = {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": "val2014",
             "license": {}, "questions": [{"image_id": 1, "question": "q?", "question_id": q[0]} for q in questions]}
    afile = {"annotations": [
        {"image_id": 1, "question_id": qid, "question_type": qtype, "answer_type": atype, "confidence": 3,
         "answers": [{"answer": a, "raw_answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                     for i, a in enumerate(answers)]}
        for qid, qtype, atype, answers in questions]}
    (tmp_path / "q.json").write_text(json.dumps(qfile))
    (tmp_path / "a.json").write_text(json.dumps(afile))
    return tmp_path / "q.json", tmp_path / "a.json"


def test_totals_rounding_and_missing(tmp_path):
    questions = [
        (1, "one", "other", ["cat"] * 10),
        (2, "one", "other", ["cat"] + ["dog"] * 9),
        (3, "two", "number", ["2"] * 10),
    ]
    qpath, apath = _write_vqa(tmp_path, questions)
    loaded = load_vqa_annotations(qpath, apath)
    (tmp_path / "p.json").write_text(json.dumps([{"question_id": 1, "answer": "cat"}, {"question_id": 2, "answer": "cat"}]))
    predictions, missing = read_vqa_predictions(tmp_path / "p.json", loaded)
    assert missing == [3]
    scores = score_vqa(loaded, predictions)
    # (1 + 0.3 + 0) / 3 = 0.4333.. -> 43.33
    assert scores["overall"] == 43.33
    assert scores["per_question"] == {"1": 100.0, "2": 30.0, "3": 0.0}
    assert scores["per_question_type"] == {"one": 65.0, "two": 0.0}
    assert scores["per_answer_type"] == {"other": 65.0, "number": 0.0}
    assert scores["missing"] == 1
    assert scores["metric"]["lemmatize"] is False


def test_equal_answer_records_in_a_file_are_left_out_together(tmp_path):
    qpath, apath = _write_vqa(tmp_path, [(1, "one", "other", ["cat"] * 3 + ["dog"] * 7),
                                         (2, "one", "other", ["cat"] * 3 + ["dog"] * 7)])
    document = json.loads(apath.read_text())
    document["annotations"][1]["answers"][1]["answer_id"] = 1  # question 2: records 0 and 1 are now equal
    apath.write_text(json.dumps(document))
    loaded = load_vqa_annotations(qpath, apath)
    assert loaded[0].answer_identities is None, "distinct records need no identities"
    scores = score_vqa(loaded, {1: "cat", 2: "cat"})["per_question"]
    assert scores["1"] == 90.0
    assert scores["2"] == round(100 * (1 / 3 + 1 / 3 + 2 / 3 + 7) / 10, 2)


def test_lemmatize_option(tmp_path):
    qpath, apath = _write_vqa(tmp_path, [(1, "one", "other", ["dog"] * 5 + ["puppy"] * 5)])
    loaded = load_vqa_annotations(qpath, apath)
    assert score_vqa(loaded, {1: "dogs"})["overall"] == 0.0
    scores = score_vqa(loaded, {1: "dogs"}, lemmatize=True)
    assert scores["overall"] == 100.0
    assert "rule-based" in scores["metric"]["lemmatizer"]


def test_prediction_file_errors(tmp_path):
    qpath, apath = _write_vqa(tmp_path, [(1, "one", "other", ["cat"] * 10)])
    loaded = load_vqa_annotations(qpath, apath)
    cases = {
        "not json": "malformed JSON",
        json.dumps({"question_id": 1}): "expected a JSON list",
        json.dumps([{"question_id": 1, "answer": 3}]): "'answer' must be a string",
        json.dumps([{"question_id": "1", "answer": "x"}]): "'question_id' should be an integer",
        json.dumps([{"question_id": 7, "answer": "x"}]): "not in the reference data",
        json.dumps([{"question_id": 1, "answer": "x"}, {"question_id": 1, "answer": "y"}]): "second prediction",
    }
    for text, message in cases.items():
        (tmp_path / "p.json").write_text(text)
        with pytest.raises(DataError, match=message):
            read_vqa_predictions(tmp_path / "p.json", loaded, strict=True)


# ---------------------------------------------------------------------------------------------
# A deliberately naive, literal re-statement of the official procedure, in a different shape,
# compared with the scorer on random cases built from the characters the rules care about.

_NAIVE_PUNCT = ';/[]"{}()=+\\_->/<@`,?!'


def _naive_punct(text):
    comma = any(text[i].isdigit() and text[i + 1] == "," and text[i + 2].isdigit() for i in range(len(text) - 2))
    out = text
    for p in dict.fromkeys(_NAIVE_PUNCT):
        delete = comma or (p + " ") in text or (" " + p) in text
        out = out.replace(p, "" if delete else " ")
    chars, removed = [], 0
    for i, ch in enumerate(out):
        nxt = out[i + 1] if i + 1 < len(out) else ""
        if ch == "." and not nxt.isdigit() and removed < 32:
            removed += 1
            continue
        chars.append(ch)
    return "".join(chars)


def _naive_words(text):
    numbers = dict(zip("none zero one two three four five six seven eight nine ten".split(),
                       "0 0 1 2 3 4 5 6 7 8 9 10".split()))
    kept = []
    for w in text.lower().split():
        w = numbers.get(w, w)
        if w in ("a", "an", "the"):
            continue
        kept.append(CONTRACTIONS.get(w, w))
    return " ".join(kept)


def _naive_accuracy(pred, answers):
    gts = [re.sub(r"[\n\t]", " ", a).strip() for a in answers]
    res = re.sub(r"[\n\t]", " ", pred).strip()
    if len(set(gts)) != 1:
        gts = [_naive_words(_naive_punct(g)) for g in gts]
        res = _naive_words(_naive_punct(res))
    accs = []
    for i in range(len(gts)):
        others = gts[:i] + gts[i + 1:]
        accs.append(min(1, float(others.count(res)) / 3))
    return float(sum(accs)) / len(accs)


_PIECES = ["yes", "Yes", "no", "2", "two", "2.5", "end.", "dont", "don't", "the", "a", "cat", "Cat",
           "1,000", "1000", "x-y", "a - b", "(c)", "\t", "\n", " ", "!", "?", ".", ",", "one", "none", "red/blue"]
# Spellings the normalisation should (or should not) bring together.
_VARIANTS = [
    ["1,000", "1000", "1 000", "1,000 x-y", "1000 xy", "1000 x y"],
    ["2.5", "2.5.", "25", "2 5", "2.5 end.", "2.5 end"],
    ["x-y", "x y", "xy", "x - y", "x -y", "(x)y", "x(y)"],
    ["dont", "don't", "Dont", "do not"],
    ["two", "2", "Two", "the two", "2."],
    ["the cat", "cat", "Cat.", "a cat", "cat!", "cat ?"],
    ["yes", "Yes", "yes!", "yes.", " yes\n", "YES"],
    ["." * 33 + "a", "." * 40 + "a", "a", "." * 31 + "a"],
]


def _random_text(rng):
    return "".join(rng.choice(_PIECES) + rng.choice(["", " "]) for _ in range(rng.randint(1, 4)))


def _random_case(rng):
    group = rng.choice(_VARIANTS)
    other = rng.choice(_VARIANTS)
    n_group = rng.randint(0, 10)
    answers = [rng.choice(group) for _ in range(n_group)] + [rng.choice(other + [_random_text(rng)])
                                                             for _ in range(10 - n_group)]
    rng.shuffle(answers)
    prediction = rng.choice(group) if rng.random() < 0.8 else _random_text(rng)
    return prediction, answers


def test_matches_naive_restatement_on_random_cases():
    rng = random.Random(0)
    nonzero = 0
    for _ in range(600):
        prediction, answers = _random_case(rng)
        expected = _naive_accuracy(prediction, answers)
        nonzero += expected > 0
        assert vqa_accuracy(prediction, answers) == expected, (prediction, answers)
    assert nonzero > 100  # the cases do exercise matching, not only misses
