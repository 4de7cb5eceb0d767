"""File layout of a synthetic world dir, deterministic JSON writing, and reading the manifest back.

```
world_dir/
  world.json                                   manifest (schema version, seed, settings, entities)
  kb.jsonl                                     knowledge base: {"id", "text", "title", "image"?}
  kb_images/{entity_id}.jpg                    the KB image of each entity
  OpenEnded_mscoco_{split}2014_questions.json  OK-VQA questions, split in train / val / test
  mscoco_{split}2014_annotations.json          OK-VQA annotations (+ relevant_ids, entity_id, ...)
  {split}2014/COCO_{split}2014_{image_id:012d}.jpg
  align/                                       the generator's alignment split (aligning.py), same layout
  scene/                                       two-creature scenes of the test entities (scenes.py), same layout
  kb_edited.jsonl, edit/                       written by the knowledge-edit mode (edit.py)
  kb_store/                                    the knowledge-base store (make.py)
  tiny-instructblip-llama/                     the tiny generator checkpoint (tiny_model.py)
  tiny-llava/                                  the tiny LLaVA (RORA) generator, on request (tiny_llava.py)
  extra_pairs/pairs.jsonl, extra_pairs/images/ extra pre-training pairs (describing.py)
```
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rablip.errors import DataError

SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test")
MANIFEST_NAME = "world.json"
KB_NAME = "kb.jsonl"
KB_IMAGE_DIR = "kb_images"
EDITED_KB_NAME = "kb_edited.jsonl"
EDIT_DIR = "edit"
ALIGN_DIR = "align"
SCENE_DIR = "scene"
EDIT_MANIFEST_NAME = "edits.json"
KB_STORE_DIR = "kb_store"
TINY_CHECKPOINT_DIR = "tiny-instructblip-llama"
TINY_LLAVA_DIR = "tiny-llava"
EXTRA_PAIRS_DIR = "extra_pairs"
EXTRA_PAIRS_NAME = "pairs.jsonl"


def questions_name(split: str) -> str:
    """OK-VQA questions file name of ``split``."""
    return f"OpenEnded_mscoco_{split}2014_questions.json"


def annotations_name(split: str) -> str:
    """OK-VQA annotations file name of ``split``."""
    return f"mscoco_{split}2014_annotations.json"


def image_relpath(split: str, image_id: int) -> str:
    """Path of a question image relative to the world dir, as the OK-VQA loader expects it."""
    return f"{split}2014/COCO_{split}2014_{image_id:012d}.jpg"


def write_json(path: Path, payload: Any, *, indent: int | None = None) -> None:
    """Write JSON with a fixed key order and separators (byte-identical for equal payloads)."""
    separators = (",", ": ") if indent else (",", ":")
    path.write_text(json.dumps(payload, ensure_ascii=False, indent=indent, separators=separators) + "\n", "utf-8")


def write_jsonl(path: Path, records: list[dict]) -> None:
    """Write one compact JSON object per line."""
    lines = [json.dumps(record, ensure_ascii=False, separators=(",", ":")) for record in records]
    path.write_text("\n".join(lines) + "\n", "utf-8")


def read_json(path: Path) -> Any:
    """Read a JSON file, raising DataError that names the file when it is missing or malformed."""
    try:
        return json.loads(Path(path).read_text("utf-8"))
    except FileNotFoundError as error:
        raise DataError(f"{path}: file not found; build the world with scripts/make_synthetic.py") from error
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: line {error.lineno}: not valid JSON ({error.msg})") from error


def read_jsonl(path: Path) -> list[dict]:
    """Read a JSONL file, raising DataError that names the file and line on malformed input."""
    if not Path(path).is_file():
        raise DataError(f"{path}: file not found")
    records = []
    for line_number, line in enumerate(Path(path).read_text("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: line {line_number}: not valid JSON ({error.msg})") from error
    return records


def load_manifest(world_dir: str | Path) -> dict:
    """Read ``world.json`` and check that this code understands its schema version."""
    path = Path(world_dir) / MANIFEST_NAME
    manifest = read_json(path)
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if version != SCHEMA_VERSION:
        raise DataError(
            f"{path}: schema_version {version!r} is not {SCHEMA_VERSION}; rebuild the world with "
            "scripts/make_synthetic.py"
        )
    return manifest
