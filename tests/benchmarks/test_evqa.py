"""rablip.benchmarks.evqa: split CSV -> examples with iNaturalist / Landmarks image paths, the predictions
round trip through the registry, and the page-level retrieval recall."""

from __future__ import annotations

import json

import pytest

from rablip.benchmarks import BENCHMARKS, Answer, load_split
from rablip.benchmarks.evqa import load_evqa
from rablip.config.schema import DataConfig, SplitConfig
from rablip.errors import ConfigError, DataError
from tests.evaluation.test_evqa_metric import COLUMNS, write_csv

URL = "https://en.wikipedia.org/wiki/Quercus_robur"
ROWS = [
    {"question": "What is the maximum height of this tree?", "answer": "40 m|forty metres",
     "dataset_image_ids": "100|101", "dataset_name": "inaturalist", "question_type": "templated",
     "wikipedia_url": URL, "evidence_section_id": "2"},
    {"question": "When was this built?", "answer": "1889", "dataset_image_ids": "6c0a7d10e8b2bc90",
     "dataset_name": "landmarks", "question_type": "2_hop",
     "wikipedia_url": "https://en.wikipedia.org/wiki/A|https://en.wikipedia.org/wiki/B", "evidence_section_id": "0|3"},
    {"question": "Which colours?", "answer": "red&&white", "dataset_image_ids": "102",
     "dataset_name": "inaturalist", "question_type": "multi_answer", "wikipedia_url": URL, "evidence_section_id": ""},
]


def inat_annotations(path, images):
    """An iNat 2021-style annotation file: info, images, categories and annotations members."""
    document = {"info": {"year": 2021}, "images": [{"id": i, "file_name": name, "width": 1} for i, name in images],
                "categories": [{"id": 0, "name": "Quercus robur"}],
                "annotations": [{"id": i, "image_id": i, "category_id": 0} for i, _ in images]}
    path.write_text(json.dumps(document, indent=1))
    return path


@pytest.fixture
def split(tmp_path):
    csv_path = write_csv(tmp_path / "val.csv", ROWS)
    inat = tmp_path / "inat"
    for name in ("train/00001_oak/a.jpg", "val/00001_oak/b.jpg", "train/00001_oak/c.jpg"):
        (inat / name).parent.mkdir(parents=True, exist_ok=True)
        (inat / name).write_bytes(b"jpg")
    train = inat_annotations(tmp_path / "train.json", [(100, "train/00001_oak/a.jpg"), (102, "train/00001_oak/c.jpg"),
                                                       (7, "train/x.jpg")])
    val = inat_annotations(tmp_path / "val.json", [(101, "val/00001_oak/b.jpg")])
    landmark = tmp_path / "gldv2" / "6" / "c" / "0" / "6c0a7d10e8b2bc90.jpg"
    landmark.parent.mkdir(parents=True)
    landmark.write_bytes(b"jpg")
    return SplitConfig(path=str(csv_path), inat_root=str(inat), inat_annotations=[str(train), str(val)],
                       landmarks_root=str(tmp_path / "gldv2"))


def test_loads_rows_with_their_images(split, tmp_path):
    examples = load_evqa(split.path, split.inat_root, split.inat_annotations, split.landmarks_root)
    assert [ex.id for ex in examples] == ["0", "1", "2"]
    first, second, third = examples
    assert first.image == str(tmp_path / "inat/train/00001_oak/a.jpg")
    assert first.extra["images"] == [str(tmp_path / "inat/train/00001_oak/a.jpg"),
                                     str(tmp_path / "inat/val/00001_oak/b.jpg")]
    assert first.answers == ["40 m", "forty metres"] and first.question_type == "templated"
    assert first.relevant_ids == [f"{URL}#section=2"]
    assert second.image == str(tmp_path / "gldv2/6/c/0/6c0a7d10e8b2bc90.jpg")
    assert second.relevant_ids == ["https://en.wikipedia.org/wiki/A#section=0", "https://en.wikipedia.org/wiki/B#section=3"]
    assert third.answers == ["red&&white"] and third.relevant_ids is None
    assert third.extra["wikipedia_url"] == URL and "question" not in third.extra


