"""The synthetic knowledge-VQA world: determinism, no leaks, OK-VQA format, renderings, knowledge edit."""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import AutoTokenizer

from rablip.benchmarks.okvqa import load_okvqa
from rablip.errors import DataError
from rablip.synthetic.aligning import write_align_split
from rablip.synthetic.edit import edit_world
from rablip.synthetic.entities import split_counts
from rablip.synthetic.files import ALIGN_DIR, SPLITS, annotations_name, image_relpath, questions_name
from rablip.synthetic.questions import TEMPLATES
from rablip.synthetic.render import COLOURS_RGB, render_entity
from rablip.synthetic.vocab import HIDDEN_FACTS, VARIANTS, VISUAL_ATTRIBUTES
from rablip.synthetic.world import WorldSettings, build_world
from rablip.synthetic.world_tokenizers import train_world_tokenizers

ROOT = Path(__file__).resolve().parents[2]
TINY = WorldSettings(seed=7, entities=12, distractors=4, image_size=32, train_images_per_entity=2,
                     eval_images_per_entity=2, align_images=24)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _load(world: Path, split: str) -> tuple[list[dict], list[dict]]:
    questions = json.loads((world / questions_name(split)).read_text())["questions"]
    annotations = json.loads((world / annotations_name(split)).read_text())["annotations"]
    return questions, annotations


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world") / "w"
    build_world(out, TINY)
    return out


@pytest.fixture(scope="module")
def manifest(world) -> dict:
    return json.loads((world / "world.json").read_text())


def test_same_seed_gives_identical_files_and_another_seed_does_not(world, tmp_path):
    build_world(tmp_path / "again", TINY)
    assert _tree(tmp_path / "again") == _tree(world)
    build_world(tmp_path / "other", WorldSettings(**{**TINY.__dict__, "seed": 8}))
    assert (tmp_path / "other" / "kb.jsonl").read_bytes() != (world / "kb.jsonl").read_bytes()


def test_refuses_non_empty_directory(world):
    with pytest.raises(DataError, match="not empty"):
        build_world(world, TINY)


def test_split_counts_give_the_requested_unseen_share():
    assert split_counts(96, 0.3) == (52, 22)
    assert split_counts(12, 0.3) == (6, 3)
    assert split_counts(10, 0.0) == (10, 0)
    with pytest.raises(ValueError):
        split_counts(2, 0.5)


def test_unseen_entities_never_reach_train(world, manifest):
    entities = {e["id"]: e for e in manifest["entities"]}
    unseen_val, unseen_test = (set(manifest["unseen_entity_ids"][s]) for s in ("val", "test"))
    assert unseen_val and unseen_test and not unseen_val & unseen_test
    train_text = (world / questions_name("train")).read_text() + (world / annotations_name("train")).read_text()
    _, train_annotations = _load(world, "train")
    assert all(a["seen_entity"] for a in train_annotations)
    for entity_id in unseen_val | unseen_test | set(manifest["distractor_entity_ids"]):
        assert f'"{entity_id}"' not in train_text
        assert re.search(rf"\b{entities[entity_id]['name']}\b", train_text) is None
    for split, own_unseen, other_unseen in (("val", unseen_val, unseen_test), ("test", unseen_test, unseen_val)):
        _, annotations = _load(world, split)
        mentioned = {a["entity_id"] for a in annotations}
        assert own_unseen <= mentioned and not other_unseen & mentioned
        assert all(a["seen_entity"] == (a["entity_id"] not in own_unseen) for a in annotations)
        assert not set(manifest["distractor_entity_ids"]) & mentioned


def test_no_fact_answer_or_name_in_any_question(world, manifest):
    forbidden = {answer for values in HIDDEN_FACTS.values() for v in values for answer in (v, *VARIANTS.get(v, ()))}
    forbidden |= {e["name"] for e in manifest["entities"]}
    for split in SPLITS:
        for question in _load(world, split)[0]:
            text = question["question"].lower()
            hits = [word for word in forbidden if re.search(rf"\b{re.escape(word)}\b", text)]
            assert not hits, (question, hits)


