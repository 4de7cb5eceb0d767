"""Question templates and the OK-VQA-format records of the synthetic world.

Three question kinds, several paraphrases each, none naming the entity or containing any answer:
``knowledge`` asks a hidden fact (answerable only with the KB's fact item), ``visual`` asks a visible
attribute (answerable from the image), ``naming`` asks the made-up name (answerable with the KB's
image + caption item, which links the look to the name). The OK-VQA ``question_type`` is the
question's report group (:data:`QUESTION_GROUPS`): ``knowledge/seen`` or ``knowledge/unseen`` (whether
training asks about the entity), ``visual`` or ``naming``.
"""

from __future__ import annotations

import numpy as np

from rablip.synthetic.entities import Entity
from rablip.synthetic.vocab import ANSWER_TYPES, VARIANTS

QUESTION_KINDS = ("knowledge", "visual", "naming")
QUESTION_GROUPS = ("knowledge/seen", "knowledge/unseen", "visual", "naming")
"""The question types the world's annotations carry: the evaluation report's question groups."""
NUM_ANSWERS = 10
MAX_VARIANT_ANSWERS = 3
"""At most 3 of the 10 answers are variants, so the canonical answer always scores 100."""

TEMPLATES: dict[str, tuple[str, ...]] = {
    "habitat": (
        "Where does this creature live?",
        "What is the habitat of this creature?",
        "In what kind of place is this animal found?",
        "Where would you find this creature in the wild?",
    ),
    "diet": (
        "What does this creature eat?",
        "What does this animal feed on?",
        "What is the diet of this creature?",
        "What food does this creature live on?",
    ),
    "origin": (
        "Where does this creature come from?",
        "What land is this animal native to?",
        "Where did this creature originate?",
        "What is the homeland of this animal?",
    ),
    "year": (
        "In what year was this creature first recorded?",
        "When was this animal first recorded?",
        "What year was this creature discovered?",
        "When was this creature first described?",
    ),
    "name": (
        "What is this creature called?",
        "What is the name of this creature?",
        "What do people call this animal?",
        "Which creature is this?",
    ),
    "colour": (
        "What color is this creature?",
        "What is the color of this animal?",
        "Which colour is this creature?",
    ),
    "shape": (
        "What shape is this creature?",
        "What is the shape of this animal?",
        "Which shape does this creature have?",
    ),
    "pattern": (
        "What pattern does this creature have?",
        "What is the pattern on this animal?",
        "How is the body of this creature marked?",
    ),
    "size": (
        "What size is this creature?",
        "What is the size of this animal?",
        "Tell me the size of this creature.",
    ),
}
KNOWLEDGE_ATTRIBUTES = ("habitat", "diet", "origin", "year")
VISUAL_ATTRIBUTE_KEYS = ("colour", "shape", "pattern", "size")
QUALIFIER_ATTRIBUTES = ("colour", "pattern", "shape")
"""Attributes a scene question may name its creature by (a scene draws creatures at one scale, so not size)."""
_SUBJECTS = (("this creature", "the {} creature"), ("this animal", "the {} animal"), ("is this?", "is the {} one?"))


def qualifier(target: dict[str, str], other: dict[str, str], asked: str, rng: np.random.Generator) -> str | None:
    """A phrase that tells ``target`` from ``other`` in a scene (``red``, ``striped``, ``star-shaped``) by an
    attribute other than the ``asked`` one, drawn at random among those that differ; None when none does."""
    options = [key for key in QUALIFIER_ATTRIBUTES if key != asked and target[key] != other[key]]
    if not options:
        return None
    key = options[int(rng.integers(len(options)))]
    return f"{target[key]}-shaped" if key == "shape" else target[key]


def qualified(question: str, phrase: str) -> str:
    """``question`` about "this creature" rewritten to ask about "the <phrase> creature"."""
    for subject, replacement in _SUBJECTS:
        if subject in question:
            return question.replace(subject, replacement.format(phrase), 1)
    raise ValueError(f"question {question!r} names no subject to qualify")


