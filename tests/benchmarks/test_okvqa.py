"""rablip.benchmarks.okvqa: OK-VQA / VQAv2 questions + annotations in the official layout."""

import json

import pytest

from rablip.benchmarks.okvqa import coco_image_path, load_okvqa
from rablip.errors import DataError


def _answers(*strings):
    strings = list(strings) + [strings[-1]] * (10 - len(strings))
    return [
        {"answer": text, "raw_answer": text, "answer_confidence": "yes", "answer_id": position + 1}
        for position, text in enumerate(strings)
    ]


def _questions():
    return {
        "info": {"description": "OK-VQA"},
        "license": {},
        "data_subtype": "val2014",
        "task_type": "Open-Ended",
        "data_type": "mscoco",
        "questions": [
            {"image_id": 297147, "question": "What sport can you use this for?", "question_id": 2971475},
            {"image_id": 42, "question": "What is the weather like?", "question_id": 420},
        ],
    }


def _annotations():
    return {
        "annotations": [
            {
                "image_id": 42,
                "question_id": 420,
                "question_type": "ten",
                "answer_type": "other",
                "confidence": 3,
                "answers": _answers("sunny", "clear"),
            },
            {
                "image_id": 297147,
                "question_id": 2971475,
                "question_type": "one",
                "answer_type": "other",
                "confidence": 2,
                "answers": _answers("race", "racing", "motocross"),
                "relevant_ids": ["kb-1", 17],
            },
        ]
    }


def _write(tmp_path, questions=None, annotations=None):
    q_path = tmp_path / "OpenEnded_mscoco_val2014_questions.json"
    a_path = tmp_path / "mscoco_val2014_annotations.json"
    q_path.write_text(json.dumps(questions or _questions()))
    a_path.write_text(json.dumps(annotations or _annotations()))
    return q_path, a_path


def test_loads_questions_with_annotations(tmp_path):
    q_path, a_path = _write(tmp_path)
    examples = load_okvqa(q_path, a_path, image_root="/data/coco", image_split="val2014")
    assert [example.id for example in examples] == ["2971475", "420"]
    first = examples[0]
    assert first.image == "/data/coco/val2014/COCO_val2014_000000297147.jpg"
    assert first.question == "What sport can you use this for?"
    assert first.answers == ["race", "racing"] + ["motocross"] * 8
    assert first.question_type == "one"
    assert first.relevant_ids == ["kb-1", "17"]
    assert first.extra == {"image_id": 297147, "answer_type": "other", "confidence": 2}
    assert examples[1].relevant_ids is None and examples[1].question_type == "ten"


def test_questions_only_for_test_style_splits(tmp_path):
    q_path, _ = _write(tmp_path)
    examples = load_okvqa(q_path, image_split="test2015")
    assert [example.answers for example in examples] == [[], []]
    assert examples[1].image == "test2015/COCO_test2015_000000000042.jpg"
    assert coco_image_path("", "test2014", 7) == "test2014/COCO_test2014_000000000007.jpg"


def test_duplicate_question_id(tmp_path):
    questions = _questions()
    questions["questions"].append(dict(questions["questions"][1]))
    q_path, _ = _write(tmp_path, questions=questions)
    with pytest.raises(DataError, match=r"questions\.json, record 2: duplicate question_id 420"):
        load_okvqa(q_path)


def test_annotation_for_unknown_question(tmp_path):
    annotations = _annotations()
    annotations["annotations"][0]["question_id"] = 999
    q_path, a_path = _write(tmp_path, annotations=annotations)
    with pytest.raises(
        DataError, match=r"annotations\.json, record 0: question_id 999 is not in the questions file"
    ):
        load_okvqa(q_path, a_path)


def test_question_without_annotation(tmp_path):
    annotations = _annotations()
    del annotations["annotations"][0]
    q_path, a_path = _write(tmp_path, annotations=annotations)
    with pytest.raises(DataError, match=r"1 question\(s\) .* no annotation \(question_id 420\)"):
        load_okvqa(q_path, a_path)


def test_missing_key_names_file_and_record(tmp_path):
    questions = _questions()
    del questions["questions"][1]["question"]
    q_path, a_path = _write(tmp_path, questions=questions)
    with pytest.raises(DataError, match=r"questions\.json, record 1: missing required key 'question'"):
        load_okvqa(q_path, a_path)
    annotations = _annotations()
    del annotations["annotations"][1]["answers"][3]["answer"]
    q_path, a_path = _write(tmp_path, annotations=annotations)
    with pytest.raises(DataError, match=r"record 1, answers\[3\]: missing required key 'answer'"):
        load_okvqa(q_path, a_path)


def test_wrong_types_and_layout(tmp_path):
    questions = _questions()
    questions["questions"][0]["image_id"] = "297147"
    q_path, _ = _write(tmp_path, questions=questions)
    with pytest.raises(DataError, match=r"record 0: key 'image_id' should be an integer, got str"):
        load_okvqa(q_path)
    q_path.write_text(json.dumps([{"question": "x"}]))
    with pytest.raises(DataError, match="expected a JSON object with a 'questions' list"):
        load_okvqa(q_path)


def test_mismatched_image_id(tmp_path):
    annotations = _annotations()
    annotations["annotations"][0]["image_id"] = 43
    q_path, a_path = _write(tmp_path, annotations=annotations)
    with pytest.raises(DataError, match="image_id 43 here but 42 in the questions file"):
        load_okvqa(q_path, a_path)


def test_malformed_annotations_json(tmp_path):
    q_path, a_path = _write(tmp_path)
    a_path.write_text('{"annotations": [\n{"question_id": 1,}\n]}')
    with pytest.raises(DataError, match=r"annotations\.json: malformed JSON at line 2, column"):
        load_okvqa(q_path, a_path)
