"""Scenes of the synthetic world: two creatures in one image, the question naming the one it means."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rablip.benchmarks.okvqa import load_okvqa
from rablip.synthetic.describing import write_invented_pairs
from rablip.synthetic.files import SCENE_DIR, annotations_name, questions_name
from rablip.synthetic.questions import (
    KNOWLEDGE_ATTRIBUTES,
    QUALIFIER_ATTRIBUTES,
    TEMPLATES,
    qualified,
    qualifier,
)
from rablip.synthetic.render import COLOURS_RGB, render_scene
from rablip.synthetic.world import WorldSettings, build_world

TINY = WorldSettings(seed=3, entities=12, distractors=4, image_size=32, train_images_per_entity=2,
                     eval_images_per_entity=1, align_images=0, scene_images_per_entity=2)
LOOK = {"shape": "square", "colour": "red", "pattern": "solid", "size": "large"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes") / "w"
    return out, build_world(out, TINY)


def test_scene_split_names_the_asked_creature_by_an_attribute_only_it_has(world):
    root, manifest = world
    entities = {e["id"]: e for e in manifest["entities"]}
    test_ids = manifest["splits"]["test"]["entity_ids"]
    scene = root / SCENE_DIR
    assert manifest["scene"] == {"dir": SCENE_DIR, "num_images": 2 * len(test_ids), "num_questions": 2 * len(test_ids)}
    examples = load_okvqa(scene / questions_name("test"), scene / annotations_name("test"), image_root=scene,
                          image_split="test2014")
    annotations = {str(a["question_id"]): a for a in
                   json.loads((scene / annotations_name("test")).read_text())["annotations"]}
    assert sorted({e.extra["entity_id"] for e in examples}) == sorted(test_ids)
    named_by = set()
    for example in examples:
        annotation = annotations[example.id]
        target, other = entities[annotation["entity_id"]], entities[annotation["scene"]["other_entity_id"]]
        assert other["id"] != target["id"]
        asked, phrase = annotation["attribute"], annotation["scene"]["named_by"]
        assert asked in KNOWLEDGE_ATTRIBUTES and example.question_type.startswith("knowledge/")
        assert example.question in {qualified(text, phrase) for text in TEMPLATES[asked]}
        key = next(k for k in QUALIFIER_ATTRIBUTES if phrase in (target["attributes"][k],
                                                                  f"{target['attributes'][k]}-shaped"))
        assert target["attributes"][key] != other["attributes"][key], "the phrase tells the two creatures apart"
        assert example.relevant_ids == [target["kb_ids"]["facts"]]
        named_by.add(key)
    assert named_by == set(QUALIFIER_ATTRIBUTES)


def test_scene_draws_each_creature_in_its_own_half():
    blue = {**LOOK, "colour": "blue", "shape": "circle"}
    pixels = np.asarray(render_scene([LOOK, blue], np.random.default_rng(0), 64), dtype=np.float32)

    def share(half: np.ndarray, colour: str) -> float:
        return float((np.abs(half - np.array(COLOURS_RGB[colour])).max(axis=-1) < 40).mean())

    left, right = pixels[:, :32], pixels[:, 32:]
    assert share(left, "red") > 0.05 and share(right, "blue") > 0.05
    assert share(left, "blue") < 0.01 and share(right, "red") < 0.01


def test_qualifier_never_names_the_asked_attribute_nor_a_shared_one():
    rng = np.random.default_rng(0)
    other = {**LOOK, "colour": "blue"}
    assert {qualifier(LOOK, other, "habitat", rng) for _ in range(20)} == {"red"}
    assert qualifier(LOOK, other, "colour", rng) is None, "only the asked attribute differs"
    both = {**LOOK, "colour": "blue", "shape": "star"}
    assert {qualifier(LOOK, both, "colour", rng) for _ in range(20)} == {"square-shaped"}
    with pytest.raises(ValueError, match="no subject"):
        qualified("How old is it?", "red")


def test_scene_pairs_are_a_share_of_the_extra_pairs_and_leave_the_others_as_they_were(world, tmp_path):
    root, _ = world
    plain = write_invented_pairs(root, tmp_path / "plain", 60, seed=1) and (tmp_path / "plain" / "pairs.jsonl")
    write_invented_pairs(root, tmp_path / "mixed", 60, seed=1, scene_share=0.5)
    before = [json.loads(line) for line in plain.read_text().splitlines()]
    after = [json.loads(line) for line in (tmp_path / "mixed" / "pairs.jsonl").read_text().splitlines()]
    templates = {text for texts in TEMPLATES.values() for text in texts}
    scenes = [i for i, record in enumerate(after) if record["question"] not in templates]
    assert 15 <= len(scenes) <= 45
    for i, (old, new) in enumerate(zip(before, after, strict=True)):
        if i in scenes:
            assert old["image"] == new["image"]
            continue
        assert old == new
        assert (tmp_path / "plain" / old["image"]).read_bytes() == (tmp_path / "mixed" / new["image"]).read_bytes()
