"""Build a synthetic knowledge-VQA world on disk: entities, KB, question images, OK-VQA splits, manifest.

The world is deterministic for its settings (byte-identical files for the same seed and settings):
every random stream is a numpy generator seeded from ``(seed, stream, ...)``, JSON is written with
fixed key order, and JPEG encoding is deterministic. It is written into a temporary sibling dir and
renamed into place at the end, so a failed build leaves nothing half-written.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rablip.errors import DataError
from rablip.synthetic.aligning import write_align_split
from rablip.synthetic.entities import Entity, sample_entities
from rablip.synthetic.files import (
    ALIGN_DIR,
    KB_IMAGE_DIR,
    KB_NAME,
    MANIFEST_NAME,
    SCENE_DIR,
    SCHEMA_VERSION,
    SPLITS,
    annotations_name,
    image_relpath,
    questions_name,
    write_json,
    write_jsonl,
)
from rablip.synthetic.questions import (
    KNOWLEDGE_ATTRIBUTES,
    QUESTION_KINDS,
    VISUAL_ATTRIBUTE_KEYS,
    annotations_file,
    make_question,
    questions_file,
)
from rablip.synthetic.render import render_entity
from rablip.synthetic.scenes import write_scene_split
from rablip.synthetic.settings import WorldSection
from rablip.synthetic.vocab import HIDDEN_FACTS, VARIANTS, VISUAL_ATTRIBUTES

# Random streams (the second seed word), so that changing one part never shifts another.
_STREAM_QUESTION_IMAGES = 2
_STREAM_KB_IMAGES = 3
_STREAM_QUESTIONS = 4
_IMAGE_ID_BASE = {"train": 1_000_000, "val": 2_000_000, "test": 3_000_000}
"""Image ids are unique across splits; question_id = image_id * 10 + kind index (as in OK-VQA)."""


@dataclass
class WorldSettings(WorldSection):
    """Everything that determines a world: what it holds and the seed; the same settings give
    byte-identical files."""

    seed: int = 0


def _split_entities(entities: list[Entity]) -> dict[str, list[Entity]]:
    seen = [e for e in entities if e.role == "seen"]
    return {
        "train": seen,
        "val": seen + [e for e in entities if e.role == "unseen_val"],
        "test": seen + [e for e in entities if e.role == "unseen_test"],
    }


def save_jpeg(image, path: Path, quality: int) -> None:
    """Save a rendering as a deterministic JPEG (fixed quality, no chroma subsampling)."""
    image.save(path, format="JPEG", quality=quality, subsampling=0, optimize=False)


def _write_kb(root: Path, entities: list[Entity], settings: WorldSettings) -> list[dict]:
    """KB items: per entity one image + caption item and one text item with all its facts."""
    (root / KB_IMAGE_DIR).mkdir()
    items = []
    for entity in entities:
        rng = np.random.default_rng([settings.seed, _STREAM_KB_IMAGES, int(entity.id[1:])])
        image_path = f"{KB_IMAGE_DIR}/{entity.id}.jpg"
        save_jpeg(render_entity(entity.attributes, rng, settings.image_size), root / image_path, settings.jpeg_quality)
        items.append({"id": entity.kb_ids["image"], "text": entity.caption(), "title": entity.name, "image": image_path})
        items.append({"id": entity.kb_ids["facts"], "text": entity.facts_text(), "title": entity.name})
    write_jsonl(root / KB_NAME, items)
    return items


def _write_split(root: Path, split: str, entities: list[Entity], images_per_entity: int, settings: WorldSettings):
    """Render the split's images and write its OK-VQA questions and annotations; return counts."""
    split_index = SPLITS.index(split)
    rng = np.random.default_rng([settings.seed, _STREAM_QUESTIONS, split_index])
    (root / f"{split}2014").mkdir()
    # Start each entity's attribute cycle at a random offset, so every attribute is asked evenly.
    offsets = {e.id: (int(rng.integers(4)), int(rng.integers(4))) for e in entities}
    slots = [(entity, j) for entity in entities for j in range(images_per_entity)]
    order = rng.permutation(len(slots))
    questions, annotations = [], []
    for position, slot_index in enumerate(order):
        entity, j = slots[int(slot_index)]
        image_id = _IMAGE_ID_BASE[split] + position + 1
        image_rng = np.random.default_rng([settings.seed, _STREAM_QUESTION_IMAGES, split_index, image_id])
        image = render_entity(entity.attributes, image_rng, settings.image_size)
        save_jpeg(image, root / image_relpath(split, image_id), settings.jpeg_quality)
        knowledge_offset, visual_offset = offsets[entity.id]
        asked = {
            "knowledge": KNOWLEDGE_ATTRIBUTES[(j + knowledge_offset) % len(KNOWLEDGE_ATTRIBUTES)],
            "visual": VISUAL_ATTRIBUTE_KEYS[(j + visual_offset) % len(VISUAL_ATTRIBUTE_KEYS)],
            "naming": "name",
        }
        for kind_index, kind in enumerate(QUESTION_KINDS):
            question, annotation = make_question(entity, kind, asked[kind], image_id, image_id * 10 + kind_index, rng)
            questions.append(question)
            annotations.append(annotation)
    write_json(root / questions_name(split), questions_file(split, questions))
    write_json(root / annotations_name(split), annotations_file(split, annotations))
    return {"num_images": len(slots), "num_questions": len(questions)}


