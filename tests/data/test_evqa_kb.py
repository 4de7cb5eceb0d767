"""Encyclopedic-VQA's knowledge base as store items (rablip.data.evqa_kb) and the streaming JSON reader under
it (rablip.utils.json_stream): pages are read one at a time, with clear errors for bad pages."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import pytest

from rablip.data.evqa_kb import iter_evqa_wiki, page_url, read_image_map
from rablip.data.kb import KBStore
from rablip.data.kb_build import build_kb_from_config
from rablip.errors import DataError
from rablip.utils.json_stream import JsonStream

OAK = "https://en.wikipedia.org/wiki/Quercus_robur"
FOX = "https://en.wikipedia.org/wiki/Red_fox"
PAGES = {
    OAK: {"title": "Quercus robur", "section_titles": ["Quercus robur", "Description", "Empty"],
          "section_texts": ["Quercus robur is a species of oak.", "It grows to 40 m.", " "],
          "image_urls": ["https://upload.wikimedia.org/oak.jpg", "//upload.wikimedia.org/leaf.jpg",
                         "https://upload.wikimedia.org/bark.jpg", ""],
          "image_reference_descriptions": ["An oak", "", "Bark", "dropped: no URL"],
          "image_section_indices": [1, 1, 2, 0], "url": OAK},
    FOX: {"title": "Red fox", "section_titles": ["Red fox"], "section_texts": ["The red fox \u00e9 \"quoted\"."],
          "url": FOX},
}


def write_kb(path, pages, indent=None):
    path.write_text(json.dumps(pages, indent=indent, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 5, 7, 64, 1 << 20])
def test_stream_reads_what_json_loads_reads(chunk):
    # Numbers cut by a chunk boundary ("1." + "25") must not be decoded early.
    document = {"f": [1.25, 2.5e3, -0.125, 123456.75, -7], "a": [1, True, None, "x\\y\u2603"],
                "bb": {"n": 123456789, "s": "\"]}" * 5}, "images": [{"id": i, "file_name": f"{i}.jpg"} for i in range(20)], "z": 10}
    for text in (json.dumps(document), json.dumps(document, indent=2)):
        stream = JsonStream(io.StringIO(text), "doc.json", "test file", chunk_chars=chunk)
        read = {}
        for key in stream.members():
            read[key] = list(stream.elements()) if key == "images" else stream.value()
        stream.finish()
        assert read == document


@pytest.mark.parametrize("text, where", [
    ('{"a": 1,\n "b": [1, 2,]}', "line 2, column 13"),
    ('{"a": 1\n "b": 2}', "expected ',' or '}'"),
    ('{"a": 1} x', "extra data"),
    ('{"a": [1, 2', "expected ',' or ']'"),
    ('{"a": "unterminated', "Unterminated string"),
    ("[1]", "expected '{'"),
])
def test_stream_errors_name_the_position(text, where):
    stream = JsonStream(io.StringIO(text), "doc.json", "test file", chunk_chars=4)
    with pytest.raises(DataError, match="test file doc.json: malformed JSON at") as error:
        for _key in stream.members():
            list(stream.elements()) if stream.peek() == "[" else stream.value()
        stream.finish()
    assert where in str(error.value)


def test_items_one_per_section_with_text_and_one_per_image(tmp_path):
    items = list(iter_evqa_wiki([write_kb(tmp_path / "kb.json", PAGES, indent=2)]))
    by_id = {item.id: item for item in items}
    assert [item.id for item in items] == [
        f"{OAK}#section=0", f"{OAK}#section=1", f"{OAK}#image=0", f"{OAK}#image=1", f"{OAK}#image=2",
        f"{FOX}#section=0"]
    intro, description = by_id[f"{OAK}#section=0"], by_id[f"{OAK}#section=1"]
    # Section 0's title is the page title: not repeated; others are prefixed with their section title.
    assert (intro.modality, intro.text, intro.title, intro.image) == (
        "text", "Quercus robur is a species of oak.", "Quercus robur", None)
    assert description.text == "Description: It grows to 40 m."
    assert (description.modality, description.image) == ("image+text", "https://upload.wikimedia.org/oak.jpg")
    leaf = by_id[f"{OAK}#image=1"]
    assert (leaf.modality, leaf.image, leaf.text) == ("image", "https://upload.wikimedia.org/leaf.jpg", "")
    assert by_id[f"{OAK}#image=2"].text == "Bark" and by_id[f"{FOX}#section=0"].text == 'The red fox é "quoted".'
    assert {page_url(item.id) for item in items} == {OAK, FOX}
    assert page_url("plain-id") == "plain-id"


def _kb_cfg(tmp_path, **changes):
    return SimpleNamespace(**{"format": "evqa_wiki", "path": str(write_kb(tmp_path / "kb.json", PAGES)), "root": "",
                              "store_dir": str(tmp_path / "store"), "extra_paths": [], "webqa_images_tsv": "",
                              "evqa_image_map": "", **changes})


def test_store_built_from_the_config_section(tmp_path):
    store = KBStore.open(build_kb_from_config(_kb_cfg(tmp_path), show_progress=False))
    assert len(store) == 6
    assert store[f"{OAK}#image=0"].text == "An oak" and store[f"{FOX}#section=0"].title == "Red fox"


def test_image_map_gives_local_paths_and_leaves_unmapped_images_out(tmp_path):
    root = tmp_path / "kb_root"
    (root / "images").mkdir(parents=True)
    (root / "images" / "bark.jpg").write_bytes(b"jpg")
    image_map = tmp_path / "map.tsv"
    image_map.write_text("https://upload.wikimedia.org/bark.jpg\timages/bark.jpg\n\nhttps://other/x.jpg\tx.jpg\n")
    store = KBStore.open(build_kb_from_config(
        _kb_cfg(tmp_path, root=str(root), evqa_image_map=str(image_map)), show_progress=False), root=root)
    assert sorted(store.ids()) == sorted([f"{OAK}#section=0", f"{OAK}#section=1", f"{OAK}#image=2", f"{FOX}#section=0"])
    # Section 1 lost its (unmapped) images: a text item now; image 2 keeps its index in the id.
    assert store[f"{OAK}#section=1"].modality == "text"
    assert store.image_of(store[f"{OAK}#image=2"]) == (root / "images" / "bark.jpg").resolve()
    image_map.write_text("")
    items = list(iter_evqa_wiki([tmp_path / "kb.json"], image_map=read_image_map(image_map)))
    assert {item.modality for item in items} == {"text"} and len(items) == 3
    image_map.write_text("https://a/b.jpg images/b.jpg\n")
    with pytest.raises(DataError, match=r"image map .*map.tsv, line 1: expected 'image URL<TAB>path'"):
        read_image_map(image_map)


@pytest.mark.parametrize("change, message", [
    ({"section_texts": ["only one"]}, "field 'section_texts' has 1 entries but 'section_titles' has 3"),
    ({"image_section_indices": [1, 1]}, "field 'image_section_indices' has 2 entries but 'image_urls' has 4"),
    ({"image_section_indices": [1, 1, 3, 0]}, "field 'image_section_indices'[2] is 3, not a section index"),
    ({"image_urls": ["oak.jpg", "", "", ""]}, "field 'image_urls'[0] 'oak.jpg' is not a URL"),
    ({"section_titles": "Quercus"}, "field 'section_titles' should be a list"),
    ({"title": None}, "field 'title' should be a string"),
])
def test_bad_pages_name_the_file_page_and_field(tmp_path, change, message):
    path = write_kb(tmp_path / "kb.json", {FOX: PAGES[FOX], OAK: {**PAGES[OAK], **change}})
    with pytest.raises(DataError) as error:
        list(iter_evqa_wiki([path]))
    assert f"Encyclopedic-VQA knowledge base {path}, page '{OAK}'" in str(error.value)
    assert message in str(error.value)
