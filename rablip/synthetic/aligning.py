"""Visual questions about invented creatures, for the generator's alignment stage.

A real RA-BLIP starts from InstructBLIP, whose Q-Former was aligned to its LLM on many images with
text (BLIP-2's second stage) and instruction-tuned on visual questions, so its LLM can already say
what a picture shows. The tiny generator of the synthetic demo is built from scratch, and the
world's own visual questions cover a few dozen looks: fine-tuned on those with every other kind of
question, it names colours and shapes little better than by guessing (BENCHMARKS.md, synthetic demo).
So the world carries an alignment split, ``align/``, in OK-VQA format: one rendering of a made-up
creature per image, every visible attribute drawn independently, and one question about its colour,
shape, pattern or size. ``configs/experiment/synthetic_align.yaml`` trains on it between pre-training
and fine-tuning. No world entity's combination of attributes is drawn and no creature has a name or
facts, so the world's unseen entities stay unseen.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from rablip.synthetic.files import annotations_name, image_relpath, questions_name, write_json
from rablip.synthetic.questions import (
    ANSWER_TYPES,
    TEMPLATES,
    VISUAL_ATTRIBUTE_KEYS,
    annotations_file,
    questions_file,
    ten_answers,
)
from rablip.synthetic.render import render_entity
from rablip.synthetic.viewing import invented_look, look_combinations

ALIGN_SPLIT = "train"
"""The alignment split is a training split: its files carry OK-VQA's train names inside ``align/``."""
_STREAM_ALIGN = 6
_IMAGE_ID_BASE = 4_000_000


def write_align_split(root: Path, images: int, seed: int, image_size: int, avoid_looks: Iterable[Mapping[str, str]],
                      save_image) -> dict[str, int]:
    """Render ``images`` invented creatures into ``root`` (the world's ``align/`` dir) with one visual
    question each; ``save_image(image, path)`` writes a rendering. Returns the split's counts."""
    rng = np.random.default_rng([seed, _STREAM_ALIGN])
    avoided = look_combinations(avoid_looks)
    (root / f"{ALIGN_SPLIT}2014").mkdir(parents=True)
    questions, annotations = [], []
    for position in range(images):
        image_id = _IMAGE_ID_BASE + position + 1
        look = invented_look(rng, avoided)
        save_image(render_entity(look, rng, image_size), root / image_relpath(ALIGN_SPLIT, image_id))
        attribute = VISUAL_ATTRIBUTE_KEYS[int(rng.integers(len(VISUAL_ATTRIBUTE_KEYS)))]
        templates = TEMPLATES[attribute]
        question_id = image_id * 10
        questions.append({"image_id": image_id, "question": templates[int(rng.integers(len(templates)))],
                          "question_id": question_id})
        annotations.append({"image_id": image_id, "question_id": question_id, "question_type": "visual",
                            "answer_type": ANSWER_TYPES.get(attribute, "other"), "confidence": 3,
                            "answers": ten_answers(look[attribute], rng), "attribute": attribute})
    write_json(root / questions_name(ALIGN_SPLIT), questions_file(ALIGN_SPLIT, questions))
    write_json(root / annotations_name(ALIGN_SPLIT), annotations_file(ALIGN_SPLIT, annotations))
    return {"num_images": images, "num_questions": len(questions)}
