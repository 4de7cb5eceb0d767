"""rablip.data.kb_sources: the generic KB JSONL and WIT-style TSV readers."""

import base64
import csv
import gzip
import itertools
import json

import pytest

from rablip.data.images import load_image
from rablip.data.kb_sources import TsvColumns, iter_kb_jsonl, iter_kb_tsv
from rablip.errors import DataError
from tests.data.image_fixtures import encoded_image


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_jsonl_modalities_and_streaming(tmp_path):
    png = encoded_image(fmt="PNG")
    path = _write_jsonl(
        tmp_path / "kb.jsonl",
        [
            {"id": "a", "text": "Mount Fuji is a volcano.", "title": "Mount Fuji", "image": "imgs/fuji.jpg"},
            {"id": 7, "image": "imgs/seven.jpg"},
            {"id": "c", "text": "Plain text passage.", "title": "Passage"},
            {"id": "d", "text": "inline", "image_base64": base64.b64encode(png).decode(), "source": "wiki"},
        ],
    )
    items = iter_kb_jsonl(path)
    first = next(items)  # a generator: items come one at a time
    assert (first.id, first.modality, first.image, first.title) == (
        "a",
        "image+text",
        "imgs/fuji.jpg",
        "Mount Fuji",
    )
    rest = list(items)
    assert [(item.id, item.modality) for item in rest] == [("7", "image"), ("c", "text"), ("d", "image+text")]
    assert rest[1].image is None and rest[0].source == "kb.jsonl"
    assert rest[2].image == png and rest[2].source == "wiki"
    assert load_image(rest[2].image).size == (16, 12)


def test_jsonl_duplicate_ids_name_both_lines(tmp_path):
    path = _write_jsonl(
        tmp_path / "kb.jsonl", [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}, {"id": "a", "text": "z"}]
    )
    with pytest.raises(DataError, match=r"kb\.jsonl, line 3: duplicate id 'a', first on line 1"):
        list(iter_kb_jsonl(path))


def test_jsonl_bad_records(tmp_path):
    cases = [
        ({"text": "no id"}, "missing required key 'id'"),
        ({"id": "e"}, "neither text nor an image"),
        ({"id": "e", "image": "a.jpg", "image_base64": "AAAA"}, "not both"),
        ({"id": "e", "image_base64": "@@@"}, "not valid base64"),
        ({"id": "e", "text": 3}, "key 'text' should be a string"),
        ({"id": "e", "text": "t", "modality": "image"}, "fields make it 'text'"),
        ({"id": "e", "image": "../outside.jpg"}, "climbs out"),
        ({"id": "e", "image": "/etc/passwd"}, "absolute"),
    ]
    for record, message in cases:
        path = _write_jsonl(tmp_path / "kb.jsonl", [{"id": "ok", "text": "fine"}, record])
        with pytest.raises(DataError, match=message) as caught:
            list(iter_kb_jsonl(path))
        assert "kb.jsonl, line 2" in str(caught.value)


def test_jsonl_image_escaping_the_kb_root_via_symlink(tmp_path):
    root = tmp_path / "kb"
    root.mkdir()
    (tmp_path / "private").mkdir()
    (root / "shortcut").symlink_to(tmp_path / "private")
    path = _write_jsonl(tmp_path / "kb.jsonl", [{"id": "a", "image": "shortcut/x.jpg"}])
    assert next(iter_kb_jsonl(path)).image == "shortcut/x.jpg"  # lexically fine without a root
    with pytest.raises(
        DataError, match=r"line 1: image path 'shortcut/x.jpg' resolves to .* outside the root"
    ):
        list(iter_kb_jsonl(path, kb_root=root))


def _write_wit_tsv(
    path, rows, header=("language", "page_url", "image_url", "page_title", "context_page_description")
):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return path


WIT_ROWS = [
    (
        "en",
        "https://en.wikipedia.org/wiki/Fuji",
        "https://upload.wikimedia.org/fuji.jpg",
        "Mount Fuji",
        "A volcano.\tWith a tab",
    ),
    ("en", "https://en.wikipedia.org/wiki/Text", "", "Only Text", 'Quoted "words" here'),
    ("fr", "https://fr.wikipedia.org/wiki/Img", "local/img.jpg", "Image", ""),
]


def test_wit_tsv_default_columns(tmp_path):
    for name in ("wit.tsv", "wit.tsv.gz"):
        path = _write_wit_tsv(tmp_path / name, WIT_ROWS)
        items = list(iter_kb_tsv(path))
        assert [(item.id, item.modality) for item in items] == [
            ("wit-0", "image+text"),
            ("wit-1", "text"),
            ("wit-2", "image"),
        ]
        assert (
            items[0].text == "A volcano.\tWith a tab"
            and items[0].image == "https://upload.wikimedia.org/fuji.jpg"
        )
        assert items[1].text == 'Quoted "words" here' and items[1].title == "Only Text"
        assert items[2].image == "local/img.jpg" and items[0].source == name


def test_wit_tsv_custom_mapping_without_header(tmp_path):
    path = _write_wit_tsv(tmp_path / "kb.tsv", WIT_ROWS, header=None)
    columns = TsvColumns(id=1, title=3, text=4, image=None)
    items = list(itertools.islice(iter_kb_tsv(path, columns, has_header=False), 2))
    assert [item.id for item in items] == [
        "https://en.wikipedia.org/wiki/Fuji",
        "https://en.wikipedia.org/wiki/Text",
    ]
    assert all(item.image is None for item in items)
    with pytest.raises(DataError, match=r"kb\.tsv, line 3: row has neither text nor an image"):
        list(iter_kb_tsv(path, columns, has_header=False))


def test_wit_tsv_errors(tmp_path):
    path = _write_wit_tsv(tmp_path / "kb.tsv", WIT_ROWS)
    with pytest.raises(DataError, match="no column 'caption'"):
        list(iter_kb_tsv(path, TsvColumns(text="caption")))
    with pytest.raises(DataError, match=r"line 3: duplicate id 'en', first on line 2"):
        list(iter_kb_tsv(path, TsvColumns(id="language")))
    short = _write_wit_tsv(tmp_path / "short.tsv", [WIT_ROWS[0], ("en", "x")])
    with pytest.raises(DataError, match=r"short\.tsv, line 3: 2 column\(s\)"):
        list(iter_kb_tsv(short))
    bad_bytes = tmp_path / "latin.tsv"
    bad_bytes.write_bytes("page_title\tcontext_page_description\nCaf\u00e9\tx\n".encode("latin-1"))
    with pytest.raises(DataError, match="not valid UTF-8"):
        list(iter_kb_tsv(bad_bytes, TsvColumns(image=None)))
    escaping = _write_wit_tsv(tmp_path / "esc.tsv", [("en", "u", "../../etc/x.jpg", "t", "d")])
    with pytest.raises(DataError, match=r"esc\.tsv, line 2: .*climbs out"):
        list(iter_kb_tsv(escaping))
