"""A small InfoSeek in the official file formats, with a WIT-style knowledge base, generated (no download):
for tests, and to rehearse the RORA-VLM chain (configs/experiment/infoseek_pretrain.yaml) on a laptop.

:func:`write_infoseek` writes, under ``root`` (``{data.root}/data``, where configs/data/infoseek.yaml looks):

- ``infoseek/infoseek_train.jsonl`` (and ``infoseek_train_1k.jsonl``, the fine-tuning sample that
  infoseek_finetune.yaml reads: here the whole train split) and ``infoseek/infoseek_val.jsonl``, records
  ``{data_id, image_id ("oven_..."), question, answer, answer_eval, data_split}``; numerical questions carry
  ``answer_eval`` as ``[{"wikidata": value, "range": [lo, hi]}]``; val alternates ``val_unseen_question`` and
  ``val_unseen_entity``;
- ``infoseek/infoseek_val_qtype.jsonl`` (``data_id, question_type``: String / Numerical / Time) and
  ``infoseek/infoseek_{train,val}_withkb.jsonl`` (``data_id, entity_id, entity_text``: each question's entity);
- ``infoseek/images/{image_id}.jpg``, the question images (the default ``data.val.image_pattern``);
- ``wit/wit_kb.tsv``, the knowledge base in WIT's columns (``page_title``, ``reference_description``,
  ``image_url``): per entity one image row (``images/<entity>.png`` under ``wit/``, the entity's title and
  description) and text-only rows (empty ``image_url``: the title and one fact each), so that two-stage
  retrieval has image items for stage 1 and text items for stage 2.

Each entity is a solid colour with a shape of a second colour, so a tiny encoder can tell them apart; a
question image is its entity's picture with a small offset.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

NAMES = ["alder", "birch", "cedar", "delta", "ember", "fjord", "grove", "heath", "islet", "juniper", "kestrel",
         "larch"]
KINDS = ["castle", "tower", "bridge", "lighthouse", "temple", "harbour"]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220), "yellow": (230, 220, 30),
           "white": (245, 245, 245), "black": (15, 15, 15)}
IMAGE_SIZE = 32


@dataclass
class InfoSeekFiles:
    """Paths of the written files and what the tests need to know about their content."""

    root: Path
    train: Path
    train_1k: Path
    val: Path
    qtypes: Path
    images: Path
    kb_tsv: Path
    entities: list[str] = field(default_factory=list)
    """Entity titles, one image row and ``facts`` text rows each in the KB."""
    train_ids: list[str] = field(default_factory=list)
    val_ids: list[str] = field(default_factory=list)


def _entity_image(background: tuple[int, int, int], shape: tuple[int, int, int], index: int, shift: int) -> Image.Image:
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), background)
    draw = ImageDraw.Draw(image)
    low, high = 6 + shift, 22 + shift
    if index % 2:
        draw.ellipse((low, low, high, high), fill=shape)
    else:
        draw.rectangle((low, low, high, high), fill=shape)
    return image


def _entities(n_entities: int, rng: random.Random) -> list[dict]:
    colours = list(COLOURS)
    entities = []
    for index in range(n_entities):
        name = f"{NAMES[index % len(NAMES)].title()} {KINDS[index % len(KINDS)].title()}"
        if index >= len(NAMES):
            name += f" {index // len(NAMES) + 1}"
        background, shape = colours[index % len(colours)], colours[(index // len(colours) + index + 1) % len(colours)]
        entities.append({"title": name, "kind": KINDS[index % len(KINDS)], "index": index, "background": background,
                         "shape": shape, "year": rng.randint(1500, 1990), "height": rng.randint(10, 300),
                         "city": NAMES[(index + 5) % len(NAMES)].title() + " City"})
    return entities


def _questions(entity: dict) -> list[tuple[str, list[str], list, str]]:
    """(question, answer, answer_eval, question_type) about ``entity``."""
    height = entity["height"]
    return [(f"In which year was this {entity['kind']} built?", [str(entity["year"])], [str(entity["year"])], "Time"),
            (f"In which city is this {entity['kind']}?", [entity["city"]], [entity["city"], entity["city"].lower()],
             "String"),
            (f"How tall is this {entity['kind']} in metres?", [str(height)],
             [{"wikidata": float(height), "range": [height * 0.9, height * 1.1]}], "Numerical")]


def _facts(entity: dict) -> list[str]:
    return [f"{entity['title']} was built in {entity['year']}.",
            f"{entity['title']} stands in {entity['city']}.",
            f"{entity['title']} is {entity['height']} metres tall."]


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")


def write_infoseek(root: str | Path, n_entities: int = 6, n_questions: int = 12, seed: int = 0) -> InfoSeekFiles:
    """Write the InfoSeek files and the WIT-style KB under ``root`` (see the module docstring): ``n_entities``
    entities and ``n_questions`` train and as many val questions, spread over the entities in turn (and over
    the three question types: from ``n_questions`` > ``n_entities`` on, every type is asked)."""
    root, rng = Path(root), random.Random(seed)
    data, wit = root / "infoseek", root / "wit"
    images, kb_images = data / "images", wit / "images"
    for folder in (images, kb_images):
        folder.mkdir(parents=True, exist_ok=True)
    entities = _entities(n_entities, rng)
    files = InfoSeekFiles(root=root, train=data / "infoseek_train.jsonl", train_1k=data / "infoseek_train_1k.jsonl",
                          val=data / "infoseek_val.jsonl", qtypes=data / "infoseek_val_qtype.jsonl", images=images,
                          kb_tsv=wit / "wit_kb.tsv", entities=[e["title"] for e in entities])
    with files.kb_tsv.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["page_title", "reference_description", "image_url"])
        for entity in entities:
            picture = f"images/entity_{entity['index']:03d}.png"
            _entity_image(COLOURS[entity["background"]], COLOURS[entity["shape"]], entity["index"], 0).save(
                wit / picture)
            writer.writerow([entity["title"], f"A {entity['background']} {entity['kind']} with a {entity['shape']} "
                                              f"sign, in {entity['city']}.", picture])
            for fact in _facts(entity):
                writer.writerow([entity["title"], fact, ""])
    image_number = 0
    splits: dict[str, list[dict]] = {"train": [], "val": []}
    qtypes: list[dict] = []
    labels: dict[str, list[dict]] = {"train": [], "val": []}
    for split, records in splits.items():
        for number in range(n_questions):
            entity = entities[number % n_entities]
            question, answer, answer_eval, qtype = _questions(entity)[(number + number // n_entities) % 3]
            image_id = f"oven_{image_number:08d}"
            image_number += 1
            _entity_image(COLOURS[entity["background"]], COLOURS[entity["shape"]], entity["index"],
                          rng.randint(-2, 2)).save(images / f"{image_id}.jpg", quality=95)
            data_id = f"infoseek_{split}_{number:08d}"
            data_split = split if split == "train" else ("val_unseen_question", "val_unseen_entity")[number % 2]
            records.append({"data_id": data_id, "image_id": image_id, "question": question, "answer": answer,
                            "answer_eval": answer_eval, "data_split": data_split})
            labels[split].append({"data_id": data_id, "entity_id": f"Q{1000 + entity['index']}",
                                  "entity_text": entity["title"]})
            if split == "val":
                qtypes.append({"data_id": data_id, "question_type": qtype})
    files.train_ids = [r["data_id"] for r in splits["train"]]
    files.val_ids = [r["data_id"] for r in splits["val"]]
    _write_jsonl(files.train, splits["train"])
    _write_jsonl(files.train_1k, splits["train"])
    _write_jsonl(files.val, splits["val"])
    _write_jsonl(files.qtypes, qtypes)
    for split, records in labels.items():  # infoseek_{train,val}_withkb.jsonl: each question's entity
        _write_jsonl(data / f"infoseek_{split}_withkb.jsonl", records)
    return files


def infoseek_texts(files: InfoSeekFiles) -> list[str]:
    """Every question, answer, KB title and KB text of ``files`` (the corpus a tiny model's tokenizers are
    trained on)."""
    texts: list[str] = []
    for path in (files.train, files.val):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            texts += [record["question"], *record["answer"]]
    with files.kb_tsv.open(encoding="utf-8", newline="") as handle:
        for row in list(csv.reader(handle, delimiter="\t"))[1:]:
            texts += row[:2]
    return [text for text in texts if text]
