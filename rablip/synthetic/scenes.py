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
from typing import TypeVar

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
T = TypeVar("T")


def scene_with(target: Mapping[str, str], draw_other: Callable[[], T], asked: str, rng: np.random.Generator,
               image_size: int, look_of: Callable[[T], Mapping[str, str]] = dict) -> tuple[Image.Image, str, int, T]:
    """A scene of ``target`` (a look) beside a creature from ``draw_other`` (drawn again until an attribute other
    than ``asked`` tells them apart; ``look_of`` gives its look), on a random side; returns (image, qualifier
    phrase, target's side 0/1, the other creature)."""
    while True:
        other = draw_other()
        phrase = qualifier(dict(target), dict(look_of(other)), asked, rng)
        if phrase is not None:
            break
    side = int(rng.integers(2))
    looks = [dict(target), dict(look_of(other))]
    return render_scene(looks if side == 0 else looks[::-1], rng, image_size), phrase, side, other


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
            image, phrase, side, other = scene_with(
                entity.attributes, lambda pool=pool: pool[int(rng.integers(len(pool)))], asked, rng, image_size,
                look_of=lambda creature: creature.attributes)
            save_image(image, root / image_relpath(SCENE_SPLIT, image_id))
            question, annotation = make_question(entity, "knowledge", asked, image_id, image_id * 10, rng)
            question["question"] = qualified(question["question"], phrase)
            annotation["scene"] = {"other_entity_id": other.id, "side": ["left", "right"][side],
                                   "named_by": phrase}
            questions.append(question)
            annotations.append(annotation)
    write_json(root / questions_name(SCENE_SPLIT), questions_file(SCENE_SPLIT, questions))
    write_json(root / annotations_name(SCENE_SPLIT), annotations_file(SCENE_SPLIT, annotations))
    return {"num_images": len(questions), "num_questions": len(questions)}
