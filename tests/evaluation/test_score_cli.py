"""``rablip-score``: output JSON (printed and written), and exit code 2 with one message on bad input."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from rablip.benchmarks.cli import main


def _vqa_files(tmp_path):
    questions = {"questions": [{"image_id": 1, "question": "q?", "question_id": qid} for qid in (1, 2)]}
    annotations = {"annotations": [
        {"image_id": 1, "question_id": 1, "question_type": "one", "answer_type": "other", "confidence": 3,
         "answers": [{"answer": a, "raw_answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                     for i, a in enumerate(["dog"] * 2 + ["cat"] * 8)]},
        {"image_id": 1, "question_id": 2, "question_type": "two", "answer_type": "number", "confidence": 3,
         "answers": [{"answer": "2", "raw_answer": "2", "answer_confidence": "yes", "answer_id": i + 1}
                     for i in range(10)]},
    ]}
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "a.json").write_text(json.dumps(annotations))
    return ["--questions", str(tmp_path / "q.json"), "--annotations", str(tmp_path / "a.json")]


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_okvqa_output_printed_and_written(tmp_path, capsys):
    (tmp_path / "p.json").write_text(json.dumps([{"question_id": 1, "answer": "Dog"}, {"question_id": 2, "answer": "2"}]))
    out_path = tmp_path / "out" / "scores.json"
    code, out, _ = _run(["okvqa", *_vqa_files(tmp_path), "--predictions", str(tmp_path / "p.json"),
                         "--output", str(out_path)], capsys)
    assert code == 0
    written = json.loads(out_path.read_text())
    assert json.loads(out) == written
    # q1: 'dog' matches 2 of 10 -> 0.6; q2: 1.0 -> (0.6 + 1) / 2 = 80.0
    assert written["overall"] == 80.0
    assert written["per_question"] == {"1": 60.0, "2": 100.0}
    assert written["per_question_type"] == {"one": 60.0, "two": 100.0}
    assert written["metric"]["lemmatize"] is False


def test_vqav2_alias_and_missing_predictions(tmp_path, capsys):
    (tmp_path / "p.json").write_text(json.dumps([{"question_id": 2, "answer": "two"}]))
    code, out, _ = _run(["vqav2", *_vqa_files(tmp_path), "--predictions", str(tmp_path / "p.json")], capsys)
    assert code == 0
    scores = json.loads(out)
    # Ten identical '2': no normalisation, so 'two' does not match; q1 missing -> 0.
    assert scores["overall"] == 0.0
    assert scores["missing"] == 1


@pytest.mark.parametrize("content, message", [
    ("[{", "malformed JSON at line 1"),
    (json.dumps([{"question_id": 1, "answer": None}]), "'answer' must be a string"),
    (json.dumps({"1": "cat"}), "expected a JSON list"),
])
def test_user_errors_exit_2_with_one_message(tmp_path, capsys, content, message):
    (tmp_path / "p.json").write_text(content)
    code, out, err = _run(["okvqa", *_vqa_files(tmp_path), "--predictions", str(tmp_path / "p.json")], capsys)
    assert code == 2
    assert out == ""
    assert err.startswith("error: ") and message in err and str(tmp_path / "p.json") in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_unknown_ids_refused_with_strict(tmp_path, capsys):
    (tmp_path / "p.json").write_text(json.dumps([{"question_id": 99, "answer": "x"}]))
    code, out, err = _run(["okvqa", *_vqa_files(tmp_path), "--predictions", str(tmp_path / "p.json"), "--strict"],
                          capsys)
    assert code == 2
    assert out == ""
    assert err.startswith("error: ") and "not in the reference data" in err and str(tmp_path / "p.json") in err
    assert "99" in err and "Traceback" not in err and err.count("\n") == 1


def test_unknown_ids_ignored_with_one_warning(tmp_path, capsys, caplog):
    predictions = [{"question_id": qid, "answer": "x"} for qid in (90, 91, 92, 93, 94, 95, 96)]
    predictions.insert(3, {"question_id": 1, "answer": "dog"})
    (tmp_path / "p.json").write_text(json.dumps(predictions))
    with caplog.at_level(logging.WARNING, logger="rablip.evaluation.predictions"):
        code, out, _ = _run(["okvqa", *_vqa_files(tmp_path), "--predictions", str(tmp_path / "p.json")], capsys)
    assert code == 0
    scores = json.loads(out)
    # Scored on the known ids only: q1 'dog' 0.6, q2 missing 0.
    assert scores["overall"] == 30.0 and scores["per_question"] == {"1": 60.0, "2": 0.0} and scores["missing"] == 1
    (warning,) = [record for record in caplog.records if record.levelno == logging.WARNING]
    message = warning.getMessage()
    assert "7 question_id(s)" in message and "ignored" in message and str(tmp_path / "p.json") in message
    shown = message.split("e.g. ", 1)[1].split(" (", 1)[0]  # the ids shown, not the tmp path (pytest-95...)
    assert shown == "90, 91, 92, 93, 94" and "--strict" in message


def test_aokvqa_infoseek_webqa_commands(tmp_path, capsys):
    aokvqa = [{"question_id": "a", "image_id": 1, "question": "q", "choices": ["x", "y"], "correct_choice_idx": 1,
               "direct_answers": ["y"] * 10, "difficult_direct_answer": False, "rationales": []}]
    (tmp_path / "aok.json").write_text(json.dumps(aokvqa))
    (tmp_path / "aokp.json").write_text(json.dumps({"a": {"multiple_choice": "y", "direct_answer": "y"}}))
    code, out, _ = _run(["aokvqa", "--data", str(tmp_path / "aok.json"), "--predictions", str(tmp_path / "aokp.json")], capsys)
    assert code == 0 and json.loads(out)["mc"] == 100.0 and json.loads(out)["da"] == 100.0

    refs = [{"data_id": "1", "answer_eval": ["oak"], "data_split": "val_unseen_question"},
            {"data_id": "2", "answer_eval": ["elm"], "data_split": "val_unseen_entity"}]
    (tmp_path / "ref.jsonl").write_text("\n".join(map(json.dumps, refs)))
    (tmp_path / "pred.jsonl").write_text(json.dumps({"data_id": "1", "prediction": "Oak"}))
    code, out, _ = _run(["infoseek", "--references", str(tmp_path / "ref.jsonl"),
                         "--predictions", str(tmp_path / "pred.jsonl")], capsys)
    scores = json.loads(out)
    assert code == 0 and (scores["unseen_question"], scores["unseen_entity"]) == (100.0, 0.0)

    webqa = {"g": {"Q": "q", "A": ['"Red."'], "Qcate": "color", "Keywords_A": "red", "split": "val",
                   "txt_posFacts": [{"snippet_id": "s", "fact": "f"}], "img_posFacts": []}}
    (tmp_path / "webqa.json").write_text(json.dumps(webqa))
    (tmp_path / "wp.json").write_text(json.dumps({"g": {"sources": ["s"], "answer": "red"}}))
    code, out, _ = _run(["webqa", "--data", str(tmp_path / "webqa.json"), "--predictions", str(tmp_path / "wp.json")], capsys)
    scores = json.loads(out)
    assert code == 0 and scores["retrieval_f1"] == 1.0 and scores["qa_acc"] == round(2 / (2 + 1e-5), 4)
    assert scores["qa_fl"] is None and scores["qa"] is None


@pytest.mark.parametrize("benchmark", ["aokvqa", "infoseek", "webqa"])
def test_unknown_ids_in_the_other_formats(tmp_path, capsys, caplog, benchmark):
    """As in the official A-OKVQA and InfoSeek scripts: ignored (the score is the known ids'), or --strict refuses."""
    if benchmark == "aokvqa":
        data = [{"question_id": "a", "image_id": 1, "question": "q", "choices": ["x", "y"], "correct_choice_idx": 1,
                 "direct_answers": ["y"] * 10, "difficult_direct_answer": False, "rationales": []}]
        (tmp_path / "data.json").write_text(json.dumps(data))
        (tmp_path / "p.json").write_text(json.dumps({"zz": {"multiple_choice": "x", "direct_answer": "x"},
                                                     "a": {"direct_answer": "y"}}))
        argv, expected = ["--data", str(tmp_path / "data.json")], {"da": 100.0, "mc": None}
    elif benchmark == "infoseek":
        refs = [{"data_id": "1", "answer_eval": ["oak"], "data_split": "val_unseen_question"},
                {"data_id": "2", "answer_eval": ["elm"], "data_split": "val_unseen_entity"}]
        (tmp_path / "data.jsonl").write_text("\n".join(map(json.dumps, refs)))
        (tmp_path / "p.json").write_text("\n".join(json.dumps({"data_id": i, "prediction": "Oak"}) for i in ("1", "zz")))
        argv, expected = ["--references", str(tmp_path / "data.jsonl")], {"unseen_question": 100.0, "missing": 1}
    else:
        data = {"g": {"Q": "q", "A": ['"Red."'], "Qcate": "color", "Keywords_A": "red", "split": "val",
                      "txt_posFacts": [{"snippet_id": "s", "fact": "f"}], "img_posFacts": []}}
        (tmp_path / "data.json").write_text(json.dumps(data))
        (tmp_path / "p.json").write_text(json.dumps({"zz": {"sources": [], "answer": "x"},
                                                     "g": {"sources": ["s"], "answer": "red"}}))
        argv, expected = ["--data", str(tmp_path / "data.json")], {"retrieval_f1": 1.0, "num_questions": 1}
    argv = [benchmark, *argv, "--predictions", str(tmp_path / "p.json")]
    with caplog.at_level(logging.WARNING, logger="rablip.evaluation.predictions"):
        code, out, _ = _run(argv, capsys)
    assert code == 0
    scores = json.loads(out)
    assert {key: scores[key] for key in expected} == expected
    (warning,) = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert "1 " in warning.getMessage() and "'zz'" in warning.getMessage()
    code, out, err = _run([*argv, "--strict"], capsys)
    assert code == 2 and out == "" and "'zz'" in err and "not in the reference data" in err


def test_console_module_exit_code(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    result = subprocess.run(
        [sys.executable, "-m", "rablip.benchmarks.cli", "aokvqa", "--data", str(tmp_path / "bad.json"),
         "--predictions", str(tmp_path / "bad.json")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: A-OKVQA file") and "malformed JSON" in result.stderr
