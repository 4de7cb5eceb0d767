"""The small world ``scripts/bench/scale.py`` runs the published sizes on.

The synthetic world (OK-VQA-format questions, a knowledge base of image and text items, its store) at a
few entities, plus what makes a step's work known in advance: a static retrieval results file that gives
every question the same number of image items (so k references are k images, whose patch features the
feature cache holds), and a val split cut to ``questions`` questions for the beam-search timing.
"""

from __future__ import annotations

import json
from pathlib import Path

from rablip.synthetic.make import make_synthetic
from rablip.synthetic.settings import SyntheticSettings, WorldSection

VAL_QUESTIONS = "OpenEnded_mscoco_val2014_questions.json"
VAL_ANNOTATIONS = "mscoco_val2014_annotations.json"
TRAIN_QUESTIONS = "OpenEnded_mscoco_train2014_questions.json"
RETRIEVED_PER_QUESTION = 5


def build_world(out_dir: str | Path, questions: int, entities: int = 6, seed: int = 0) -> dict[str, str]:
    """Build (or reuse) the world in ``out_dir``; the paths the benchmark's overrides need: ``static_file``
    (absolute), ``val_questions`` and ``val_annotations`` (relative to ``out_dir``, the run's data.root)."""
    out_dir = Path(out_dir)
    if not (out_dir / "kb_store").is_dir():
        settings = SyntheticSettings(seed=seed, world=WorldSection(entities=entities))
        make_synthetic(out_dir, settings, parts=("world", "kb"), overwrite=True)
    val = json.loads((out_dir / VAL_QUESTIONS).read_text())
    annotations = json.loads((out_dir / VAL_ANNOTATIONS).read_text())
    kept = val["questions"][:questions]
    ids = {q["question_id"] for q in kept}
    (out_dir / f"scale_{VAL_QUESTIONS}").write_text(json.dumps({**val, "questions": kept}))
    (out_dir / f"scale_{VAL_ANNOTATIONS}").write_text(json.dumps(
        {**annotations, "annotations": [a for a in annotations["annotations"] if a["question_id"] in ids]}))
    image_items = [json.loads(line)["id"] for line in (out_dir / "kb.jsonl").read_text().splitlines()
                   if line.strip() and "image" in json.loads(line)]
    if len(image_items) < RETRIEVED_PER_QUESTION:
        raise ValueError(f"the world has {len(image_items)} image items; {RETRIEVED_PER_QUESTION} are needed")
    question_ids = [q["question_id"] for q in json.loads((out_dir / TRAIN_QUESTIONS).read_text())["questions"]]
    question_ids += [q["question_id"] for q in kept]
    with (out_dir / "scale_retrieval.jsonl").open("w") as handle:
        for number, question_id in enumerate(question_ids):
            picked = [image_items[(number + offset) % len(image_items)] for offset in range(RETRIEVED_PER_QUESTION)]
            items = [{"id": item, "score": 1.0 - rank / 10} for rank, item in enumerate(picked)]
            handle.write(json.dumps({"id": str(question_id), "items": items}) + "\n")
    return {"static_file": str((out_dir / "scale_retrieval.jsonl").resolve()), "val_questions": f"scale_{VAL_QUESTIONS}",
            "val_annotations": f"scale_{VAL_ANNOTATIONS}"}
