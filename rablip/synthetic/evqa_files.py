"""A small Encyclopedic-VQA in the official file formats, generated (no download): for tests, and to rehearse
the E-VQA chain (configs/experiment/evqa_finetune.yaml) on a laptop before the real files are at hand.

:func:`write_evqa` writes, under a data root laid out as configs/data/evqa.yaml's keys say:

- ``data/evqa/{train,val}.csv``: the release's columns (``question``, ``answer``, ``dataset_image_ids``,
  ``dataset_name``, ``dataset_category_id``, ``question_type``, ``wikipedia_url``, ``wikipedia_title``,
  ``evidence``, ``evidence_section_id``, ``evidence_section_title``, ``encyclopedic_vqa_split``,
  ``question_original``, ``wikipedia_url_used_in_train``), one question per row; mostly ``templated``
  questions with their evidence section, plus one ``multi_answer`` ('&&' parts) and one ``2_hop`` row
  (two '|'-separated urls and section ids) per split, so every metric group is exercised;
- question images: entities alternate between ``inaturalist`` (integer ids, resolved through the iNat 2021
  annotation files ``data/inat2021/{train,val}.json``, whose ``images`` arrays name files under
  ``data/inat2021``) and ``landmarks`` (16-hex ids at ``data/landmarks/train/id[0]/id[1]/id[2]/{id}.jpg``);
  each an 8x8 JPEG of its entity's colour, a little changed per image;
- ``data/evqa/encyclopedic_kb_wiki.json``: ``url -> {title, section_titles, section_texts, image_urls,
  image_reference_descriptions, image_section_indices, url}``, one page per entity (an introduction with
  the page's two images, a History and a Description section without images, so each page gives two
  ``image+text`` image items, one ``image+text`` section and two ``text`` sections);
- ``data/evqa/kb_images/``: the pages' images as PNGs, with ``image_map.tsv`` (``URL<TAB>path`` under
  that dir; the pages list protocol-relative ``//upload...`` URLs, as the release does, which the map
  names with ``https:``), for ``data.kb.root`` / ``data.kb.evqa_image_map``.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

COLUMNS = ["question", "answer", "dataset_image_ids", "dataset_name", "dataset_category_id", "question_type",
           "wikipedia_url", "wikipedia_title", "evidence", "evidence_section_id", "evidence_section_title",
           "encyclopedic_vqa_split", "question_original", "wikipedia_url_used_in_train"]
"""The split CSV columns of the release, in its order."""
KINDS = ["castle", "bridge", "tower", "temple", "oak", "fox", "heron", "orchid"]
COLOURS = {"red": (200, 30, 30), "green": (30, 170, 60), "blue": (40, 60, 210), "yellow": (230, 210, 40),
           "white": (235, 235, 235), "black": (20, 20, 20)}
WIKI = "https://en.wikipedia.org/wiki/"
IMAGE_HOST = "//upload.wikimedia.org/evqa/"


@dataclass
class EvqaFiles:
    """Paths of the written files and what the tests need to know about their content."""

    root: Path
    """The data root (``data.root``): the files are under ``root/data``."""
    train: Path
    val: Path
    kb: Path
    image_map: Path
    urls: list[str] = field(default_factory=list)
    """Every page url (one per entity), in file order."""
    train_types: list[str] = field(default_factory=list)
    """question_type of each train row."""
    val_types: list[str] = field(default_factory=list)
    """question_type of each val row."""
    texts: list[str] = field(default_factory=list)
    """Every question, answer and knowledge-base text (the corpus a tiny generator's tokenizers learn)."""


@dataclass
class _Entity:
    number: int
    name: str
    url: str
    colour: str
    year: int
    dataset: str
    category: int


def _save_image(path: Path, colour: tuple[int, int, int], rng: random.Random, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shifted = tuple(max(0, min(255, value + rng.randint(-12, 12))) for value in colour)
    image = Image.new("RGB", (8, 8), shifted)
    image.paste(tuple(255 - value for value in shifted), (2, 2, 6, 6))  # a square in the middle
    image.save(path, fmt)


def _page(entity: _Entity) -> dict:
    titles = [entity.name, "History", "Description"]
    texts = [f"{entity.name} is a {entity.colour} {KINDS[entity.number % len(KINDS)]}.",
             f"{entity.name} was built in {entity.year}.",
             f"The {KINDS[entity.number % len(KINDS)]} {entity.name} is {entity.colour} and white."]
    urls = [f"{IMAGE_HOST}{entity.number}_{index}.png" for index in range(2)]
    return {"title": entity.name, "section_titles": titles, "section_texts": texts, "image_urls": urls,
            "image_reference_descriptions": [f"A {entity.colour} {KINDS[entity.number % len(KINDS)]}.", ""],
            "image_section_indices": [0, 0], "url": entity.url}


def _row(entity: _Entity, question_type: str, split: str, variant: int, second: _Entity | None = None) -> dict:
    page = _page(entity)
    row = {"dataset_name": entity.dataset, "dataset_category_id": str(entity.category),
           "question_type": question_type, "wikipedia_url": entity.url, "wikipedia_title": entity.name,
           "encyclopedic_vqa_split": split, "wikipedia_url_used_in_train": "True" if split == "train" else "False"}
    if question_type == "multi_answer":
        row.update(question="Which colours does this have?", answer=f"{entity.colour}&&white",
                   evidence_section_id="2", evidence_section_title="Description")
    elif question_type == "2_hop" and second is not None:
        row.update(question="In which year was the building of the same colour built?", answer=str(second.year),
                   wikipedia_url=f"{entity.url}|{second.url}", wikipedia_title=f"{entity.name}|{second.name}",
                   evidence_section_id="0|1", evidence_section_title=f"{entity.name}|History")
    elif variant % 2 == 0:
        row.update(question="In which year was this built?", answer=f"{entity.year}|in {entity.year}",
                   evidence=page["section_texts"][1], evidence_section_id="1", evidence_section_title="History")
    else:
        row.update(question="What colour is this?", answer=entity.colour, evidence=page["section_texts"][0],
                   evidence_section_id="0", evidence_section_title=entity.name)
    row["question_original"] = row["question"]
    return row


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([row.get(column, "") for column in COLUMNS])


def write_evqa(root: str | Path, n_entities: int = 6, n_questions: int = 12, seed: int = 0) -> EvqaFiles:
    """Write an E-VQA of ``n_entities`` pages and ``n_questions`` templated rows (one in three val) plus a
    ``multi_answer`` and a ``2_hop`` row per split, under ``root/data`` (see the module docstring)."""
    rng = random.Random(seed)
    root = Path(root)
    data, evqa = root / "data", root / "data" / "evqa"
    files = EvqaFiles(root, evqa / "train.csv", evqa / "val.csv", evqa / "encyclopedic_kb_wiki.json",
                      evqa / "kb_images" / "image_map.tsv")
    names = list(COLOURS)
    entities = []
    for number in range(n_entities):
        kind = KINDS[number % len(KINDS)]
        entities.append(_Entity(number, f"{kind.title()} {chr(ord('A') + number % 26)}{number}",
                                f"{WIKI}{kind.title()}_{number}", names[number % len(names)],
                                rng.randint(1700, 1999), "landmarks" if number % 2 == 0 else "inaturalist",
                                100 + number))
    files.urls = [entity.url for entity in entities]

    pages, map_lines = {}, []
    for entity in entities:
        page = pages[entity.url] = _page(entity)
        for index, url in enumerate(page["image_urls"]):
            relative = f"images/{entity.number}_{index}.png"
            _save_image(files.image_map.parent / relative, COLOURS[entity.colour], rng, "PNG")
            map_lines.append(f"https:{url}\t{relative}\n")
        files.texts += [page["title"], *page["section_titles"], *page["section_texts"],
                        *page["image_reference_descriptions"]]
    files.kb.parent.mkdir(parents=True, exist_ok=True)
    files.kb.write_text(json.dumps(pages, indent=1), encoding="utf-8")
    files.image_map.write_text("".join(map_lines), encoding="utf-8")

    rows: dict[str, list[tuple[dict, _Entity]]] = {"train": [], "val": []}
    for number in range(n_questions):
        split = "val" if number % 3 == 2 else "train"
        entity = entities[number % n_entities]
        rows[split].append((_row(entity, "templated", split, number // n_entities), entity))
    for split in ("train", "val"):
        first, second = entities[len(rows[split]) % n_entities], entities[(len(rows[split]) + 1) % n_entities]
        rows[split].append((_row(first, "multi_answer", split, 0), first))
        rows[split].append((_row(first, "2_hop", split, 0, second), first))

    inat_images: dict[str, list[dict]] = {"train": [], "val": []}
    next_inat = 1000
    for split, split_rows in rows.items():
        for row, entity in split_rows:
            ids = []
            for _ in range(2):  # two images per question (the release has up to five)
                if entity.dataset == "landmarks":
                    image_id = f"{rng.getrandbits(64):016x}"
                    path = data / "landmarks" / "train" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"
                else:
                    image_id, next_inat = str(next_inat), next_inat + 1
                    inat_split = "train" if len(inat_images["train"]) <= len(inat_images["val"]) else "val"
                    file_name = f"{inat_split}/{entity.category:05d}_{entity.name.replace(' ', '_')}/{image_id}.jpg"
                    inat_images[inat_split].append({"id": int(image_id), "file_name": file_name, "width": 8,
                                                    "height": 8})
                    path = data / "inat2021" / file_name
                _save_image(path, COLOURS[entity.colour], rng, "JPEG")
                ids.append(image_id)
            row["dataset_image_ids"] = "|".join(ids)
            files.texts += [row["question"], *row["answer"].replace("&&", "|").split("|")]
        (files.train_types if split == "train" else files.val_types).extend(r["question_type"] for r, _ in split_rows)
        _write_csv(files.train if split == "train" else files.val, [row for row, _ in split_rows])
    for inat_split, images in inat_images.items():
        annotations = {"info": {"year": 2021}, "images": images,
                       "categories": [{"id": e.category, "name": e.name} for e in entities],
                       "annotations": [{"id": each["id"], "image_id": each["id"], "category_id": 0} for each in images]}
        (data / "inat2021").mkdir(parents=True, exist_ok=True)
        (data / "inat2021" / f"{inat_split}.json").write_text(json.dumps(annotations), encoding="utf-8")
    return files
