"""rablip.evaluation.oven_metric against the official oven_eval.py rules, on edge-case files written here.

Expected numbers are worked out by hand from the rules (see each test's comment), so a scorer that
rounds in another place, averages over the references, drops duplicates or normalises QIDs fails.
"""

from __future__ import annotations

import json
import logging

import pytest

from rablip.errors import DataError
from rablip.evaluation.oven_metric import (
    OUTPUT_KEYS,
    group_of,
    harmonic_mean,
    load_oven_references,
    score_oven_files,
    task_of,
)


def _ref(data_id, split, entity="Q1"):
    return {"data_id": data_id, "image_id": "oven_00000001", "question": "what is this?", "entity_id": entity,
            "entity_text": "Thing", "data_split": split}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def rounding_case(tmp_path):
    """query seen 1/1, query unseen 1/7, entity seen 1/1, entity unseen 1/4 (+ one query_train question).

    Groups: 100.0, round(100/7, 2) = 14.29, 100.0, 25.0. query_score = HM(100, 14.29) = 25.00656 -> 25.01
    (HM of the unrounded 100 and 14.2857 would be 25.0); entity_score = HM(100, 25) = 40.0; final =
    HM(25.00656, 40) = 30.774 -> 30.77 (from the rounded 25.01 it would be 30.78).
    """
    refs, preds = [], []
    plan = [("query_val_seen", 1, 1), ("query_val_unseen", 7, 1), ("entity_val_seen", 1, 1),
            ("entity_val_unseen", 4, 1), ("query_train", 3, 0)]
    for split, total, right in plan:
        for i in range(total):
            data_id = f"{split}_{i}"
            refs.append(_ref(data_id, split, entity=f"Q{i + 10}"))
            preds.append({"data_id": data_id, "pred_entity_id": f"Q{i + 10}" if i < right else "Q999"})
    return write_jsonl(tmp_path / "refs.jsonl", refs), write_jsonl(tmp_path / "preds.jsonl", preds), refs, preds


def test_rounding_where_the_official_code_rounds(tmp_path):
    refs, preds, _, _ = rounding_case(tmp_path)
    scores = score_oven_files([refs], [preds])
    assert list(scores) == list(OUTPUT_KEYS)
    assert scores == {"final": 30.77, "query_score": 25.01, "entity_score": 40.0, "query_seen": 100.0,
                      "query_unseen": 14.29, "entity_seen": 100.0, "entity_unseen": 25.0}


def test_query_and_entity_files_given_separately_score_the_same(tmp_path):
    _, _, refs, preds = rounding_case(tmp_path)
    query = [r for r in refs if r["data_split"].startswith("query")]
    entity = [r for r in refs if r["data_split"].startswith("entity")]
    ref_files = [write_jsonl(tmp_path / "q.jsonl", query), write_jsonl(tmp_path / "e.jsonl", entity)]
    pred_files = [write_jsonl(tmp_path / "pe.jsonl", preds[8:]), write_jsonl(tmp_path / "pq.jsonl", preds[:8])]
    assert score_oven_files(ref_files, pred_files)["final"] == 30.77


def _four_groups(tmp_path, extra_refs=(), preds=None):
    refs = [_ref("qs", "query_val_seen", "Q1"), _ref("qu", "query_val_unseen", "Q2"),
            _ref("es", "entity_val_seen", "Q3"), _ref("eu", "entity_val_unseen", "Q4"), *extra_refs]
    if preds is None:
        preds = [{"data_id": r["data_id"], "pred_entity_id": r["entity_id"]} for r in refs[:4]]
    return write_jsonl(tmp_path / "refs.jsonl", refs), write_jsonl(tmp_path / "preds.jsonl", preds)


def _all_right(*extra):
    return [{"data_id": i, "pred_entity_id": q} for i, q in (("qs", "Q1"), ("qu", "Q2"), ("es", "Q3"), ("eu", "Q4"))] + list(extra)


def test_duplicates_count_twice_and_the_denominator_is_the_predictions_given(tmp_path, caplog):
    # qs predicted three times (right, wrong, wrong) -> 1/3 = 33.33; the unpredicted 'qs2' is not counted
    # (it would make 1/4 = 25.0). query_score = HM(33.33, 100) = 49.996 -> 50.0; entity 100;
    # final = HM(49.996..., 100) = 66.663 -> 66.66.
    preds = _all_right({"data_id": "qs", "pred_entity_id": "Q7"}, {"data_id": "qs", "pred_entity_id": "Q8"})
    refs, pred_file = _four_groups(tmp_path, [_ref("qs2", "query_val_seen", "Q5")], preds)
    with caplog.at_level(logging.WARNING):
        scores = score_oven_files([refs], [pred_file])
    assert scores["query_seen"] == 33.33
    assert scores["query_score"] == 50.0 and scores["entity_score"] == 100.0 and scores["final"] == 66.66
    assert "1 reference question(s) have no prediction" in caplog.text
    assert "2 prediction(s) repeat a data_id" in caplog.text


