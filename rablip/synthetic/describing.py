"""Renderings of invented creatures paired with a text about them, for pre-training the retrieval encoder.

A real RA-BLIP's Q-Former is pre-trained on many image-text pairs before it meets a knowledge base.
The synthetic world has a few dozen entities that training questions ask about; trained on those
alone, the retrieval encoder learns them rather than how a picture matches a description, and finds
the items of entities no training question asks about less often (BENCHMARKS.md, synthetic demo).
So :func:`write_invented_pairs` writes an extra-pairs file (:mod:`rablip.data.extra_pairs`, read
through ``data.extra_pairs``): a rendering of a made-up creature as the query, and the creature's fact
text or caption as a text item to find. No world entity's look or name is drawn, so the world's
unseen entities stay unseen.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from rablip.data.extra_pairs import questions_by_kind
from rablip.data.records import KBItem
from rablip.synthetic.entities import invented_entity, make_names
from rablip.synthetic.files import (
    EXTRA_PAIRS_NAME,
    KB_NAME,
    annotations_name,
    load_manifest,
    questions_name,
    read_json,
    read_jsonl,
)
from rablip.synthetic.questions import asked_attribute, qualified
from rablip.synthetic.render import render_entity
from rablip.synthetic.scenes import scene_with
from rablip.synthetic.viewing import invented_look, look_combinations

_STREAM_NAMES = 9
_STREAM_EXTRA_PAIRS = 10
_STREAM_SCENE_PAIRS = 12
IMAGE_DIR = "images"


class InventedPairs:
    """Draws (rendering, text item) pairs of invented creatures from a caller's random generator."""

    def __init__(self, seed: int, image_size: int, avoid_looks: Iterable[Mapping[str, str]] = (),
                 avoid_names: Iterable[str] = (), names: int = 2000) -> None:
        avoid = set(avoid_names)
        drawn = make_names(np.random.default_rng([seed, _STREAM_NAMES]), names + len(avoid))
        self.names = [name for name in drawn if name not in avoid][:names]
        self.avoided = look_combinations(avoid_looks)
        self.image_size = image_size

    def pair(self, rng: np.random.Generator, facts: bool, asked: str | None = None
             ) -> tuple[Image.Image, KBItem, str | None]:
        """A rendering of a new invented creature and its fact text (``facts``) or its caption, and None; with
        ``asked`` (the attribute the pair's question asks about), a scene of it beside a second invented
        creature (:func:`rablip.synthetic.scenes.scene_with`), and the phrase that names it there."""
        name = self.names[int(rng.integers(len(self.names)))]
        creature = invented_entity(rng, name, invented_look(rng, self.avoided))
        if asked is not None:
            image, phrase, _, _ = scene_with(creature.attributes, lambda: invented_look(rng, self.avoided), asked, rng,
                                             self.image_size)
        else:
            image, phrase = render_entity(creature.attributes, rng, self.image_size), None
        kind = "facts" if facts else "caption"
        text = creature.facts_text() if facts else creature.caption()
        item = KBItem(id=f"invented-{kind}-{name}-{creature.description}", modality="text", text=text,
                      title=name, source="invented")
        return image, item, phrase


def training_questions_by_item_kind(world_dir: str | Path) -> dict[str, list[str]]:
    """The world's training question texts by the kind of item relevant to them: ``text`` (a fact item)
    and ``image`` (an image + caption item); a kind no question has falls back to every question."""
    world_dir = Path(world_dir)
    has_image = {item["id"]: "image" in item for item in read_jsonl(world_dir / KB_NAME)}
    texts = {q["question_id"]: q["question"] for q in read_json(world_dir / questions_name("train"))["questions"]}
    annotations = read_json(world_dir / annotations_name("train"))["annotations"]
    return questions_by_kind(
        (texts[a["question_id"]], ["image" if has_image[i] else "text" for i in a.get("relevant_ids") or []])
        for a in annotations)


def write_invented_pairs(world_dir: str | Path, out_dir: str | Path, count: int, seed: int,
                         scene_share: float = 0.0) -> dict[str, int]:
    """Write ``count`` invented-creature pairs of the world in ``world_dir`` as ``out_dir/pairs.jsonl``
    with their renderings in ``out_dir/images/`` as PNG (lossless: the query sees the rendering's exact
    pixels, as when it was drawn in memory). Record r (its own random stream) is a fact text with a
    training question a text item answers, or (half of them) a caption with one an image item answers; a
    ``scene_share`` of them (drawn from a stream of their own, so the others stay as they are) show the creature
    beside a second one and name it in the question by a visible attribute."""
    world_dir, out_dir = Path(world_dir), Path(out_dir)
    manifest = load_manifest(world_dir)
    entities = manifest["entities"]
    source = InventedPairs(seed, manifest["settings"]["image_size"], [e["attributes"] for e in entities],
                           [e["name"] for e in entities])
    questions = training_questions_by_item_kind(world_dir)
    (out_dir / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    lines = []
    for record in range(count):
        rng = np.random.default_rng([seed, _STREAM_EXTRA_PAIRS, record])
        facts = bool(rng.random() < 0.5)
        pool = questions["text" if facts else "image"]
        scene_rng = np.random.default_rng([seed, _STREAM_SCENE_PAIRS, record])
        if scene_rng.random() < scene_share:
            question = pool[int(scene_rng.integers(len(pool)))]
            image, item, phrase = source.pair(rng, facts, asked_attribute(question) or "")
            question = qualified(question, phrase)
        else:
            image, item, _ = source.pair(rng, facts)
            question = pool[int(rng.integers(len(pool)))]
        image_path = f"{IMAGE_DIR}/{record:06d}.png"
        image.save(out_dir / image_path, format="PNG")
        lines.append(json.dumps({"image": image_path, "question": question,
                                 "item": {"id": item.id, "text": item.text, "title": item.title}},
                                ensure_ascii=False, separators=(",", ":")))
    (out_dir / EXTRA_PAIRS_NAME).write_text("\n".join(lines) + "\n" if lines else "", "utf-8")
    return {"records": count}
