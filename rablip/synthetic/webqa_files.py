"""A small WebQA in the official file formats, generated (no download): for tests, and to rehearse the
WebQA chain (configs/experiment/webqa_pretrain.yaml) on a laptop before the real files are at hand.

:func:`write_webqa` writes ``WebQA_train_val.json`` (train and val records with positive and negative
text and image facts), ``WebQA_test.json`` (unlabelled ``txt_Facts`` / ``img_Facts``), ``imgs.tsv``
(``image_id<TAB>base64 PNG`` per line, image ``i`` on line ``i % 10_000_000`` as in the release) and
``imgs.lineidx`` (each line's byte offset). Facts are shared between questions (negatives come from a
common pool), as in WebQA, so a corpus built from the files must store each fact once.

``missing``, ``truncated`` and ``not_image`` add that many image facts whose image is unusable: an id
with no line in ``imgs.lineidx``, a line cut short, a payload that is valid base64 but no image. They
are listed as negatives of the first train records; :attr:`WebQAFiles.broken` maps each such image id
to its kind and :attr:`WebQAFiles.first_guid` names the record that lists it first.
"""

from __future__ import annotations

import base64
import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

FIRST_IMAGE_ID = 30_000_000
"""Image ids start here; image ``FIRST_IMAGE_ID + i`` sits on line ``i`` of imgs.tsv."""
TOPICS = ["lighthouse", "bridge", "tower", "cathedral", "harbour", "castle", "temple", "stadium"]
COLOURS = ["red", "green", "blue", "yellow", "white", "black"]


@dataclass
class WebQAFiles:
    """Paths of the written files and what the tests need to know about their content."""

    root: Path
    train_val: Path
    test: Path
    tsv: Path
    lineidx: Path
    train_guids: list[str] = field(default_factory=list)
    val_guids: list[str] = field(default_factory=list)
    test_guids: list[str] = field(default_factory=list)
    text_ids: list[str] = field(default_factory=list)
    """Every text fact's snippet_id, once."""
    image_ids: list[str] = field(default_factory=list)
    """Every usable image fact's image id (as a string), once."""
    broken: dict[str, str] = field(default_factory=dict)
    """Image id -> missing | truncated | not_image, for the unusable image facts."""
    first_guid: dict[str, str] = field(default_factory=dict)
    """Fact id -> guid of the first record (in file order, train_val before test) that lists it."""


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, "PNG")
    return buffer.getvalue()


