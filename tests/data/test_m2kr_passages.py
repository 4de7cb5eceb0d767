"""M2KR's passage corpora as knowledge bases (``data.kb.format=m2kr_parquet``): a parquet file with the
columns of the dataset card's ``*_passages`` configs is streamed into the KB store in record batches; a
file without the required columns, or a row without an id or text, is refused with a message naming the
file (scripts/build_kb.py: exit code 2, no store written). A generated file stands in for the real one."""

from __future__ import annotations

import runpy
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rablip.config import load_config
from rablip.config.schema import KBConfig
from rablip.data.kb import KBStore
from rablip.data.kb_build import build_kb_from_config
from rablip.data.m2kr_passages import count_passages, iter_m2kr_passages
from rablip.errors import DataError

ROOT = Path(__file__).resolve().parents[2]

OKVQA_ROWS = {  # OKVQA_passages / Infoseek_passages: passage_id, passage_content, title
    "passage_id": [f"okvqa_{i}" for i in range(7)],
    "passage_content": [f"Passage {i} about things." for i in range(7)],
    "title": [f"Title {i}" if i % 3 else None for i in range(7)],
}
EVQA_ROWS = {  # EVQA_passages / OVEN_passages: language, passage_id, passage_content
    "language": ["en", "en"], "passage_id": ["evqa_0", "evqa_1"],
    "passage_content": ["Dwarf cornel grows 20 cm tall.", "A second passage."],
}


def write_parquet(path: Path, columns: dict, row_group_size: int = 3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def test_okvqa_passages_stream_into_the_store_as_text_items_with_their_titles(tmp_path, monkeypatch):
    path = write_parquet(tmp_path / "OKVQA_passages" / "train_passages-00000-of-00001.parquet", OKVQA_ROWS)

    def whole(*args, **kwargs):
        raise AssertionError("the passages are read in record batches, never as one table")

    monkeypatch.setattr(pq.ParquetFile, "read", whole)
    monkeypatch.setattr(pq, "read_table", whole)
    assert count_passages(path) == 7
    items = list(iter_m2kr_passages(path, batch_rows=2))
    assert [item.id for item in items] == OKVQA_ROWS["passage_id"]
    assert items[1].text == "Passage 1 about things." and items[1].title == "Title 1" and items[0].title == ""
    assert {item.modality for item in items} == {"text"} and items[0].source == path.name

    cfg = KBConfig(format="m2kr_parquet", path=str(path), store_dir=str(tmp_path / "store"))
    store = KBStore.open(build_kb_from_config(cfg, show_progress=False))
    assert len(store) == 7 and store["okvqa_4"].text == "Passage 4 about things." and store["okvqa_4"].title == "Title 4"
    assert store["okvqa_4"].modality == "text" and store["okvqa_4"].image is None


def test_configs_without_title_and_wit_page_titles_and_extra_split_files(tmp_path):
    evqa = write_parquet(tmp_path / "evqa.parquet", EVQA_ROWS)
    wit = write_parquet(tmp_path / "wit.parquet", {"page_title": ["Zorb"], "image_url": ["http://x/y.jpg"],
                                                   "passage_id": [7], "passage_content": ["The zorb eats moss."]})
    cfg = KBConfig(format="m2kr_parquet", path=str(evqa), extra_paths=[str(wit)], store_dir=str(tmp_path / "store"))
    store = KBStore.open(build_kb_from_config(cfg, show_progress=False))
    assert len(store) == 3 and store["evqa_1"].title == "" and store["7"].title == "Zorb"


@pytest.mark.parametrize("columns, message", [
    ({"passage_id": ["a"], "text": ["no passage_content column"]}, r"no column 'passage_content'.*columns are"),
    ({"passage_id": ["a", None], "passage_content": ["x", "y"]}, r"row 1: 'passage_id' is empty"),
    ({"passage_id": ["a", "b"], "passage_content": ["x", " "]}, r"row 1: passage 'b' has an empty 'passage_content'"),
    ({"passage_id": ["a"], "passage_content": [["x"]]}, r"row 0: 'passage_content' is a list"),
])
def test_bad_columns_or_rows_are_data_errors_naming_the_file(tmp_path, columns, message):
    path = write_parquet(tmp_path / "bad.parquet", columns)
    with pytest.raises(DataError, match=message) as error:
        list(iter_m2kr_passages(path))
    assert str(path) in str(error.value)


def test_a_file_that_is_not_parquet_is_a_data_error(tmp_path):
    (tmp_path / "x.parquet").write_text("passage_id,passage_content\n")
    with pytest.raises(DataError, match="not a readable parquet file"):
        list(iter_m2kr_passages(tmp_path / "x.parquet"))
    with pytest.raises(DataError, match="not found"):
        count_passages(tmp_path / "missing.parquet")


def test_build_kb_script_exits_2_on_a_missing_column_and_writes_nothing(tmp_path, capsys):
    bad = write_parquet(tmp_path / "bad.parquet", {"passage_id": ["a"], "content": ["x"]})
    config = tmp_path / "kb.yaml"
    config.write_text(f"data:\n  kb:\n    format: m2kr_parquet\n    path: {bad}\n    store_dir: {tmp_path / 'store'}\n")
    script = runpy.run_path(str(ROOT / "scripts" / "build_kb.py"), run_name="build_kb")
    with pytest.raises(SystemExit) as exit_info:
        script["run_main"](script["main"], ["--config", str(config)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert err.startswith("error: M2KR passages file") and "no column 'passage_content'" in err
    assert not (tmp_path / "store").exists()

    good = write_parquet(tmp_path / "good.parquet", OKVQA_ROWS)
    assert script["main"](["--config", str(config), f"data.kb.path={good}"]) == 0
    assert "7 items" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["okvqa", "aokvqa"])
def test_okvqa_and_aokvqa_configs_use_the_okvqa_passages_of_m2kr(name):
    cfg = load_config(str(ROOT / "configs" / "data" / f"{name}.yaml"), [])
    assert cfg.data.kb.format == "m2kr_parquet"
    assert cfg.data.kb.path.endswith("m2kr/OKVQA_passages/train_passages-00000-of-00001.parquet")