def asked_attribute(question: str) -> str | None:
    """The attribute a template question asks about; None for a text that is no template."""
    return next((attribute for attribute, texts in TEMPLATES.items() if question in texts), None)


def answer_of(entity: Entity, attribute: str) -> str:
    """The canonical answer to a question about ``attribute`` of ``entity``."""
    if attribute == "name":
        return entity.name
    if attribute in entity.facts:
        return entity.facts[attribute]
    return entity.attributes[attribute]


def relevant_ids(entity: Entity, kind: str) -> list[str]:
    """KB items whose text contains the answer: the fact item for knowledge questions; the
    image + caption item and the fact item (both state the name and the look) otherwise."""
    if kind == "knowledge":
        return [entity.kb_ids["facts"]]
    return [entity.kb_ids["image"], entity.kb_ids["facts"]]


def question_group(entity: Entity, kind: str) -> str:
    """The ``question_type`` of a ``kind`` question about ``entity``: knowledge questions are split by
    whether the entity is seen in training."""
    if kind == "knowledge":
        return f"knowledge/{'seen' if entity.role == 'seen' else 'unseen'}"
    return kind


def is_knowledge(question_type: str) -> bool:
    """Whether a ``question_type`` of the world's annotations is a knowledge question."""
    return question_type.startswith("knowledge")


def ten_answers(canonical: str, rng: np.random.Generator) -> list[dict]:
    """OK-VQA's 10 annotator answers: mostly ``canonical``, a few accepted variants where they exist."""
    variants = VARIANTS.get(canonical, ())
    count = int(rng.integers(0, MAX_VARIANT_ANSWERS + 1)) if variants else 0
    texts = [canonical] * NUM_ANSWERS
    for position in rng.choice(NUM_ANSWERS, size=count, replace=False):
        texts[int(position)] = variants[int(rng.integers(len(variants)))]
    return [
        {
            "answer": text,
            "raw_answer": text,
            "answer_confidence": "yes" if text == canonical else "maybe",
            "answer_id": index + 1,
        }
        for index, text in enumerate(texts)
    ]


def make_question(
    entity: Entity, kind: str, attribute: str, image_id: int, question_id: int, rng: np.random.Generator
) -> tuple[dict, dict]:
    """One (question record, annotation record) pair in OK-VQA format, plus the synthetic extras
    ``relevant_ids``, ``entity_id``, ``seen_entity`` and ``attribute`` on the annotation."""
    templates = TEMPLATES[attribute]
    question = {
        "image_id": image_id,
        "question": templates[int(rng.integers(len(templates)))],
        "question_id": question_id,
    }
    annotation = {
        "image_id": image_id,
        "question_id": question_id,
        "question_type": question_group(entity, kind),
        "answer_type": ANSWER_TYPES.get(attribute, "other"),
        "confidence": 3,
        "answers": ten_answers(answer_of(entity, attribute), rng),
        "relevant_ids": relevant_ids(entity, kind),
        "entity_id": entity.id,
        "seen_entity": entity.role == "seen",
        "attribute": attribute,
    }
    return question, annotation


def questions_file(split: str, questions: list[dict]) -> dict:
    """The ``OpenEnded_mscoco_{split}2014_questions.json`` object."""
    return {
        "info": {"description": "rablip synthetic knowledge-VQA world", "version": "1.0"},
        "task_type": "Open-Ended",
        "data_type": "mscoco",
        "data_subtype": f"{split}2014",
        "license": {"name": "CC0 1.0 (generated data)", "url": "https://creativecommons.org/publicdomain/zero/1.0/"},
        "questions": questions,
    }


def annotations_file(split: str, annotations: list[dict]) -> dict:
    """The ``mscoco_{split}2014_annotations.json`` object."""
    return {
        "info": {"description": "rablip synthetic knowledge-VQA world", "version": "1.0"},
        "license": {"name": "CC0 1.0 (generated data)", "url": "https://creativecommons.org/publicdomain/zero/1.0/"},
        "data_type": "mscoco",
        "data_subtype": f"{split}2014",
        "question_types": {group: group for group in QUESTION_GROUPS},
        "annotations": annotations,
    }
