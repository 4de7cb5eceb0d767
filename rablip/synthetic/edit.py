"""Knowledge-edit mode: change hidden facts of some test entities and write the matching answer key.

A retrieval-augmented model should follow the KB: after the edit, with ``kb_edited.jsonl`` as its
knowledge base, it should give the new answers. Output (next to the world's own files):

* ``kb_edited.jsonl``: the KB with the same ids, the fact items of edited entities rewritten with the
  same template and the new values (image items are unchanged: captions state no facts).
* ``edit/OpenEnded_mscoco_test2014_questions.json`` and ``edit/mscoco_test2014_annotations.json``:
  the affected test questions (knowledge questions about a changed fact) in OK-VQA format, with the
  new answers; the images stay in the world's ``test2014/``.
* ``edit/edits.json``: settings, the changed facts per entity, and question_id -> old / new answer.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from rablip.errors import DataError
from rablip.synthetic.entities import Entity
from rablip.synthetic.files import (
    EDIT_DIR,
    EDIT_MANIFEST_NAME,
    EDITED_KB_NAME,
    KB_NAME,
    SCHEMA_VERSION,
    annotations_name,
    load_manifest,
    questions_name,
    read_json,
    read_jsonl,
    write_json,
    write_jsonl,
)
from rablip.synthetic.questions import annotations_file, is_knowledge, questions_file, ten_answers
from rablip.synthetic.vocab import HIDDEN_FACTS

_STREAM_EDIT = 5


def _pick_edits(
    entities: list[Entity], fraction: float, known_values: dict[str, list[str]], rng: np.random.Generator
) -> dict[str, dict[str, tuple]]:
    """Choose ceil(fraction * n) entities and, for each, a non-empty set of facts with new values.

    New values come from ``known_values`` (values some seen entity has, so the answer word occurred
    in training) when one other than the old value exists there, else from the whole vocabulary.
    """
    count = min(len(entities), max(1, math.ceil(fraction * len(entities))))
    chosen = sorted(int(i) for i in rng.choice(len(entities), size=count, replace=False))
    edits: dict[str, dict[str, tuple]] = {}
    facts = list(HIDDEN_FACTS)
    for index in chosen:
        entity = entities[index]
        n_changed = int(rng.integers(1, len(facts) + 1))
        changed = sorted((facts[int(i)] for i in rng.choice(len(facts), size=n_changed, replace=False)), key=facts.index)
        edits[entity.id] = {}
        for fact in changed:
            old = entity.facts[fact]
            choices = [value for value in known_values[fact] if value != old]
            choices = choices or [value for value in HIDDEN_FACTS[fact] if value != old]
            edits[entity.id][fact] = (old, choices[int(rng.integers(len(choices)))])
    return edits


def edit_world(world_dir: str | Path, *, fraction: float = 0.2, seed: int | None = None) -> dict:
    """Edit the facts of ``fraction`` of the test entities of the world in ``world_dir``.

    ``seed`` defaults to the world's seed. Returns the edit manifest (also written to
    ``edit/edits.json``). Deterministic for a world and (fraction, seed).
    """
    if not 0.0 < fraction <= 1.0:
        raise DataError(f"edit fraction must be in (0, 1], got {fraction}")
    world_dir = Path(world_dir)
    manifest = load_manifest(world_dir)
    seed = int(manifest["seed"]) if seed is None else int(seed)
    entities = {record["id"]: Entity.from_json(record) for record in manifest["entities"]}
    test_entities = [entities[entity_id] for entity_id in manifest["splits"]["test"]["entity_ids"]]
    rng = np.random.default_rng([seed, _STREAM_EDIT])
    seen = [entity for entity in entities.values() if entity.role == "seen"]
    known_values = {fact: [v for v in values if any(e.facts[fact] == v for e in seen)] for fact, values in HIDDEN_FACTS.items()}
    edits = _pick_edits(test_entities, fraction, known_values, rng)

    kb_items = read_jsonl(world_dir / manifest["kb_file"])
    facts_item_owner = {entity.kb_ids["facts"]: entity for entity in entities.values()}
    edited_items = []
    for item in kb_items:
        entity = facts_item_owner.get(item.get("id"))
        if entity is not None and entity.id in edits:
            new_facts = entity.facts | {fact: new for fact, (_, new) in edits[entity.id].items()}
            item = item | {"text": entity.facts_text(new_facts)}
        edited_items.append(item)

    questions = read_json(world_dir / questions_name("test"))["questions"]
    question_by_id = {q["question_id"]: q for q in questions}
    new_questions, new_annotations, answer_changes = [], [], {}
    for annotation in read_json(world_dir / annotations_name("test"))["annotations"]:
        change = edits.get(annotation["entity_id"], {}).get(annotation["attribute"])
        if change is None or not is_knowledge(annotation["question_type"]):
            continue
        old, new = change
        question_id = annotation["question_id"]
        if question_id not in question_by_id:
            raise DataError(f"{world_dir / questions_name('test')}: question_id {question_id} has no question")
        new_questions.append(question_by_id[question_id])
        new_annotations.append(annotation | {"answers": ten_answers(new, rng)})
        answer_changes[str(question_id)] = {
            "old": old,
            "new": new,
            "entity_id": annotation["entity_id"],
            "attribute": annotation["attribute"],
        }

    edit_manifest = {
        "schema_version": SCHEMA_VERSION,
        "world_seed": manifest["seed"],
        "edit_seed": seed,
        "fraction": fraction,
        "kb_file": EDITED_KB_NAME,
        "original_kb_file": KB_NAME,
        "questions_file": f"{EDIT_DIR}/{questions_name('test')}",
        "annotations_file": f"{EDIT_DIR}/{annotations_name('test')}",
        "image_split": "test2014",
        "entities": {
            entity_id: {fact: {"old": old, "new": new} for fact, (old, new) in facts.items()}
            for entity_id, facts in edits.items()
        },
        "questions": answer_changes,
    }
    edit_dir = world_dir / EDIT_DIR
    edit_dir.mkdir(exist_ok=True)
    write_json(edit_dir / questions_name("test"), questions_file("test", new_questions))
    write_json(edit_dir / annotations_name("test"), annotations_file("test", new_annotations))
    write_json(edit_dir / EDIT_MANIFEST_NAME, edit_manifest, indent=2)
    write_jsonl(world_dir / EDITED_KB_NAME, edited_items)
    return edit_manifest