def test_kb_items_and_relevant_ids(world, manifest):
    items = [json.loads(line) for line in (world / "kb.jsonl").read_text().splitlines()]
    by_id = {item["id"]: item for item in items}
    assert len(by_id) == len(items) == 2 * (TINY.entities + 4)
    for item in items:
        assert set(item) in ({"id", "text", "title"}, {"id", "text", "title", "image"})
        if "image" in item:
            assert (world / item["image"]).is_file() and item["title"] in item["text"]
    entities = {e["id"]: e for e in manifest["entities"]}
    for split in SPLITS:
        for annotation in _load(world, split)[1]:
            assert annotation["relevant_ids"] and all(i in by_id for i in annotation["relevant_ids"])
            entity = entities[annotation["entity_id"]]
            assert set(annotation["relevant_ids"]) <= set(entity["kb_ids"].values())
            # Solvable: the canonical answer is stated by every relevant item, and a knowledge
            # answer only by the text item (no image caption states a fact).
            texts = [a["answer"] for a in annotation["answers"]]
            canonical = max(sorted(set(texts)), key=texts.count)
            for item_id in annotation["relevant_ids"]:
                assert re.search(rf"\b{re.escape(canonical)}\b", by_id[item_id]["text"]), (annotation, item_id)
            if annotation["question_type"].startswith("knowledge"):
                assert canonical not in by_id[entity["kb_ids"]["image"]]["text"].split()


def test_files_follow_the_okvqa_format(world):
    question_ids: set[int] = set()
    for split in SPLITS:
        q_doc = json.loads((world / questions_name(split)).read_text())
        a_doc = json.loads((world / annotations_name(split)).read_text())
        assert {"info", "task_type", "data_type", "data_subtype", "license", "questions"} <= set(q_doc)
        assert q_doc["data_subtype"] == f"{split}2014"
        questions = {q["question_id"]: q for q in q_doc["questions"]}
        assert len(questions) == len(q_doc["questions"]) and not question_ids & set(questions)
        question_ids |= set(questions)
        assert len(a_doc["annotations"]) == len(questions)
        for annotation in a_doc["annotations"]:
            assert {"image_id", "question_id", "question_type", "answer_type", "confidence", "answers",
                    "relevant_ids", "entity_id", "seen_entity"} <= set(annotation)
            assert annotation["image_id"] == questions[annotation["question_id"]]["image_id"]
            assert annotation["question_type"] in ("knowledge/seen", "knowledge/unseen", "visual", "naming")
            knowledge = "knowledge/" + ("seen" if annotation["seen_entity"] else "unseen")
            assert annotation["question_type"] in (knowledge, "visual", "naming"), "the report group"
            answers = annotation["answers"]
            assert len(answers) == 10 and [a["answer_id"] for a in answers] == list(range(1, 11))
            for answer in answers:
                assert set(answer) == {"answer", "raw_answer", "answer_confidence", "answer_id"}
                assert answer["answer_confidence"] in ("yes", "no", "maybe")
            texts = [a["answer"] for a in answers]
            assert max(texts.count(t) for t in texts) >= 7  # the canonical answer always scores 100
        for question in q_doc["questions"]:
            with Image.open(world / image_relpath(split, question["image_id"])) as image:
                assert image.format == "JPEG" and image.size == (TINY.image_size, TINY.image_size)
    kinds = {a["question_type"] for a in _load(world, "train")[1]}
    assert kinds == {"knowledge/seen", "visual", "naming"}, "train asks about seen entities only"


def test_two_renderings_differ_but_keep_the_visible_attributes():
    def saturated_pixels(image: Image.Image) -> np.ndarray:
        pixels = np.asarray(image, dtype=np.float32).reshape(-1, 3)
        saturation = (pixels.max(1) - pixels.min(1)) / np.maximum(pixels.max(1), 1)
        return pixels[saturation > 0.45]

    for colour in ("red", "blue", "yellow"):
        areas = {}
        for size in ("small", "large"):
            attributes = {"shape": "square", "colour": colour, "pattern": "solid", "size": size}
            first = render_entity(attributes, np.random.default_rng(1), 64)
            second = render_entity(attributes, np.random.default_rng(2), 64)
            assert not np.array_equal(np.asarray(first), np.asarray(second))
            areas[size] = []
            for image in (first, second):
                shape_pixels = saturated_pixels(image)
                mean = shape_pixels.mean(0)
                nearest = min(COLOURS_RGB, key=lambda name: np.sum((np.array(COLOURS_RGB[name]) - mean) ** 2))
                assert nearest == colour
                areas[size].append(len(shape_pixels))
        assert max(areas["small"]) < min(areas["large"])


