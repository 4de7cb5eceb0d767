"""Bad knowledge-base and prediction files (``scripts/build_kb.py``, ``rablip-score``): the rows of the
bad-input table about files a user brings (see :mod:`tests.reliability.bad_input` for what each must
hold)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rablip.synthetic.webqa_files import write_webqa
from tests.benchmarks.test_webqa import _train_val, _write_tsv
from tests.evaluation.test_score_cli import _vqa_files
from tests.reliability.bad_input import BASE_CONFIG, BadInput, check_bad_input
from tests.reliability.bad_input import jsonl as _jsonl
from tests.reliability.bad_input import write_file as _write

# --- knowledge base (scripts/build_kb.py) -------------------------------------------------------

def _kb_args(tmp: Path, content: str | bytes, *extra: str) -> list[str]:
    path = _write(tmp / "kb.jsonl", content)
    (tmp / "kb_root").mkdir()
    return ["--config", BASE_CONFIG, "data.kb.format=jsonl", f"data.kb.path={path}",
            f"data.kb.root={tmp / 'kb_root'}", f"data.kb.store_dir={tmp / 'store'}", *extra]


def kb_malformed_jsonl(tmp: Path) -> list[str]:
    return _kb_args(tmp, _jsonl({"id": "a", "text": "x"}) + '{"id": "b", "text": \n')


def kb_missing_key(tmp: Path) -> list[str]:
    return _kb_args(tmp, _jsonl({"id": "a", "text": "x"}, {"text": "no id"}))


def kb_wrong_type(tmp: Path) -> list[str]:
    return _kb_args(tmp, _jsonl({"id": "a", "text": "x"}, {"id": "b", "text": 7}))


def kb_duplicate_id(tmp: Path) -> list[str]:
    return _kb_args(tmp, _jsonl({"id": "a", "text": "x"}, {"id": "b", "text": "y"}, {"id": "a", "text": "z"}))


def kb_not_utf8(tmp: Path) -> list[str]:
    return _kb_args(tmp, _jsonl({"id": "a", "text": "x"}).encode() + b'{"id": "b", "text": "caf\xe9"}\n')


def kb_image_climbs_out(tmp: Path) -> list[str]:
    return _kb_args(tmp, _jsonl({"id": "a", "text": "x", "image": "../secret.png"}))


def kb_image_absolute(tmp: Path) -> list[str]:
    return _kb_args(tmp, _jsonl({"id": "a", "text": "x", "image": "/etc/hostname"}))


def webqa_lineidx_past_the_end(tmp: Path) -> list[str]:
    tsv, lineidx = _write_tsv(tmp)
    lineidx.write_text(f"{tsv.stat().st_size + 100}\n" + "".join(lineidx.read_text().splitlines(True)[1:]))
    data = _write(tmp / "WebQA_train_val.json", json.dumps(_train_val()))
    return ["--config", BASE_CONFIG, "data.kb.format=webqa", f"data.kb.path={data}",
            f"data.kb.webqa_images_tsv={tsv}", f"data.kb.store_dir={tmp / 'store'}"]


def _webqa_args(tmp: Path, **broken: int) -> list[str]:
    """build_kb on a generated WebQA (tests/webqa_data.py) with ``broken`` unusable image facts."""
    files = write_webqa(tmp, n_questions=4, n_test=1, **broken)
    return ["--config", BASE_CONFIG, "data.dataset=webqa", "data.kb.format=webqa", f"data.kb.path={files.train_val}",
            f"data.kb.extra_paths=[{files.test}]", f"data.kb.webqa_images_tsv={files.tsv}",
            f"data.kb.store_dir={tmp / 'store'}"]


def webqa_image_id_missing(tmp: Path) -> list[str]:
    return _webqa_args(tmp, missing=1)


def webqa_image_line_truncated(tmp: Path) -> list[str]:
    return _webqa_args(tmp, truncated=1)


def webqa_image_payload_not_an_image(tmp: Path) -> list[str]:
    return _webqa_args(tmp, not_image=1)


# --- prediction files (rablip-score) ------------------------------------------------------------

def _okvqa_predictions(tmp: Path, content: str | bytes) -> list[str]:
    predictions = _write(tmp / "predictions.json", content)
    _write(tmp / "scores.json", '{"kept": true}\n')  # an earlier result that must survive
    return ["okvqa", *_vqa_files(tmp), "--predictions", str(predictions), "--output", str(tmp / "scores.json")]


def predictions_unknown_id(tmp: Path) -> list[str]:
    """Refused under --strict (by default an unknown id is ignored with a warning, as the official scripts do)."""
    return [*_okvqa_predictions(tmp, json.dumps([{"question_id": 1, "answer": "cat"}, {"question_id": 99, "answer": "x"}])),
            "--strict"]


def predictions_missing_answer(tmp: Path) -> list[str]:
    return _okvqa_predictions(tmp, json.dumps([{"question_id": 1, "answer": "cat"}, {"question_id": 2}]))


def predictions_non_string_answer(tmp: Path) -> list[str]:
    return _okvqa_predictions(tmp, json.dumps([{"question_id": 1, "answer": 2}]))


def predictions_duplicate_id(tmp: Path) -> list[str]:
    return _okvqa_predictions(tmp, json.dumps([{"question_id": 1, "answer": "cat"}, {"question_id": 1, "answer": "dog"}]))


def predictions_not_utf8(tmp: Path) -> list[str]:
    return _okvqa_predictions(tmp, b'[{"question_id": 1, "answer": "caf\xe9"}]')


def aokvqa_non_string_choice(tmp: Path) -> list[str]:
    data = [{"question_id": "a", "image_id": 1, "question": "q", "choices": ["x", "y"], "correct_choice_idx": 1,
             "direct_answers": ["y"] * 10, "difficult_direct_answer": False, "rationales": []}]
    _write(tmp / "aokvqa.json", json.dumps(data))
    _write(tmp / "predictions.json", json.dumps({"a": {"multiple_choice": 1, "direct_answer": "y"}}))
    return ["aokvqa", "--data", str(tmp / "aokvqa.json"), "--predictions", str(tmp / "predictions.json")]


def infoseek_malformed_jsonl(tmp: Path) -> list[str]:
    references = [{"data_id": "1", "answer_eval": ["oak"], "data_split": "val_unseen_question"}]
    _write(tmp / "references.jsonl", _jsonl(*references))
    _write(tmp / "predictions.jsonl", '{"data_id": "1", "prediction": "oak"}\n{"data_id": "2", \n')
    return ["infoseek", "--references", str(tmp / "references.jsonl"), "--predictions", str(tmp / "predictions.jsonl")]


def _oven_args(tmp: Path, second_prediction: dict) -> list[str]:
    references = [{"data_id": "1", "entity_id": "Q31", "data_split": "query_val_seen"},
                  {"data_id": "2", "entity_id": "Q32", "data_split": "query_val_unseen"}]
    _write(tmp / "references.jsonl", _jsonl(*references))
    _write(tmp / "predictions.jsonl", _jsonl({"data_id": "1", "pred_entity_id": "Q31"}, second_prediction))
    return ["oven", "--references", str(tmp / "references.jsonl"), "--predictions", str(tmp / "predictions.jsonl")]


def oven_prediction_without_entity(tmp: Path) -> list[str]:
    return _oven_args(tmp, {"data_id": "2"})


def oven_prediction_without_id(tmp: Path) -> list[str]:
    return _oven_args(tmp, {"pred_entity_id": "Q32"})


def oven_unknown_id(tmp: Path) -> list[str]:
    return _oven_args(tmp, {"data_id": "3", "pred_entity_id": "Q32"})


def webqa_missing_answer(tmp: Path) -> list[str]:
    data = {"g": {"Q": "q", "A": ['"Red."'], "Qcate": "color", "Keywords_A": "red", "split": "val",
                  "txt_posFacts": [{"snippet_id": "s", "fact": "f"}], "img_posFacts": []}}
    _write(tmp / "webqa.json", json.dumps(data))
    _write(tmp / "predictions.json", json.dumps({"g": {"sources": ["s"]}}))
    return ["webqa", "--data", str(tmp / "webqa.json"), "--predictions", str(tmp / "predictions.json")]


CASES = [
    # knowledge base
    BadInput("KB malformed JSONL", "build_kb", kb_malformed_jsonl, ("{tmp}/kb.jsonl", "line 2", "malformed JSON")),
    BadInput("KB record missing its id", "build_kb", kb_missing_key, ("{tmp}/kb.jsonl", "line 2", "'id'")),
    BadInput("KB record with a wrong type", "build_kb", kb_wrong_type, ("{tmp}/kb.jsonl", "line 2", "'text'")),
    BadInput("KB duplicate id", "build_kb", kb_duplicate_id, ("{tmp}/kb.jsonl", "'a'", "line 1", "line 3")),
    BadInput("KB not UTF-8", "build_kb", kb_not_utf8, ("{tmp}/kb.jsonl", "line 2", "UTF-8")),
    BadInput("KB image path climbing out of the root", "build_kb", kb_image_climbs_out,
             ("{tmp}/kb.jsonl", "line 1", "'../secret.png'")),
    BadInput("KB absolute image path", "build_kb", kb_image_absolute, ("{tmp}/kb.jsonl", "line 1", "absolute")),
    BadInput("WebQA lineidx past the end", "build_kb", webqa_lineidx_past_the_end,
             ("{tmp}/imgs.lineidx", "past the end", "{tmp}/imgs.tsv")),
    BadInput("WebQA image id missing from imgs.lineidx", "build_kb", webqa_image_id_missing,
             ("1 of 12 WebQA image facts", "{tmp}/imgs.tsv", "record 'd00q0000', image fact 30001000",
              "lists only", "data.kb.on_missing=skip")),
    BadInput("WebQA image line truncated", "build_kb", webqa_image_line_truncated,
             ("1 of 12 WebQA image facts", "record 'd00q0000', image fact 30000010", "truncated")),
    BadInput("WebQA image payload not an image", "build_kb", webqa_image_payload_not_an_image,
             ("1 of 12 WebQA image facts", "record 'd00q0000', image fact 30000010", "not an image")),
    # prediction files
    BadInput("predictions with an unknown id", "score", predictions_unknown_id,
             ("{tmp}/predictions.json", "99", "not in the reference data")),
    BadInput("predictions missing an answer", "score", predictions_missing_answer,
             ("{tmp}/predictions.json", "'answer'")),
    BadInput("predictions with a non-string answer", "score", predictions_non_string_answer,
             ("{tmp}/predictions.json", "'answer' must be a string")),
    BadInput("predictions with a duplicate id", "score", predictions_duplicate_id,
             ("{tmp}/predictions.json", "a second prediction for id 1", "one prediction per question")),
    BadInput("predictions not UTF-8", "score", predictions_not_utf8, ("{tmp}/predictions.json", "UTF-8")),
    BadInput("A-OKVQA prediction with a non-string choice", "score", aokvqa_non_string_choice,
             ("{tmp}/predictions.json", "multiple_choice")),
    BadInput("InfoSeek malformed JSONL predictions", "score", infoseek_malformed_jsonl,
             ("{tmp}/predictions.jsonl", "line 2")),
    BadInput("OVEN prediction without its entity", "score", oven_prediction_without_entity,
             ("{tmp}/predictions.jsonl", "line 2", "'pred_entity_id'")),
    BadInput("OVEN prediction without its id", "score", oven_prediction_without_id,
             ("{tmp}/predictions.jsonl", "line 2", "'data_id'")),
    BadInput("OVEN prediction with an unknown id", "score", oven_unknown_id,
             ("{tmp}/predictions.jsonl", "line 2", "'3'", "not in the reference files")),
    BadInput("WebQA prediction missing its answer", "score", webqa_missing_answer,
             ("{tmp}/predictions.json", "'answer'")),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_file_exits_2_with_one_message_and_changes_nothing(case, tmp_path, capsys):
    tmp = tmp_path / "case"
    tmp.mkdir()
    check_bad_input(case, case.build(tmp), tmp, capsys)
