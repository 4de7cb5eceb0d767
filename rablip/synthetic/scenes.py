"""Scenes: images that hold more than the question asks about, so the question must steer what is extracted.

A scene shows two creatures side by side (:func:`rablip.synthetic.render.render_scene`); its question asks
about one of them and names it by a visible attribute the other lacks ("What does the striped creature
eat?"). Looking at the picture alone, a retriever cannot tell which creature's knowledge is wanted; the
question instructing the Q-Former can.

Two sources of scenes:

- the world's ``scene/`` split (:func:`write_scene_split`), in OK-VQA format beside ``align/``: each test
  entity beside another knowledge-base entity, with one knowledge question about the test entity. The demo
  scores retrieval on it with and without the question instructing the Q-Former.
- a share of the extra pre-training pairs (:func:`rablip.synthetic.describing.write_invented_pairs`): an
  invented creature beside another, so pre-training sees scenes without meeting a world entity.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from rablip.synthetic.entities import Entity
from rablip.synthetic.files import annotations_name, image_relpath, questions_name, write_json
from rablip.synthetic.questions import (
    KNOWLEDGE_ATTRIBUTES,
    annotations_file,
    make_question,
    qualified,
    qualifier,
    questions_file,
)
from rablip.synthetic.render import render_scene

SCENE_SPLIT = "test"
"""The scene split is an evaluation split: its files carry OK-VQA's test names inside ``scene/``."""
_STREAM_SCENES = 11
_IMAGE_ID_BASE = 5_000_000


def scene_with(target: Mapping[str, str], pick_other: Callable[[], Mapping[str, str]], asked: str,
               rng: np.random.Generator, image_size: int) -> tuple[Image.Image, str, int]:
    """A scene of ``target`` beside a creature from ``pick_other`` (drawn again until an attribute other than
    ``asked`` tells them apart), on a random side; returns (image, qualifier phrase, target's side 0/1)."""
    while True:
        other = pick_other()
        phrase = qualifier(dict(target), dict(other), asked, rng)
        if phrase is not None:
            break
    side = int(rng.integers(2))
    looks = [dict(target), dict(other)] if side == 0 else [dict(other), dict(target)]
    return render_scene(looks, rng, image_size), phrase, side


def write_scene_split(root: Path, targets: Sequence[Entity], others: Sequence[Entity], images_per_entity: int,
                      seed: int, image_size: int, save_image) -> dict[str, int]:
    """Write ``images_per_entity`` scenes per entity of ``targets`` into ``root`` (the world's ``scene/``),
    each beside one of ``others`` (never itself), with one knowledge question about the target named by a
    visible attribute. Returns the split's counts."""
    rng = np.random.default_rng([seed, _STREAM_SCENES])
    (root / f"{SCENE_SPLIT}2014").mkdir(parents=True)
    questions, annotations = [], []
    position = 0
    for entity in targets:
        pool = [other for other in others if other.id != entity.id]
        offset = int(rng.integers(len(KNOWLEDGE_ATTRIBUTES)))
        for j in range(images_per_entity):
            position += 1
            image_id = _IMAGE_ID_BASE + position
            asked = KNOWLEDGE_ATTRIBUTES[(j + offset) % len(KNOWLEDGE_ATTRIBUTES)]
            beside: list[Entity] = []

            def pick_other(pool: list[Entity] = pool, beside: list[Entity] = beside) -> Mapping[str, str]:
                beside[:] = [pool[int(rng.integers(len(pool)))]]  # remembered: the annotation names it
                return beside[0].attributes

            image, phrase, side = scene_with(entity.attributes, pick_other, asked, rng, image_size)
            save_image(image, root / image_relpath(SCENE_SPLIT, image_id))
            question, annotation = make_question(entity, "knowledge", asked, image_id, image_id * 10, rng)
            question["question"] = qualified(question["question"], phrase)
            annotation["scene"] = {"other_entity_id": beside[0].id, "side": ["left", "right"][side],
                                   "named_by": phrase}
            questions.append(question)
            annotations.append(annotation)
    write_json(root / questions_name(SCENE_SPLIT), questions_file(SCENE_SPLIT, questions))
    write_json(root / annotations_name(SCENE_SPLIT), annotations_file(SCENE_SPLIT, annotations))
    return {"num_images": len(questions), "num_questions": len(questions)}
