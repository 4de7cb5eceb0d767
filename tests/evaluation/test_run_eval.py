"""run_eval.py end to end on a tiny synthetic world: official-format predictions that rablip-score
scores the same, metrics.json with its recipe, the report, live-index retrieval metrics, noisy
references, multiple-choice likelihood ranking and answers gathered from two real ranks."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from rablip.benchmarks import load_split
from rablip.benchmarks.cli import score_main
from rablip.config import load_config
from rablip.data.images import ImageLoader
from rablip.data.kb import KBStore
from rablip.data.samples import make_qa_sample
from rablip.evaluation.predict import choose_answers
from rablip.models.factory import load_generator
from rablip.models.processing import build_collator
from rablip.retrieval.references import NoisyReferences, noise_count
from rablip.stages.encode_kb import encode_knowledge_base
from rablip.stages.evaluate import evaluate
from tests.retrieval.tiny_world import FINETUNE_WORLD, build_world, make_tiny_world, one_thread
from tests.training.launch import FINETUNE, finetune_args, run

EVAL_CONFIG = "configs/experiment/synthetic_eval.yaml"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A tiny world and a generator fine-tuned on it for a few steps (its final/ dir)."""
    root = tmp_path_factory.mktemp("eval")
    build_world(root / "world", *FINETUNE_WORLD)
    result = run(FINETUNE, finetune_args(root / "world", root / "ft", "train.max_steps=4", "train.batch_size=4"))
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def eval_config(root: Path, out: Path, *extra: str):
    args = [f"data.root={root / 'world'}", f"run.output_dir={out}",
            f"eval.checkpoint={root / 'ft' / 'final'}", "retrieval.source=gold", "eval.batch_size=8", *extra]
    return load_config(str(ROOT / EVAL_CONFIG), args)


