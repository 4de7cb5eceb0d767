"""The main job at a reduced size: scripts/demo.py runs every stage through the real entry points and
writes every artefact and results.json with the keys the README and the checks read. The full-size
targets are measured by the recorded benchmark run (BENCHMARKS.md), not asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANT_KEYS = {"unseen_knowledge_acc", "seen_knowledge_acc", "visual_acc", "noisy_unseen_knowledge_acc"}
RETRIEVAL_VARIANT_KEYS = VARIANT_KEYS | {"hard_noisy_unseen_knowledge_acc"}


def test_demo_runs_every_stage_and_writes_every_artefact(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, "scripts/demo.py", "--entities", "12", "--out", str(out),
                             "--pretrain-steps", "3", "--finetune-steps", "3", "--reading-steps", "5",
                             "--vision-steps", "5", "--align-steps", "3", "--seed", "1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results) >= {"seed", "entities", "wall_seconds", "retrieval", "variants", "knowledge_edit",
                            "stage_seconds"}
    assert (results["seed"], results["entities"]) == (1, 12)
    assert set(results["retrieval"]) == {"recall@1", "recall@5", "recall@1_uninstructed"}
    assert set(results["variants"]) == {"no_retrieval", "ra", "ra_askg"}
    for name, values in results["variants"].items():
        assert set(values) == (VARIANT_KEYS if name == "no_retrieval" else RETRIEVAL_VARIANT_KEYS)
        assert all(0 <= value <= 100 for value in values.values())
    edit = results["knowledge_edit"]
    assert set(edit) == {"edited_questions", "follows_new_fact", "follows_old_fact"}
    assert edit["edited_questions"] > 0 and 0 <= edit["follows_new_fact"] <= edit["edited_questions"]
    assert (out / "world" / "align" / "OpenEnded_mscoco_train2014_questions.json").is_file()
    assert (out / "align" / "final" / "model.safetensors").is_file()
    for variant in results["variants"]:
        assert (out / f"finetune_{variant}" / "final" / "model.safetensors").is_file()
        assert (out / f"eval_{variant}" / "report.html").is_file()
        assert (out / f"eval_{variant}" / "predictions.json").is_file()
    assert (out / "eval_ra_askg_noisy" / "metrics.json").is_file()
    hard = json.loads((out / "eval_ra_askg_hard_noisy" / "metrics.json").read_text())["recipe"]["references"]
    assert (hard["noisy_mode"], hard["noisy_fraction"]) == ("hard", 0.5)
    stages = results["stage_seconds"]
    assert {"world", "pretrain", "eval_ra_hard_noisy", "eval_ra_askg_hard_noisy", "eval_edit"} <= set(stages)
    assert all(seconds >= 0 for seconds in stages.values())
    assert "hard noisy" in result.stdout
    assert (out / "world" / "index" / "retrieval_index.json").is_file()
    assert (out / "world" / "index_edited" / "retrieval_index.json").is_file()
    assert "targets:" in result.stdout and "ra_askg" in result.stdout


def test_knowledge_edit_counts_compare_normalized_answers(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    from demo import knowledge_edit_counts

    (tmp_path / "world" / "edit").mkdir(parents=True)
    (tmp_path / "eval_edit").mkdir()
    questions = {"1": {"old": "forest", "new": "jungle"}, "2": {"old": "1900", "new": "1945"},
                 "3": {"old": "orrin coast", "new": "valdor"}, "4": {"old": "cave", "new": "river"}}
    (tmp_path / "world" / "edit" / "edits.json").write_text(json.dumps({"questions": questions}))
    answers = [{"question_id": 1, "answer": "The jungle."}, {"question_id": 2, "answer": "1900"},
               {"question_id": 3, "answer": "orrin coast"}]
    (tmp_path / "eval_edit" / "predictions.json").write_text(json.dumps(answers))
    assert knowledge_edit_counts(tmp_path) == {"edited_questions": 4, "follows_new_fact": 1, "follows_old_fact": 2}