def _manifest(entities: list[Entity], settings: WorldSettings, kb_items: list[dict], split_stats: dict) -> dict:
    by_split = _split_entities(entities)
    return {
        "schema_version": SCHEMA_VERSION,
        "generator": "rablip.synthetic",
        "seed": settings.seed,
        "settings": asdict(settings) | {"distractors": settings.num_distractors},
        "kb_file": KB_NAME,
        "kb_image_dir": KB_IMAGE_DIR,
        "counts": {
            "entities": settings.entities,
            "distractors": settings.num_distractors,
            "kb_items": len(kb_items),
            "images": {split: split_stats[split]["num_images"] for split in SPLITS},
            "questions": {split: split_stats[split]["num_questions"] for split in SPLITS},
        },
        "splits": {
            split: {
                "questions_file": questions_name(split),
                "annotations_file": annotations_name(split),
                "image_split": f"{split}2014",
                "entity_ids": [e.id for e in by_split[split]],
                **split_stats[split],
            }
            for split in SPLITS
        },
        "unseen_entity_ids": {
            "val": [e.id for e in entities if e.role == "unseen_val"],
            "test": [e.id for e in entities if e.role == "unseen_test"],
        },
        "distractor_entity_ids": [e.id for e in entities if e.role == "distractor"],
        "vocabulary": {
            "visual": {key: list(values) for key, values in VISUAL_ATTRIBUTES.items()},
            "facts": {key: list(values) for key, values in HIDDEN_FACTS.items()},
            "variants": {key: list(values) for key, values in VARIANTS.items()},
        },
        "question_kinds": list(QUESTION_KINDS),
        "entities": [entity.to_json() for entity in entities],
    }


def build_world(out_dir: str | Path, settings: WorldSettings | None = None, *, overwrite: bool = False) -> dict:
    """Write a complete world to ``out_dir`` and return its manifest (also saved as ``world.json``).

    Raises DataError when ``out_dir`` exists and is not empty, unless ``overwrite`` is true.
    """
    settings = settings or WorldSettings()
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise DataError(f"{out_dir}: directory exists and is not empty; pass overwrite (--overwrite) or pick another")
    try:
        entities = sample_entities(
            settings.seed, settings.entities, settings.num_distractors, settings.unseen_fraction
        )
    except ValueError as error:
        raise DataError(f"cannot build a world with {settings}: {error}") from error
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        kb_items = _write_kb(staging, entities, settings)
        by_split = _split_entities(entities)
        images = {
            "train": settings.train_images_per_entity,
            "val": settings.eval_images_per_entity,
            "test": settings.eval_images_per_entity,
        }
        split_stats = {split: _write_split(staging, split, by_split[split], images[split], settings) for split in SPLITS}
        manifest = _manifest(entities, settings, kb_items, split_stats)
        if settings.align_images:
            manifest["align"] = {"dir": ALIGN_DIR, **write_align_split(
                staging / ALIGN_DIR, settings.align_images, settings.seed, settings.image_size,
                [e.attributes for e in entities], lambda image, path: save_jpeg(image, path, settings.jpeg_quality))}
        if settings.scene_images_per_entity:
            manifest["scene"] = {"dir": SCENE_DIR, **write_scene_split(
                staging / SCENE_DIR, by_split["test"], entities, settings.scene_images_per_entity, settings.seed,
                settings.image_size, lambda image, path: save_jpeg(image, path, settings.jpeg_quality))}
        write_json(staging / MANIFEST_NAME, manifest, indent=2)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
