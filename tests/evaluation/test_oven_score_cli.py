"""``rablip-score oven``: the seven official numbers printed and written, exit code 2 with one message on bad input."""

from __future__ import annotations

import json

import pytest

from tests.evaluation.test_oven_metric import rounding_case, write_jsonl
from tests.evaluation.test_score_cli import _run


def test_output_printed_and_written(tmp_path, capsys):
    refs, preds, _, _ = rounding_case(tmp_path)
    out_path = tmp_path / "out" / "scores.json"
    code, out, _ = _run(["oven", "--references", str(refs), "--predictions", str(preds), "--output", str(out_path)],
                        capsys)
    assert code == 0
    written = json.loads(out_path.read_text())
    assert json.loads(out) == written
    assert list(written) == ["final", "query_score", "entity_score", "query_seen", "query_unseen", "entity_seen",
                             "entity_unseen"]
    assert written == {"final": 30.77, "query_score": 25.01, "entity_score": 40.0, "query_seen": 100.0,
                       "query_unseen": 14.29, "entity_seen": 100.0, "entity_unseen": 25.0}


def test_several_reference_and_prediction_files(tmp_path, capsys):
    _, _, refs, preds = rounding_case(tmp_path)
    ref_args = [str(write_jsonl(tmp_path / "q.jsonl", refs[:8])), str(write_jsonl(tmp_path / "e.jsonl", refs[8:]))]
    pred_args = [str(write_jsonl(tmp_path / "p1.jsonl", preds[:5])), str(write_jsonl(tmp_path / "p2.jsonl", preds[5:]))]
    code, out, _ = _run(["oven", "--references", *ref_args, "--predictions", *pred_args], capsys)
    assert code == 0 and json.loads(out)["final"] == 30.77


@pytest.mark.parametrize("bad_line, says", [
    ({"data_id": "query_val_seen_0"}, ["line 3", "missing required key 'pred_entity_id'"]),
    ({"pred_entity_id": "Q10"}, ["line 3", "missing required key 'data_id'"]),
    ({"data_id": "nope", "pred_entity_id": "Q10"}, ["line 3", "data_id 'nope' is not in the reference files"]),
    ({"data_id": "query_val_seen_0", "pred_entity_id": 10}, ["line 3", "'pred_entity_id' should be a string"]),
])
def test_user_errors_exit_2_with_one_message(tmp_path, capsys, bad_line, says):
    refs, _, _, preds = rounding_case(tmp_path)
    pred_path = write_jsonl(tmp_path / "preds.jsonl", [*preds[:2], bad_line, *preds[2:]])
    code, out, err = _run(["oven", "--references", str(refs), "--predictions", str(pred_path)], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and str(pred_path) in err
    assert all(fragment in err for fragment in says), err
    assert "Traceback" not in err and err.count("\n") == 1


def test_missing_group_exits_2(tmp_path, capsys):
    refs, _, _, preds = rounding_case(tmp_path)
    only_query = write_jsonl(tmp_path / "preds.jsonl", [p for p in preds if p["data_id"].startswith("query")])
    code, _, err = _run(["oven", "--references", str(refs), "--predictions", str(only_query)], capsys)
    assert code == 2 and "no predictions in the OVEN entity seen group" in err and err.count("\n") == 1