def test_a_zero_group_is_replaced_by_1e_12_in_the_harmonic_mean(tmp_path):
    preds = _all_right()
    preds[0]["pred_entity_id"] = "Q999"  # query seen 0.0
    refs, pred_file = _four_groups(tmp_path, preds=preds)
    scores = score_oven_files([refs], [pred_file])
    # HM(1e-12, 100) = 2e-12 -> 0.0; final = HM(2e-12, 100) -> 0.0 (no ZeroDivisionError).
    assert scores == {"final": 0.0, "query_score": 0.0, "entity_score": 100.0, "query_seen": 0.0,
                      "query_unseen": 100.0, "entity_seen": 100.0, "entity_unseen": 100.0}
    assert harmonic_mean(0, 100) == pytest.approx(2e-12)
    assert harmonic_mean(0, 0) == pytest.approx(1e-12)


def test_exact_qid_match_without_normalisation(tmp_path):
    preds = _all_right()
    preds[1]["pred_entity_id"] = "q2"
    preds[2]["pred_entity_id"] = " Q3"
    refs, pred_file = _four_groups(tmp_path, preds=preds)
    scores = score_oven_files([refs], [pred_file])
    assert scores["query_unseen"] == 0.0 and scores["entity_seen"] == 0.0


def test_splits_other_than_seen_and_unseen_are_dropped(tmp_path, caplog):
    extra = [_ref("t1", "query_train", "Q5"), _ref("h1", "human_val_seen", "Q6"), _ref("t2", "entity_train", "Q7")]
    preds = _all_right(*({"data_id": i, "pred_entity_id": "wrong"} for i in ("t1", "h1", "t2")))
    refs, pred_file = _four_groups(tmp_path, extra, preds)
    with caplog.at_level(logging.WARNING):
        assert score_oven_files([refs], [pred_file])["final"] == 100.0
    assert "'query_train': 1" in caplog.text and "'human_val_seen': 1" in caplog.text
    assert [group_of(s) for s in ("entity_val_seen", "query_val_unseen", "query_train")] == ["seen", "unseen", None]
    assert [task_of(s) for s in ("query_val_seen", "entity_test_unseen", "human_val_seen")] == ["query", "entity", None]


def test_a_later_split_of_the_same_group_overwrites_the_earlier(tmp_path, caplog):
    # query_val_seen (first predicted, 100.0) and query_test_seen (0.0) both contain '_seen': the official
    # loop assigns in order of first prediction, so 0.0 is kept.
    preds = _all_right({"data_id": "qt", "pred_entity_id": "Q999"})
    refs, pred_file = _four_groups(tmp_path, [_ref("qt", "query_test_seen", "Q8")], preds)
    with caplog.at_level(logging.WARNING):
        scores = score_oven_files([refs], [pred_file])
    assert scores["query_seen"] == 0.0
    assert "keeps the later ('query_test_seen')" in caplog.text


def test_an_unknown_id_is_an_error_naming_file_and_line(tmp_path):
    refs, pred_file = _four_groups(tmp_path, preds=_all_right({"data_id": "nope", "pred_entity_id": "Q1"}))
    with pytest.raises(DataError, match=r"preds\.jsonl, line 5: data_id 'nope' is not in the reference files"):
        score_oven_files([refs], [pred_file])


@pytest.mark.parametrize("record, key", [
    ({"data_id": "qs"}, "'pred_entity_id'"),
    ({"pred_entity_id": "Q1"}, "'data_id'"),
    ({"data_id": "qs", "pred_entity_id": None}, "'pred_entity_id' should be a string"),
    ({"data_id": 7, "pred_entity_id": "Q1"}, "'data_id' should be a string"),
])
def test_a_prediction_without_its_id_or_entity_is_an_error(tmp_path, record, key):
    refs, pred_file = _four_groups(tmp_path, preds=_all_right(record))
    with pytest.raises(DataError, match=r"preds\.jsonl, line 5") as info:
        score_oven_files([refs], [pred_file])
    assert key in str(info.value)


def test_a_group_without_predictions_is_an_error(tmp_path):
    refs, pred_file = _four_groups(tmp_path, preds=_all_right()[:3])
    with pytest.raises(DataError, match="no predictions in the OVEN entity unseen group"):
        score_oven_files([refs], [pred_file])


def test_bad_reference_files(tmp_path):
    no_entity = {k: v for k, v in _ref("a", "query_val_seen").items() if k != "entity_id"}
    path = write_jsonl(tmp_path / "test.jsonl", [no_entity])
    with pytest.raises(DataError, match=r"test\.jsonl, line 1: no 'entity_id' \(a test-split file\?\)"):
        load_oven_references([path])
    path = write_jsonl(tmp_path / "dup.jsonl", [_ref("a", "query_val_seen"), _ref("a", "query_val_seen")])
    with pytest.raises(DataError, match=r"line 2: data_id 'a' appears twice \(first at .*dup\.jsonl, line 1\)"):
        load_oven_references([path])
    with pytest.raises(DataError, match="hold no questions"):
        load_oven_references([write_jsonl(tmp_path / "empty.jsonl", [])])
