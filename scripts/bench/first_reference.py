"""Does a synthetic-world generator read reference 1, or the reference that matches the picture?

    python scripts/bench/first_reference.py --world DIR --eval DIR [--group knowledge/unseen]

For each question of the group in an evaluation of the synthetic world's test split (``run_eval.py`` with
``retrieval.source=index``; its ``retrieval_test.jsonl`` and ``predictions.json``), where the retriever
put the question's relevant item (first, second or third, or lower), and whether the answer was right, or
the fact of another entity among the top three. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rablip.evaluation.vqa_metric import normalize_answer  # noqa: E402
from rablip.synthetic.files import annotations_name, load_manifest  # noqa: E402
from rablip.utils.cli import run_main  # noqa: E402
from rablip.utils.io import iter_jsonl_with_lines, read_json  # noqa: E402


def tally(world: Path, eval_dir: Path, group: str, k: int = 3) -> dict[str, int]:
    """Counts of (rank of the relevant item within the top ``k``, answered right / another top-k entity's fact /
    otherwise) over the questions of ``group``."""
    entities = {e["id"]: e for e in load_manifest(world)["entities"]}
    by_item = {item_id: e for e in entities.values() for item_id in e["kb_ids"].values()}
    annotations = read_json(world / annotations_name("test"))["annotations"]
    ranked = {str(record["id"]): [item["id"] for item in record["items"]]
              for _, record in iter_jsonl_with_lines(eval_dir / "retrieval_test.jsonl", "retrieval cache")}
    answers = {str(p["question_id"]): normalize_answer(p["answer"]) for p in read_json(eval_dir / "predictions.json")}
    counts: Counter[str] = Counter()
    for annotation in annotations:
        if annotation["question_type"] != group:
            continue
        qid, relevant = str(annotation["question_id"]), annotation["relevant_ids"][0]
        top = ranked[qid][:k]
        rank = top.index(relevant) + 1 if relevant in top else 0
        gold = normalize_answer(annotation["answers"][0]["answer"])
        others = {normalize_answer(by_item[i]["facts"].get(annotation["attribute"], "")) for i in top
                  if i in by_item and by_item[i]["id"] != annotation["entity_id"]}
        outcome = "right" if answers.get(qid) == gold else "other_entity" if answers.get(qid) in others else "wrong"
        counts[f"rank{rank}_{outcome}" if rank else f"below{k}_{outcome}"] += 1
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
