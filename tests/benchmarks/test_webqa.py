"""rablip.benchmarks.webqa (questions) and rablip.data.webqa (facts, imgs.tsv + imgs.lineidx images)."""

import base64
import json
import pickle

import pytest

from rablip.benchmarks.webqa import load_webqa
from rablip.data.images import load_image
from rablip.data.webqa import ImageTSV, load_webqa_kb
from rablip.errors import DataError
from tests.data.image_fixtures import encoded_image

COLOURS = [(250, 0, 0), (0, 250, 0), (0, 0, 250)]
IMAGE_IDS = [30000000, 30000001, 30000002]


def _write_tsv(tmp_path, lines=None):
    """imgs.tsv (id, tab, base64) and imgs.lineidx (byte offset of each line)."""
    if lines is None:
        lines = [
            f"{image_id}\t{base64.b64encode(encoded_image_colour(colour)).decode()}\n".encode()
            for image_id, colour in zip(IMAGE_IDS, COLOURS, strict=True)
        ]
    tsv, lineidx = tmp_path / "imgs.tsv", tmp_path / "imgs.lineidx"
    offsets, position = [], 0
    for line in lines:
        offsets.append(position)
        position += len(line)
    tsv.write_bytes(b"".join(lines))
    lineidx.write_text("".join(f"{offset}\n" for offset in offsets))
    return tsv, lineidx


def encoded_image_colour(colour):
    return encoded_image((8, 8), colour, fmt="PNG")


def _text_fact(snippet_id, fact):
    return {
        "fact": fact,
        "url": "https://en.wikipedia.org/wiki/X",
        "snippet_id": snippet_id,
        "title": f"title {snippet_id}",
    }


def _image_fact(image_id, caption):
    return {"image_id": image_id, "title": f"img {image_id}", "caption": caption, "url": "u", "imgUrl": "iu"}


def _train_val():
    return {
        "d5bbc6d80dba11ecb1e81171463288e9": {
            "Q": '"What color is the roof of the Hagia Sophia?"',
            "A": ['"The roof of the Hagia Sophia is grey."'],
            "topic": "buildings",
            "split": "train",
            "Qcate": "color",
            "Guid": "d5bbc6d80dba11ecb1e81171463288e9",
            "Keywords_A": "grey",
            "txt_posFacts": [],
            "txt_negFacts": [_text_fact("t-neg-1", "Istanbul is a city.")],
            "img_posFacts": [_image_fact(30000000, "Hagia Sophia roof")],
            "img_negFacts": [_image_fact(30000001, "Blue Mosque")],
        },
        "guid-2": {
            "Q": '"Who built the Blue Mosque?"',
            "A": ['"Sultan Ahmed I built it."'],
            "topic": "history",
            "split": "val",
            "Qcate": "text",
            "Guid": "guid-2",
            "Keywords_A": "Sultan Ahmed I",
            "txt_posFacts": [_text_fact("t-pos-2", "Sultan Ahmed I commissioned the mosque.")],
            "txt_negFacts": [_text_fact("t-neg-1", "Istanbul is a city.")],
            "img_posFacts": [],
            "img_negFacts": [_image_fact(30000001, "Blue Mosque"), _image_fact(30000002, "Dome")],
        },
    }


def _test_file():
    return {
        "guid-t": {
            "Q": '"How many minarets does the Blue Mosque have?"',
            "Qcate": "number",
            "split": "test",
            "txt_Facts": [_text_fact("t-test", "The mosque has six minarets.")],
            "img_Facts": [_image_fact(30000002, "Dome")],
        }
    }


def _write_json(tmp_path, document, name="WebQA_train_val.json"):
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return path


def test_image_tsv_random_access(tmp_path):
    tsv, lineidx = _write_tsv(tmp_path)
    with ImageTSV(tsv, lineidx) as images:
        assert len(images) == 3 and 30000002 in images and 30000003 not in images
        for image_id, colour in reversed(list(zip(IMAGE_IDS, COLOURS, strict=True))):
            assert load_image(images.get(image_id)).getpixel((0, 0)) == colour
        assert images[str(IMAGE_IDS[1])] == encoded_image_colour(COLOURS[1])
        copy = pickle.loads(pickle.dumps(images))  # what a spawned data-loader worker receives
        assert copy.get(IMAGE_IDS[0]) == images.get(IMAGE_IDS[0])
        copy.close()


def test_image_tsv_two_column_lineidx(tmp_path):
    tsv, lineidx = _write_tsv(tmp_path)
    offsets = lineidx.read_text().split()
    new_index = tmp_path / "imgs.lineidx.new"
    new_index.write_text("".join(f"{i}\t{o}\n" for i, o in zip(IMAGE_IDS, offsets, strict=True)))
    with ImageTSV(tsv, new_index) as images:
        assert load_image(images.get(30000001)).getpixel((0, 0)) == COLOURS[1]
        with pytest.raises(DataError, match="not listed"):
            images.get(30000007)


def test_lineidx_past_end_of_tsv(tmp_path):
    tsv, lineidx = _write_tsv(tmp_path)
    lineidx.write_text(lineidx.read_text() + f"{tsv.stat().st_size + 100}\n")
    with ImageTSV(tsv, lineidx) as images:
        with pytest.raises(
            DataError, match=r"imgs\.tsv, line 4 \(byte offset \d+\), image id 30000003: .*past the end"
        ):
            images.get(30000003)