def _noise_png(rng: random.Random) -> bytes:
    """A 16x16 PNG of random pixels: its image data is most of the file, so a cut lands inside it."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (16, 16), bytes(rng.randrange(256) for _ in range(16 * 16 * 3))).save(buffer, "PNG")
    return buffer.getvalue()


def _text_fact(snippet_id: str, topic: str, rng: random.Random) -> dict:
    year = rng.randint(1800, 2000)
    return {"fact": f"The {topic} number {snippet_id} was finished in {year}.",
            "url": f"https://example.org/{snippet_id}", "snippet_id": snippet_id, "title": f"{topic.title()} {snippet_id}"}


def _image_fact(image_id: int, topic: str, colour: str) -> dict:
    return {"image_id": image_id, "title": f"{topic.title()} {image_id}", "caption": f"A {colour} {topic}.",
            "url": f"https://example.org/img/{image_id}", "imgUrl": f"https://example.org/{image_id}.jpg"}


def write_webqa(root: str | Path, n_questions: int = 8, n_test: int = 3, seed: int = 0, *, missing: int = 0,
                truncated: int = 0, not_image: int = 0) -> WebQAFiles:
    """Write a WebQA of ``n_questions`` train/val records (two in three train) and ``n_test`` test records
    under ``root``; see the module docstring for the unusable images."""
    rng = random.Random(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    files = WebQAFiles(root, root / "WebQA_train_val.json", root / "WebQA_test.json", root / "imgs.tsv",
                       root / "imgs.lineidx")
    payloads: list[bytes] = []  # line i of imgs.tsv holds image FIRST_IMAGE_ID + i

    def new_image(topic: str) -> dict:
        colour = rng.choice(COLOURS)
        image_id = FIRST_IMAGE_ID + len(payloads)
        payloads.append(base64.b64encode(_png((rng.randrange(256), rng.randrange(256), rng.randrange(256)))))
        files.image_ids.append(str(image_id))
        return _image_fact(image_id, topic, colour)

    def new_text(topic: str) -> dict:
        fact = _text_fact(f"snip-{len(files.text_ids):04d}", topic, rng)
        files.text_ids.append(fact["snippet_id"])
        return fact

    pool_text = [new_text(rng.choice(TOPICS)) for _ in range(4)]
    pool_images = [new_image(rng.choice(TOPICS)) for _ in range(4)]
    train_val: dict[str, dict] = {}
    for number in range(n_questions):
        topic = TOPICS[number % len(TOPICS)]
        split = "val" if number % 3 == 2 else "train"
        guid = f"d{seed:02d}q{number:04d}"
        image_question = number % 2 == 0
        positives_img = [new_image(topic)] if image_question else []
        positives_txt = [] if image_question else [new_text(topic)]
        record = {"Q": f'"What is the colour of the {topic} in question {number}?"',
                  "A": [f'"The {topic} is {rng.choice(COLOURS)}."'], "Keywords_A": rng.choice(COLOURS),
                  "Qcate": "color" if image_question else "Others", "split": split, "topic": topic,
                  "txt_posFacts": positives_txt, "img_posFacts": positives_img,
                  "txt_negFacts": rng.sample(pool_text, 2) + [new_text(topic)],
                  "img_negFacts": rng.sample(pool_images, 2) + [new_image(topic)]}
        train_val[guid] = record
        (files.train_guids if split == "train" else files.val_guids).append(guid)
    kinds = ["missing"] * missing + ["truncated"] * truncated + ["not_image"] * not_image
    for position, kind in enumerate(kinds):
        if kind == "missing":
            image_id = FIRST_IMAGE_ID + 1_000 + position  # far past the last line of imgs.lineidx
        else:
            image_id = FIRST_IMAGE_ID + len(payloads)
            encoded = base64.b64encode(_noise_png(rng))
            # A line cut short: at a multiple of 4 the base64 is valid and the PNG stops early; one more
            # character and the base64 itself is wrong.
            cut = len(encoded) // 8 * 4 + position % 2
            payloads.append(encoded[:cut] if kind == "truncated"
                            else base64.b64encode(b"this is a text file, not an image"))
        files.broken[str(image_id)] = kind
        holder = train_val[files.train_guids[position % len(files.train_guids)]]
        holder["img_negFacts"].append(_image_fact(image_id, holder["topic"], "grey"))
    test: dict[str, dict] = {}
    for number in range(n_test):
        topic = TOPICS[(number + 3) % len(TOPICS)]
        guid = f"t{seed:02d}q{number:04d}"
        test[guid] = {"Q": f'"Which year was the {topic} of test question {number} finished?"', "Qcate": "Others",
                      "split": "test", "topic": topic,
                      "txt_Facts": [new_text(topic), rng.choice(pool_text)],
                      "img_Facts": [new_image(topic), rng.choice(pool_images)]}
        files.test_guids.append(guid)
    for path, records in ((files.train_val, train_val), (files.test, test)):
        path.write_text(json.dumps(records, indent=1), encoding="utf-8")
        for guid, record in records.items():
            for key in ("txt_posFacts", "txt_negFacts", "img_posFacts", "img_negFacts", "txt_Facts", "img_Facts"):
                for fact in record.get(key, []):
                    files.first_guid.setdefault(fact.get("snippet_id") or str(fact["image_id"]), guid)
    files.image_ids = [image_id for image_id in files.image_ids if image_id not in files.broken]
    offsets, lines, position = [], [], 0
    for line_number, payload in enumerate(payloads):
        line = f"{FIRST_IMAGE_ID + line_number}\t".encode() + payload + b"\n"
        offsets.append(position)
        lines.append(line)
        position += len(line)
    files.tsv.write_bytes(b"".join(lines))
    files.lineidx.write_text("".join(f"{offset}\n" for offset in offsets), encoding="ascii")
    return files


def webqa_texts(*paths: str | Path) -> list[str]:
    """Every question, answer, keyword, fact, caption and title of the WebQA JSON files ``paths`` (the
    corpus a tiny generator's tokenizers are trained on)."""
    texts: list[str] = []
    for path in paths:
        for record in json.loads(Path(path).read_text(encoding="utf-8")).values():
            texts += [record.get("Q", ""), *record.get("A", []), record.get("Keywords_A", "")]
            for key in ("txt_posFacts", "txt_negFacts", "img_posFacts", "img_negFacts", "txt_Facts", "img_Facts"):
                for fact in record.get(key, []):
                    texts += [fact.get("fact") or fact.get("caption", ""), fact.get("title", "")]
    return [text for text in texts if text]
