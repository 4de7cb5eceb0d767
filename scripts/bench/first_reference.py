"""Does a synthetic-world generator read reference 1, or the reference that matches the picture?

    python scripts/bench/first_reference.py --world DIR --eval DIR [--group knowledge/unseen]

For each question of the group in an evaluation of the synthetic world's test split (``run_eval.py`` with
``retrieval.source=index``; its ``config.yaml``, ``retrieval_test.jsonl`` and ``predictions.json``), where the
question's relevant item stood among the ``retrieval.k`` references the generator was shown (first, second,
third, ...; a two-stage snippet holds its entity's text item), and whether the answer was right, or the fact
of another entity shown beside it. A noisy evaluation (``eval.noisy_fraction``) showed the references that
:class:`rablip.retrieval.references.NoisyReferences` drew from the ranking; they are drawn again here with the
evaluation's seed and settings. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rablip.benchmarks import load_split  # noqa: E402
from rablip.config.load import load_config  # noqa: E402
from rablip.data.kb import KBStore  # noqa: E402
from rablip.evaluation.vqa_metric import normalize_answer  # noqa: E402
from rablip.retrieval.cache import cache_paths  # noqa: E402
from rablip.retrieval.references import NoisyReferences  # noqa: E402
from rablip.retrieval.static import read_retrieval, read_retrieval_texts  # noqa: E402
from rablip.synthetic.files import annotations_name, load_manifest  # noqa: E402
from rablip.utils.cli import run_main  # noqa: E402
from rablip.utils.io import read_json  # noqa: E402


def shown_references(eval_dir: Path) -> tuple[dict[str, list[str]], dict[str, set[str]]]:
    """Per question id: the ids of the references the evaluation showed, in their order, and the items each
    reference holds (itself, and a snippet's attached texts)."""
    cfg = load_config(eval_dir / "config.yaml")
    k = cfg.retrieval.k
    results_path = cache_paths(eval_dir, "test")[0]
    ranked = read_retrieval(results_path)
    holds = {item_id: {item_id} for top in ranked.values() for item_id, _ in top}
    for anchors in read_retrieval_texts(results_path).values():
        for anchor, texts in anchors.items():
            holds[anchor].update(texts)
    if not cfg.eval.noisy_fraction:
        return {qid: [i for i, _ in top[:k]] for qid, top in ranked.items()}, holds
    kb = KBStore.open(cfg.data.kb.store_dir, root=cfg.data.kb.root or None)
    noisy = NoisyReferences(kb, cfg.eval.noisy_fraction, cfg.run.seed, images_only=cfg.retrieval.mode == "two_stage",
                            mode=cfg.eval.noisy_mode)
    shown = {}
    for position, example in enumerate(load_split(cfg.data, cfg.eval.split)):
        shown[example.id] = [i for i, _ in noisy(example, position, ranked[example.id], k)]
    return shown, holds


def tally(world: Path, eval_dir: Path, group: str) -> dict[str, int]:
    """Counts of (place of the relevant item among the references shown, answered right / another shown
    entity's fact / otherwise) over the questions of ``group``."""
    entities = {e["id"]: e for e in load_manifest(world)["entities"]}
    by_item = {item_id: e for e in entities.values() for item_id in e["kb_ids"].values()}
    annotations = read_json(world / annotations_name("test"))["annotations"]
    shown, holds = shown_references(eval_dir)
    answers = {str(p["question_id"]): normalize_answer(p["answer"]) for p in read_json(eval_dir / "predictions.json")}
    counts: Counter[str] = Counter()
    for annotation in annotations:
        if annotation["question_type"] != group:
            continue
        qid, relevant = str(annotation["question_id"]), annotation["relevant_ids"][0]
        top = shown[qid]
        place = next((n for n, i in enumerate(top, 1) if relevant in holds.get(i, {i})), 0)
        gold = normalize_answer(annotation["answers"][0]["answer"])
        others = {normalize_answer(by_item[i]["facts"].get(annotation["attribute"], "")) for i in top
                  if i in by_item and by_item[i]["id"] != annotation["entity_id"]}
        outcome = "right" if answers.get(qid) == gold else "other_entity" if answers.get(qid) in others else "wrong"
        counts[f"rank{place}_{outcome}" if place else f"not_shown_{outcome}"] += 1
        counts["questions"] += 1
    return dict(sorted(counts.items()))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", required=True, type=Path)
    parser.add_argument("--eval", required=True, type=Path, dest="eval_dir")
    parser.add_argument("--group", default="knowledge/unseen")
    args = parser.parse_args(argv)
    print(json.dumps(tally(args.world, args.eval_dir, args.group), indent=1))
    return 0


if __name__ == "__main__":
    run_main(main)
