"""Bad Encyclopedic-VQA inputs through the real entry points (``rablip-score evqa``, ``scripts/build_kb.py``):
exit code 2, one ``error:`` line naming the file, the line or key and the field, no traceback, and nothing
that existed before changed. The same rules and machinery as :mod:`tests.reliability.test_bad_inputs`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.reliability.bad_input import BASE_CONFIG, BadInput, check_bad_input
from tests.reliability.bad_input import write_file as _write

HEADER = "question,answer,dataset_image_ids,dataset_name,question_type\n"
GOOD_ROW = "What is it?,oak,1,inaturalist,templated\n"
URL = "https://en.wikipedia.org/wiki/Oak"


def _score_args(tmp: Path, csv_text: str, predictions: str, *extra: str) -> list[str]:
    _write(tmp / "scores.json", '{"kept": true}\n')  # an earlier result that must survive
    return ["evqa", "--data", str(_write(tmp / "val.csv", csv_text)),
            "--predictions", str(_write(tmp / "predictions.jsonl", predictions)),
            "--output", str(tmp / "scores.json"), *extra]


def _prediction(question_id: int, text: str) -> str:
    return json.dumps({"question_id": question_id, "prediction": text}) + "\n"


def csv_row_missing_columns(tmp: Path) -> list[str]:
    return _score_args(tmp, HEADER + GOOD_ROW + "Where?,Paris,2,landmarks\n", _prediction(0, "oak"))


def csv_reference_empty_after_normalisation(tmp: Path) -> list[str]:
    return _score_args(tmp, HEADER + GOOD_ROW + GOOD_ROW.replace("oak", "The.|an"), _prediction(0, "oak"))


def csv_unknown_question_type(tmp: Path) -> list[str]:
    return _score_args(tmp, HEADER + GOOD_ROW.replace("templated", "three_hop"), _prediction(0, "oak"))


def prediction_without_its_id(tmp: Path) -> list[str]:
    return _score_args(tmp, HEADER + GOOD_ROW * 2, _prediction(0, "oak") + json.dumps({"prediction": "elm"}) + "\n")


def prediction_with_a_non_integer_id(tmp: Path) -> list[str]:
    return _score_args(tmp, HEADER + GOOD_ROW, json.dumps({"question_id": "row-0", "prediction": "oak"}) + "\n")


def bem_checkpoint_missing(tmp: Path) -> list[str]:
    return _score_args(tmp, HEADER + GOOD_ROW, _prediction(0, "elm"), "--bem", str(tmp / "no_bem"))


def _kb_args(tmp: Path, content: str) -> list[str]:
    path = _write(tmp / "kb.json", content)
    return ["--config", BASE_CONFIG, "data.kb.format=evqa_wiki", f"data.kb.path={path}",
            f"data.kb.store_dir={tmp / 'store'}"]


def kb_section_lists_differ(tmp: Path) -> list[str]:
    page = {"title": "Oak", "section_titles": ["Oak", "Leaves"], "section_texts": ["An oak is a tree."], "url": URL}
    return _kb_args(tmp, json.dumps({URL: page}, indent=1))


def kb_malformed_json(tmp: Path) -> list[str]:
    page = {"title": "Oak", "section_titles": ["Oak"], "section_texts": ["An oak is a tree."]}
    return _kb_args(tmp, json.dumps({URL: page}, indent=1)[:-1] + ',\n "x": }')


CASES = [
    BadInput("E-VQA CSV row with missing columns", "score", csv_row_missing_columns,
             ("{tmp}/val.csv", "line 3", "question_id 1", "column 'question_type' is missing")),
    BadInput("E-VQA reference answer that normalises to empty", "score", csv_reference_empty_after_normalisation,
             ("{tmp}/val.csv", "line 3", "question_id 1", "field 'answer'", "'The.'", "empty")),
    BadInput("E-VQA unknown question type", "score", csv_unknown_question_type,
             ("{tmp}/val.csv", "line 2", "question_type 'three_hop'", "templated, automatic, multi_answer, 2_hop")),
    BadInput("E-VQA prediction without its id", "score", prediction_without_its_id,
             ("{tmp}/predictions.jsonl", "line 2", "missing required key 'question_id'")),
    BadInput("E-VQA prediction with a non-integer id", "score", prediction_with_a_non_integer_id,
             ("{tmp}/predictions.jsonl", "line 1", "'question_id' must be the 0-based row")),
    BadInput("E-VQA BEM checkpoint missing", "score", bem_checkpoint_missing,
             ("{tmp}/no_bem", "not a directory", "transformers checkpoint directory")),
    BadInput("E-VQA KB page whose section lists differ in length", "build_kb", kb_section_lists_differ,
             ("{tmp}/kb.json", f"page '{URL}'", "'section_texts' has 1 entries but 'section_titles' has 2")),
    BadInput("E-VQA KB malformed JSON", "build_kb", kb_malformed_json,
             ("{tmp}/kb.json", "malformed JSON at line 12, column 7", "Expecting value")),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_evqa_input_exits_2_with_one_message_and_changes_nothing(case, tmp_path, capsys):
    tmp = tmp_path / "case"
    tmp.mkdir()
    check_bad_input(case, case.build(tmp), tmp, capsys)
