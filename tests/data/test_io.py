"""rablip.utils.io: JSON/JSONL reading with positioned errors, atomic writes, key checks."""

import json
import os

import pytest

from rablip.errors import DataError
from rablip.utils.io import (
    atomic_write_json,
    atomic_write_text,
    iter_jsonl_with_lines,
    read_json,
    read_jsonl,
    require_keys,
)


def test_read_json_round_trip_and_bom(tmp_path):
    path = tmp_path / "a.json"
    atomic_write_json(path, {"questions": [{"question": "héllo"}]})
    assert read_json(path) == {"questions": [{"question": "héllo"}]}
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([1, 2]).encode())
    assert read_json(path) == [1, 2]


def test_malformed_json_names_file_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "a": 1,\n  "b": ,\n}\n', encoding="utf-8")
    with pytest.raises(DataError) as caught:
        read_json(path, what="questions file")
    message = str(caught.value)
    assert "questions file" in message and str(path) in message
    assert "line 3, column 8" in message


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_json(tmp_path / "absent.json")
    with pytest.raises(DataError, match="not found"):
        read_jsonl(tmp_path / "absent.jsonl")


def test_non_utf8_json_names_the_line(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('{\n"q": "caf\u00e9"\n}'.encode("latin-1"))
    with pytest.raises(DataError, match=r"not valid UTF-8 at line 2") as caught:
        read_json(path)
    assert str(path) in str(caught.value)


def test_jsonl_streams_with_line_numbers_and_skips_blank_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n', encoding="utf-8")
    assert list(iter_jsonl_with_lines(path)) == [(1, {"a": 1}), (3, {"a": 2})]
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]


def test_jsonl_malformed_and_non_utf8_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"r\.jsonl: malformed JSON on line 3"):
        read_jsonl(path)
    path.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
    with pytest.raises(DataError, match=r"not valid UTF-8 at line 2"):
        read_jsonl(path)


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    atomic_write_text(path, "first")
    atomic_write_text(path, "second")
    assert path.read_text() == "second"
    assert os.listdir(path.parent) == ["out.txt"]


def test_atomic_write_gives_plain_file_permissions(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic = tmp_path / "atomic.txt"
    atomic_write_text(atomic, "x")
    assert atomic.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    os.chmod(atomic, 0o640)
    atomic_write_text(atomic, "y")
    assert atomic.stat().st_mode & 0o777 == 0o640


def test_atomic_write_failure_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "out.json"
    atomic_write_json(path, {"ok": True})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})
    assert read_json(path) == {"ok": True}

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new content")
    monkeypatch.undo()
    assert read_json(path) == {"ok": True}
    assert os.listdir(tmp_path) == ["out.json"]


def test_require_keys_names_place_key_and_type():
    where = "annotations file a.json, record 4"
    require_keys({"question_id": 1, "answers": []}, {"question_id": int, "answers": list}, where)
    require_keys({"x": None}, ["x"], where)
    with pytest.raises(DataError, match=r"a\.json, record 4: missing required key 'answers'"):
        require_keys({"question_id": 1}, {"question_id": int, "answers": list}, where)
    with pytest.raises(DataError, match=r"record 4: key 'question_id' should be an integer, got str"):
        require_keys({"question_id": "1"}, {"question_id": int}, where)
    with pytest.raises(DataError, match="should be an integer, got bool"):
        require_keys({"question_id": True}, {"question_id": int}, where)
    with pytest.raises(DataError, match="expected a JSON object, got list"):
        require_keys([1, 2], ["question_id"], where)