def test_knowledge_edit_changes_answers_and_kb_consistently(world, manifest, tmp_path):
    edits = edit_world(world, fraction=0.5, seed=3)
    first_bytes = _tree(world)
    assert edit_world(world, fraction=0.5, seed=3) == edits and _tree(world) == first_bytes
    entities = {e["id"]: e for e in manifest["entities"]}
    test_ids = set(manifest["splits"]["test"]["entity_ids"])
    assert edits["entities"] and set(edits["entities"]) <= test_ids
    assert len(edits["entities"]) == -(-len(test_ids) // 2)

    original = [json.loads(line) for line in (world / "kb.jsonl").read_text().splitlines()]
    edited = [json.loads(line) for line in (world / "kb_edited.jsonl").read_text().splitlines()]
    assert [i["id"] for i in original] == [i["id"] for i in edited]
    changed = {new["id"] for old, new in zip(original, edited) if old != new}
    assert changed == {entities[e]["kb_ids"]["facts"] for e in edits["entities"]}
    edited_by_id = {item["id"]: item for item in edited}
    for entity_id, facts in edits["entities"].items():
        text = edited_by_id[entities[entity_id]["kb_ids"]["facts"]]["text"]
        assert facts and entities[entity_id]["name"] in text
        for change in facts.values():
            assert change["old"] != change["new"] and re.search(rf"\b{change['new']}\b", text)
            assert not re.search(rf"\b{change['old']}\b", text)

    _, test_annotations = _load(world, "test")
    expected = {a["question_id"] for a in test_annotations
                if a["question_type"].startswith("knowledge") and a["attribute"] in edits["entities"].get(a["entity_id"], {})}
    key = json.loads((world / "edit" / annotations_name("test")).read_text())["annotations"]
    questions = json.loads((world / "edit" / questions_name("test")).read_text())["questions"]
    assert {a["question_id"] for a in key} == {q["question_id"] for q in questions} == expected
    assert {int(q) for q in edits["questions"]} == expected
    for annotation in key:
        change = edits["questions"][str(annotation["question_id"])]
        texts = [a["answer"] for a in annotation["answers"]]
        assert len(texts) == 10 and texts.count(change["new"]) >= 7 and change["old"] not in texts
        assert change["new"] == edits["entities"][annotation["entity_id"]][annotation["attribute"]]["new"]


def test_cli_builds_a_world(tmp_path):
    spec = importlib.util.spec_from_file_location("make_synthetic", ROOT / "scripts" / "make_synthetic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # the world alone (--only world); tests/data/test_make_synthetic.py builds every part
    args = ["--out", str(tmp_path / "w"), "--only", "world", "--seed", "1", "--entities", "6", "--distractors", "2",
            "--image-size", "24", "--train-images", "1", "--eval-images", "1", "--align-images", "3"]
    assert module.main(args) == 0
    manifest = json.loads((tmp_path / "w" / "world.json").read_text())
    assert manifest["counts"]["entities"] == 6 and manifest["counts"]["kb_items"] == 16
    assert manifest["align"]["num_questions"] == 3
    with pytest.raises(DataError):
        module.main(args)


def test_world_tokenizers(world, tmp_path, manifest):
    tokenizers = train_world_tokenizers(world, tmp_path, "causal", qformer_vocab_size=800, llm_vocab_size=800)
    qformer = AutoTokenizer.from_pretrained(str(tmp_path / "qformer"))
    llm = AutoTokenizer.from_pretrained(str(tmp_path / "llm"))
    assert qformer.cls_token_id == tokenizers["qformer"].cls_token_id == 2
    assert llm.padding_side == "left" and llm.image_token_id is not None
    for entity in manifest["entities"]:
        text = f"The {entity['name']} eats {entity['facts']['diet']}."
        for tokenizer, expected in ((qformer, text.lower()), (llm, text)):
            ids = tokenizer(text)["input_ids"]
            assert tokenizer.unk_token_id not in ids
            assert tokenizer.decode(ids, skip_special_tokens=True) == expected
    # With room in the vocabulary, the world's words (names, answers, prompt words) are whole tokens.
    for word in (manifest["entities"][0]["name"], manifest["entities"][0]["facts"]["diet"], "creature", "question"):
        assert qformer.tokenize(word) == [word]


def _canonical(answers: list[str]) -> str:
    return max(answers, key=answers.count)


def test_align_split_asks_one_visual_question_per_rendering_in_okvqa_format(world, manifest):
    align = world / ALIGN_DIR
    assert manifest["align"] == {"dir": ALIGN_DIR, "num_images": 24, "num_questions": 24}
    examples = load_okvqa(align / questions_name("train"), align / annotations_name("train"), image_root=align,
                          image_split="train2014")
    assert len(examples) == 24 and len({e.image for e in examples}) == 24
    world_ids = {str(a["question_id"]) for split in SPLITS for a in _load(world, split)[1]}
    assert not world_ids & {e.id for e in examples}
    for example in examples:
        attribute = example.extra["attribute"]
        assert example.question_type == "visual" and example.question in TEMPLATES[attribute]
        assert _canonical(example.answers) in VISUAL_ATTRIBUTES[attribute]
        with Image.open(example.image) as image:
            assert image.format == "JPEG" and image.size == (TINY.image_size, TINY.image_size)
    assert len({e.extra["attribute"] for e in examples}) >= 3


def test_align_renderings_never_take_an_avoided_look(tmp_path):
    looks = [dict(zip(VISUAL_ATTRIBUTES, combo)) for combo in itertools.product(*VISUAL_ATTRIBUTES.values())]
    left = looks.pop(123)  # every other combination is a world entity's: all renderings must have this look
    write_align_split(tmp_path / "align", 16, seed=0, image_size=32, avoid_looks=looks,
                      save_image=lambda image, path: image.save(path, format="JPEG"))
    annotations = json.loads((tmp_path / "align" / annotations_name("train")).read_text())["annotations"]
    assert len(annotations) == 16
    for annotation in annotations:
        assert _canonical([a["answer"] for a in annotation["answers"]]) == left[annotation["attribute"]]


def test_okvqa_loader_reads_the_val_split(world):
    okvqa = pytest.importorskip("rablip.benchmarks.okvqa")
    examples = okvqa.load_okvqa(
        world / questions_name("val"), world / annotations_name("val"), image_root=world, image_split="val2014"
    )
    _, annotations = _load(world, "val")
    assert len(examples) == len(annotations)
    by_id = {str(a["question_id"]): a for a in annotations}
    for example in examples:
        annotation = by_id[example.id]
        assert Path(example.image).is_file()
        assert example.answers == [a["answer"] for a in annotation["answers"]]
        assert example.relevant_ids == annotation["relevant_ids"]
        assert example.question_type == annotation["question_type"]
        assert example.extra["entity_id"] == annotation["entity_id"]
        assert example.extra["seen_entity"] == annotation["seen_entity"]


def test_val_annotations_score_with_the_official_vqa_metric(world, tmp_path):
    """The world's files pass the official-equivalent VQA evaluation: canonical answers score 100,
    an always-wrong answer 0, and each question type is reported."""
    import collections

    from rablip.evaluation.vqa_metric import score_vqa_files

    annotations = json.loads((world / "mscoco_val2014_annotations.json").read_text())["annotations"]
    canonical = [{"question_id": a["question_id"],
                  "answer": collections.Counter(x["answer"] for x in a["answers"]).most_common(1)[0][0]}
                 for a in annotations]
    wrong = [{"question_id": a["question_id"], "answer": "zzzz"} for a in annotations]
    for predictions, expected in ((canonical, 100.0), (wrong, 0.0)):
        path = tmp_path / "pred.json"
        path.write_text(json.dumps(predictions))
        scores = score_vqa_files(world / "OpenEnded_mscoco_val2014_questions.json",
                                 world / "mscoco_val2014_annotations.json", path)
        assert scores["overall"] == expected
        assert set(scores["per_question_type"]) == {"knowledge/seen", "knowledge/unseen", "visual", "naming"}