def test_missing_images_and_missing_keys_are_clear_errors(split, tmp_path):
    (tmp_path / "gldv2/6/c/0/6c0a7d10e8b2bc90.jpg").unlink()
    with pytest.raises(DataError, match=r"line 3 \(question_id 1\): image '6c0a7d10e8b2bc90' \(landmarks\) is not at"):
        BENCHMARKS["evqa"].load(split)
    with pytest.raises(DataError, match=r"line 2 \(question_id 0\): iNaturalist image '100' is in none of"):
        load_evqa(split.path, split.inat_root, split.inat_annotations[1:], split.landmarks_root)
    with pytest.raises(ConfigError, match="inat_root and inat_annotations must be set"):
        load_evqa(split.path, "", [], split.landmarks_root)
    with pytest.raises(ConfigError, match="landmarks_root is empty"):
        load_evqa(split.path, split.inat_root, split.inat_annotations, "")
    write_csv(tmp_path / "bad.csv", [{**ROWS[0], "dataset_name": "coco"}])
    with pytest.raises(DataError, match="dataset_name 'coco' is not one of"):
        load_evqa(tmp_path / "bad.csv", split.inat_root, split.inat_annotations, split.landmarks_root)
    write_csv(tmp_path / "short.csv", [ROWS[0]], columns=[c for c in COLUMNS if c != "dataset_name"])
    with pytest.raises(DataError, match="lacks the column\\(s\\) 'dataset_name'"):
        load_evqa(tmp_path / "short.csv", split.inat_root, split.inat_annotations, split.landmarks_root)


def test_inat_annotation_file_without_images(split, tmp_path):
    (tmp_path / "cats.json").write_text(json.dumps({"categories": []}))
    with pytest.raises(DataError, match="has no 'images' array"):
        load_evqa(split.path, split.inat_root, [str(tmp_path / "cats.json")], split.landmarks_root)
    (tmp_path / "broken.json").write_text('{"images": [{"id": 100, "file_name": "a.jpg"},\n {"id": }]}')
    with pytest.raises(DataError, match=r"broken.json: malformed JSON at line 2"):
        load_evqa(split.path, split.inat_root, [str(tmp_path / "broken.json")], split.landmarks_root)


def test_round_trip_through_the_registry(split, tmp_path):
    data = DataConfig(dataset="evqa", val=split)
    examples = load_split(data, "val")
    benchmark = BENCHMARKS["evqa"]
    assert benchmark.is_labelled(split, examples)
    answers = [Answer("0", "Forty metres."), Answer("1", "1900"), Answer("2", "white and red")]
    path = benchmark.write_predictions(benchmark.predictions_file(tmp_path), answers, split)
    assert path == tmp_path / "predictions.jsonl"
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"question_id": 0, "prediction": "Forty metres."}, {"question_id": 1, "prediction": "1900"},
        {"question_id": 2, "prediction": "white and red"}]
    scores = benchmark.score(path, split)
    # single-hop: rows 0 and 2 (row 1 is 2_hop), both right.
    assert benchmark.main_score(scores) == 100.0 and scores["overall"] == pytest.approx(200 / 3)
    assert benchmark.question_scores(split, scores, answers) == {"0": 100.0, "1": 0.0, "2": 100.0}
    assert [benchmark.question_group(ex) for ex in examples] == ["templated", "2_hop", "multi_answer"]


def test_page_recall_counts_any_item_of_the_entity_page(split):
    examples = BENCHMARKS["evqa"].load(split)
    results = {"0": [(f"{URL}#image=4", 0.9), ("other#section=1", 0.5)],
               "1": [("x", 0.9), ("https://en.wikipedia.org/wiki/A#section=7", 0.8)],
               "2": [("y#section=0", 0.9)]}
    scores = BENCHMARKS["evqa"].retrieval_metrics(results, examples, ks=(1, 2))
    assert scores["evqa_page_recall@1"] == pytest.approx(100 / 3)
    assert scores["evqa_page_recall@2"] == pytest.approx(200 / 3)
    # Section-level recall uses the evidence sections: row 0's section 2 and row 1's sections were not retrieved.
    assert scores["recall@2"] == 0.0 and scores["questions"] == 2