def test_truncated_and_garbled_lines(tmp_path):
    good = f"30000000\t{base64.b64encode(encoded_image(fmt='PNG')).decode()}\n"
    cut = f"30000001\t{base64.b64encode(encoded_image(fmt='PNG')).decode()}"[:-3]
    tsv, lineidx = _write_tsv(tmp_path, [good.encode(), b"30000001 no tab here\n"])
    with ImageTSV(tsv, lineidx) as images:
        assert images.get(30000000)
        with pytest.raises(DataError, match=r"line 2 .*image id 30000001: expected 'image_id<TAB>base64'"):
            images.get(30000001)
    tsv, lineidx = _write_tsv(tmp_path, [good.encode(), cut.encode()])
    with ImageTSV(tsv, lineidx) as images:
        with pytest.raises(DataError, match=r"imgs\.tsv, line 2 .*image id 30000001: invalid base64"):
            images.get(30000001)


def test_lineidx_out_of_sync(tmp_path):
    tsv, lineidx = _write_tsv(tmp_path)
    offsets = lineidx.read_text().split()
    lineidx.write_text(f"{offsets[1]}\n{offsets[0]}\n")
    with ImageTSV(tsv, lineidx) as images:
        with pytest.raises(DataError, match="holds image id b'30000001', not 30000000"):
            images.get(30000000)
    lineidx.write_text("0\nabc\n")
    with pytest.raises(DataError, match=r"imgs\.lineidx, line 2: expected one byte offset"):
        ImageTSV(tsv, lineidx)


def test_load_webqa_relevance_labels(tmp_path):
    path = _write_json(tmp_path, _train_val())
    examples = load_webqa(path)
    assert [example.id for example in examples] == ["d5bbc6d80dba11ecb1e81171463288e9", "guid-2"]
    first, second = examples
    assert first.question == "What color is the roof of the Hagia Sophia?"
    assert first.answers == ["The roof of the Hagia Sophia is grey."]
    assert first.extra["raw_question"] == '"What color is the roof of the Hagia Sophia?"'
    assert first.image is None
    assert first.question_type == "color"
    assert first.relevant_ids == ["30000000"]
    assert first.extra["negative_ids"] == ["t-neg-1", "30000001"]
    assert first.extra["Keywords_A"] == "grey" and first.extra["split"] == "train"
    assert "txt_posFacts" not in first.extra
    assert second.relevant_ids == ["t-pos-2"]
    assert second.extra["negative_ids"] == ["t-neg-1", "30000001", "30000002"]
    assert [example.id for example in load_webqa(path, split="val")] == ["guid-2"]


def test_load_webqa_test_file_without_answers(tmp_path):
    path = _write_json(tmp_path, _test_file(), name="WebQA_test.json")
    (example,) = load_webqa(path)
    assert example.answers == [] and example.relevant_ids is None
    assert example.extra["candidate_ids"] == ["t-test", "30000002"]
    assert example.question_type == "number"


def test_knowledge_base_items_once_each(tmp_path):
    path = _write_json(tmp_path, _train_val())
    items = list(load_webqa_kb(path))
    assert [item.id for item in items] == ["30000000", "t-neg-1", "30000001", "t-pos-2", "30000002"]
    text_item = items[1]
    assert (text_item.modality, text_item.text, text_item.title) == (
        "text",
        "Istanbul is a city.",
        "title t-neg-1",
    )
    image_item = items[0]
    assert (image_item.modality, image_item.text, image_item.image) == (
        "image+text",
        "Hagia Sophia roof",
        "30000000",
    )
    tsv, lineidx = _write_tsv(tmp_path)
    with ImageTSV(tsv, lineidx) as images:
        with_bytes = {item.id: item for item in load_webqa_kb(path, images)}
    assert load_image(with_bytes["30000002"].image).getpixel((0, 0)) == COLOURS[2]
    assert with_bytes["t-pos-2"].image is None
    test_items = list(load_webqa_kb(_write_json(tmp_path, _test_file(), name="WebQA_test.json")))
    assert [item.id for item in test_items] == ["t-test", "30000002"]


def test_bad_webqa_records(tmp_path):
    document = _train_val()
    del document["guid-2"]["img_negFacts"][1]["caption"]
    path = _write_json(tmp_path, document)
    with pytest.raises(
        DataError, match=r"record 'guid-2', img_negFacts\[1\]: missing required key 'caption'"
    ):
        load_webqa(path)
    with pytest.raises(DataError, match="missing required key 'caption'"):
        list(load_webqa_kb(path))
    document = _train_val()
    del document["guid-2"]["Q"]
    with pytest.raises(DataError, match=r"record 'guid-2': missing required key 'Q'"):
        load_webqa(_write_json(tmp_path, document))
    test_path = _write_json(tmp_path, {"g": {"Q": "q", "txt_Facts": []}}, name="WebQA_test.json")
    with pytest.raises(DataError, match="no 'split' key"):
        load_webqa(test_path, split="test")
    with pytest.raises(DataError, match="keyed by Guid"):
        load_webqa(_write_json(tmp_path, [1, 2]))
