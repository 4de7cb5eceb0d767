"""rablip.benchmarks.aokvqa: the official aokvqa_v1p0_{split}.json records."""

import json

import pytest

from rablip.benchmarks.aokvqa import load_aokvqa, split_from_filename
from rablip.errors import DataError


def _record(question_id="22MexNkBPpdZGX6sxbxVBH", image_id=299207, with_answers=True):
    record = {
        "image_id": image_id,
        "question_id": question_id,
        "question": "What is the man by the bags awaiting?",
        "choices": ["skateboarder", "train", "delivery", "cab"],
    }
    if with_answers:
        record.update(
            correct_choice_idx=3,
            direct_answers=[
                "ride",
                "ride",
                "bus",
                "taxi",
                "travelling",
                "traffic",
                "taxi",
                "cab",
                "cab",
                "his ride",
            ],
            difficult_direct_answer=False,
            rationales=["A train would not be on the street.", "He is waiting for a cab.", "Cab."],
        )
    return record


def _write(tmp_path, records, name="aokvqa_v1p0_val.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


def test_loads_val_with_answers_and_choices(tmp_path):
    path = _write(tmp_path, [_record(), _record("q2", 7)])
    examples = load_aokvqa(path, image_root="/coco")
    first = examples[0]
    assert first.id == "22MexNkBPpdZGX6sxbxVBH"
    assert first.image == "/coco/val2017/000000299207.jpg"
    assert first.choices == ["skateboarder", "train", "delivery", "cab"]
    assert first.correct_choice_idx == 3
    assert len(first.answers) == 10 and first.answers[3] == "taxi"
    assert first.extra["difficult_direct_answer"] is False
    assert len(first.extra["rationales"]) == 3
    assert first.extra["image_id"] == 299207 and first.extra["split"] == "val"
    assert examples[1].image == "/coco/val2017/000000000007.jpg"


def test_test_split_lacks_answers(tmp_path):
    path = _write(tmp_path, [_record(with_answers=False)], name="aokvqa_v1p0_test.json")
    (example,) = load_aokvqa(path)
    assert example.answers == [] and example.correct_choice_idx is None
    assert example.choices is not None and example.image == "test2017/000000299207.jpg"


def test_split_from_argument_or_file_name(tmp_path):
    assert split_from_filename("/x/aokvqa_v1p0_train.json") == "train"
    assert split_from_filename("/x/my_questions.json") is None
    path = _write(tmp_path, [_record()], name="my_questions.json")
    assert load_aokvqa(path, split="train")[0].image == "train2017/000000299207.jpg"
    with pytest.raises(DataError, match="pass split= explicitly"):
        load_aokvqa(path)


def test_bad_records(tmp_path):
    path = _write(tmp_path, [_record(), _record()])
    with pytest.raises(
        DataError, match=r"record 1: duplicate question_id '22MexNkBPpdZGX6sxbxVBH'.*first at record 0"
    ):
        load_aokvqa(path)
    broken = _record()
    del broken["image_id"]
    path = _write(tmp_path, [_record("a"), broken])
    with pytest.raises(DataError, match=r"aokvqa_v1p0_val\.json, record 1: missing required key 'image_id'"):
        load_aokvqa(path)
    wrong = _record()
    wrong["correct_choice_idx"] = 4
    with pytest.raises(DataError, match="correct_choice_idx 4 does not index the 4 choices"):
        load_aokvqa(_write(tmp_path, [wrong]))
    wrong = _record()
    wrong["direct_answers"][2] = 5
    with pytest.raises(DataError, match=r"key 'direct_answers\[2\]' should be a string"):
        load_aokvqa(_write(tmp_path, [wrong]))
    with pytest.raises(DataError, match="expected a JSON list"):
        load_aokvqa(_write(tmp_path, {"questions": []}))