def test_eval_writes_official_predictions_metrics_and_report(tuned, tmp_path):
    out = tmp_path / "eval"
    with one_thread():
        assert evaluate(eval_config(tuned, out, "eval.k_sweep=[0,1]", "eval.gallery_size=6")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    examples = load_split(eval_config(tuned, out).data, "test")
    assert metrics["num_questions"] == len(examples)
    assert set(metrics["accuracy_vs_k"]) == {"0", "1", "3"}
    recipe = metrics["recipe"]
    assert recipe["config"]["eval"]["checkpoint"] == str(tuned / "ft" / "final")
    assert set(recipe["checkpoint"]["sha256"]) == {"config.json", "model.safetensors"}
    assert recipe["metric"]["lemmatize"] is False and recipe["references"]["source"] == "gold"
    assert set(metrics["per_group"]) >= {"knowledge/seen", "knowledge/unseen", "visual"}

    predictions = json.loads((out / "predictions.json").read_text())
    assert sorted(p["question_id"] for p in predictions) == sorted(int(ex.id) for ex in examples)
    assert all(isinstance(p["answer"], str) for p in predictions)
    # The official-format file scores the same through rablip-score, with no model involved.
    split = eval_config(tuned, out).data.test
    assert score_main(["okvqa", "--questions", split.path, "--annotations", split.annotations, "--predictions",
                       str(out / "predictions.json"), "--output", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["overall"] == metrics["scores"]["overall"]

    page = (out / "report.html").read_text()
    assert len(re.findall(r'class="card (?:right|partly|wrong)"', page)) == 6 and "accuracy_vs_k.png" in page
    assert (out / "report_files" / "accuracy_vs_k.png").stat().st_size > 0


def test_eval_with_the_live_index_reports_retrieval_metrics(tmp_path):
    with one_thread():
        cfg = make_tiny_world(tmp_path)
        encode_knowledge_base(cfg, show_progress=False)
        out = tmp_path / "eval"
        eval_cfg = load_config(str(ROOT / EVAL_CONFIG), [
            f"data.root={tmp_path / 'world'}", f"run.output_dir={out}",
            f"model.fusion.checkpoint={tmp_path / 'encoder'}", f"retrieval.index_dir={tmp_path / 'index'}",
            f"eval.checkpoint={tmp_path / 'world' / 'tiny-instructblip-llama'}",
            "eval.batch_size=8", "eval.report=false"])
        assert evaluate(eval_cfg) == 0
        only = tmp_path / "retrieval_only"
        assert evaluate(replace_output(eval_cfg, only, retrieval_only=True)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    alone = json.loads((only / "metrics.json").read_text())
    assert alone["retrieval"] == metrics["retrieval"] and "scores" not in alone
    assert not (only / "predictions.json").exists()
    retrieval = metrics["retrieval"]
    assert {"recall@1", "recall@5", "recall@10", "mrr", "precision@1"} <= set(retrieval)
    assert 0 <= retrieval["recall@1"] <= retrieval["recall@10"] <= 100
    assert metrics["recipe"]["index"]["layout"]["encoder_fingerprint"]
    assert (out / "retrieval_test.jsonl").is_file() and not (out / "report.html").exists()


def replace_output(cfg, out: Path, **eval_changes):
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, output_dir=str(out)),
                               eval=dataclasses.replace(cfg.eval, **eval_changes))


def test_noisy_references_keep_the_best_and_mix_in_other_entities(tuned):
    cfg = eval_config(tuned, tuned / "unused")
    kb = KBStore.open(cfg.data.kb.store_dir, root=cfg.data.kb.root)
    example = next(ex for ex in load_split(cfg.data, "test") if ex.relevant_ids)
    ranked = [(example.relevant_ids[0], 0.9), ("x1", 0.5), ("x2", 0.4)]
    noisy = NoisyReferences(kb, 0.5, seed=3)
    mixed = noisy(example, 5, ranked, 3)
    assert noise_count(0.5, 3) == 2 and len(mixed) == 3
    assert (example.relevant_ids[0], 0.9) in mixed and ("x1", 0.5) not in mixed
    titles = {item.title for item in kb.get_many(example.relevant_ids)}
    added = [item_id for item_id, score in mixed if score is None]
    assert len(added) == 2 and not {item.title for item in kb.get_many(added)} & titles
    assert noisy(example, 5, ranked, 3) == mixed, "seeded by the question's position"
    orders = {tuple(noisy(example, position, ranked, 3)).index((example.relevant_ids[0], 0.9))
              for position in range(12)}
    assert len(orders) > 1, "the kept reference is not always first"


def test_multiple_choice_picks_the_choice_with_the_lowest_mean_token_loss(tuned):
    cfg = eval_config(tuned, tuned / "unused")
    torch.manual_seed(0)
    model = load_generator(cfg, cfg.eval.checkpoint).eval()
    collator = build_collator(cfg, model, 0)
    loader = ImageLoader(None)
    examples = load_split(cfg.data, "test")[:5]
    choices = [["red", "blue whale", "seven"], ["green", "tall"], ["a", "b", "c", "d"], ["left", "right"],
               ["one", "two", "three"]]
    samples = []
    for example, options in zip(examples, choices, strict=True):
        sample = make_qa_sample(example, [], loader.load)
        sample.choices = options
        samples.append(sample)
    picked = choose_answers(model, collator, samples, batch_size=2)
    train = collator.with_mode("train")
    for sample, choice in zip(samples, picked, strict=True):
        losses = []
        for option in sample.choices:
            sample.target = option
            batch = train([sample])
            with torch.no_grad():
                losses.append(float(model(**{k: v for k, v in batch.items() if k != "sample_weight"}).per_sample_loss))
        assert choice == min(range(len(losses)), key=losses.__getitem__), losses


GATHER_SCRIPT = """
import json, sys
import torch.distributed as dist
from rablip.evaluation.gather import gather_in_order, shard_bounds
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
total = int(sys.argv[1])
start, end = shard_bounds(total, rank, world)
gathered = gather_in_order([(i, f"answer-{i}-from-{rank}") for i in range(start, end)], total)
if rank == 0:
    print(json.dumps(gathered))
dist.destroy_process_group()
"""


@pytest.mark.parametrize("total", [7, 1])
def test_answers_from_two_ranks_are_gathered_once_each_in_order(tmp_path, total):
    script = tmp_path / "gather.py"
    script.write_text(GATHER_SCRIPT)
    result = run(str(script), [str(total)], processes=2, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    gathered = json.loads(result.stdout.strip().splitlines()[-1])
    assert [int(value.split("-")[1]) for value in gathered] == list(range(total))
    assert {value.split("-")[-1] for value in gathered} == ({"0", "1"} if total > 1 else {"1"})


def test_run_eval_on_two_ranks_matches_one_process(tuned, tmp_path):
    args = [f"data.root={tuned / 'world'}", f"eval.checkpoint={tuned / 'ft' / 'final'}", "retrieval.source=gold", "eval.batch_size=8",
            "eval.report=false"]
    one = run("run_eval.py", ["--config", EVAL_CONFIG, *args, f"run.output_dir={tmp_path / 'one'}"], timeout=180)
    two = run("run_eval.py", ["--config", EVAL_CONFIG, *args, f"run.output_dir={tmp_path / 'two'}"], processes=2,
              timeout=180)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr[-2000:], two.stderr[-2000:])
    first = json.loads((tmp_path / "one" / "predictions.json").read_text())
    second = json.loads((tmp_path / "two" / "predictions.json").read_text())
    assert len(second) == len({p["question_id"] for p in second}) == len(first)
    assert second == first
