"""The main job: the synthetic knowledge-VQA experiment, end to end on a CPU.

    python scripts/demo.py [--seed S] [--entities N] [--out DIR] [--jobs J] [--rora]

Runs rablip's own entry points with ``configs/experiment/synthetic_*.yaml`` (no separate code path),
each as a subprocess with its log in ``DIR/logs/``:

1. make the synthetic world (``scripts/make_synthetic.py``): its OK-VQA files, the knowledge-base store,
   the tiny generator (tokenizers trained on the world; its vision encoder warms up on renderings of
   invented creatures, its LLM on reading texts about them, none of them world entities) and the
   extra pre-training pairs (renderings of invented creatures with their fact texts or captions);
2. pre-train the Q-Former and fusion encoder (``run_pretrain.py``), the vision encoder frozen.
   ``model.export_generator`` saves the generator with the pre-trained query tokens and Q-Former
   for the next stage to start from;
3. encode the knowledge base and build the index (``scripts/encode_kb.py``), and score retrieval
   with and without the question instructing the Q-Former (``run_eval.py eval.retrieval_only=true``);
4. align the generator to say what it sees (``run_finetune.py`` with ``synthetic_align.yaml``): visual
   questions about invented creatures from the world's ``align/`` split, no references, as BLIP-2's
   second stage and InstructBLIP's instruction data did for the real checkpoints;
5. fine-tune three generators from the same aligned generator and pre-trained encoder (``run_finetune.py``):
   ``no_retrieval`` (question image and question only), ``ra`` (the retriever's top k, clean) and
   ``ra_askg`` (ASKG: noise ratio 0.5, selection weight 0.1, plus a random noise snippet);
6. evaluate each on the test split (``run_eval.py``) with clean retrieval, with noisy retrieval
   (half of the k references replaced by random knowledge-base items) and with hard-noisy retrieval
   (``eval.noisy_mode=hard``: the same half replaced by the retriever's own next-ranked wrong items);
7. knowledge edit: change facts of 20% of the test entities in the knowledge base, rebuild the store
   and the index (no retraining) and answer the affected questions again with ``ra_askg``;
8. with ``--rora`` (off by default; nothing above changes): RORA-VLM's variant, the world's tiny LLaVA
   (``make_synthetic.py --only ...,llava``) fine-tuned with ``synthetic_rora_finetune.yaml`` (two-stage
   snippets, visual token refinement, a noise snippet; LoRA) and evaluated with ``synthetic_rora_eval.yaml``
   (``results.json``: ``rora``), also with hard-noisy retrieval.

Writes ``DIR/results.json`` (with each job's wall time in ``stage_seconds``) and prints one table; each
evaluation's ``report.html`` is linked.
Independent jobs run ``--jobs`` at a time (default 2), each on one CPU thread.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rablip.errors import RablipError  # noqa: E402
from rablip.evaluation.vqa_metric import normalize_answer  # noqa: E402
from rablip.utils.cli import run_main  # noqa: E402
from rablip.utils.io import atomic_write_json, read_json  # noqa: E402

EXPERIMENTS = "configs/experiment"
VARIANTS = {
    "no_retrieval": ["retrieval.source=none", "askg.enabled=false", "noise.random_snippets=0",
                     "noise.counterfactual=0"],
    "ra": ["retrieval.source=index", "askg.enabled=false", "noise.random_snippets=0", "noise.counterfactual=0"],
    "ra_askg": ["retrieval.source=index", "askg.enabled=true", "askg.noise_ratio=0.5", "askg.weight=0.1",
                "askg.negatives=hard", "noise.random_snippets=1", "noise.counterfactual=1.0",
                "noise.counterfactual_types=[knowledge/seen,knowledge/unseen]"],
}
PRETRAIN_BATCH = 32
"""train.batch_size of configs/experiment/synthetic_pretrain.yaml."""
NOISY_FRACTION = 0.5
EDIT_FRACTION = 0.2
TARGETS = {
    "ra_askg unseen knowledge >= 80": lambda r: r["variants"]["ra_askg"]["unseen_knowledge_acc"] >= 80,
    "no_retrieval unseen knowledge <= 25": lambda r: r["variants"]["no_retrieval"]["unseen_knowledge_acc"] <= 25,
    "visual >= 90 for every variant": lambda r: all(v["visual_acc"] >= 90 for v in r["variants"].values()),
    "noisy: ra_askg loses <= 10 and beats ra": lambda r: (
        r["variants"]["ra_askg"]["unseen_knowledge_acc"] - r["variants"]["ra_askg"]["noisy_unseen_knowledge_acc"]
        <= 10 and r["variants"]["ra_askg"]["noisy_unseen_knowledge_acc"]
        > r["variants"]["ra"]["noisy_unseen_knowledge_acc"]),
    "recall@1 >= 90 and above uninstructed": lambda r: (
        r["retrieval"]["recall@1"] >= 90 and r["retrieval"]["recall@1"] > r["retrieval"]["recall@1_uninstructed"]),
    "knowledge edit follows new fact >= 80%": lambda r: (
        r["knowledge_edit"]["follows_new_fact"] >= 0.8 * r["knowledge_edit"]["edited_questions"]),
    "wall time <= 15 min": lambda r: r["wall_seconds"] <= 900,
}


@dataclass
class Job:
    """One entry-point run: its command line, the jobs it waits for, and its log file."""

    name: str
    argv: list[str]
    after: list[str] = field(default_factory=list)


class JobRunner:
    """Runs jobs as subprocesses, up to ``parallel`` at a time, each once its dependencies succeeded."""

    def __init__(self, logs: Path, parallel: int) -> None:
        self.logs = logs
        self.parallel = parallel
        self.durations: dict[str, float] = {}

    def run(self, jobs: list[Job]) -> None:
        base_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                    "WANDB_MODE": "disabled", "ACCELERATE_USE_CPU": os.environ.get("ACCELERATE_USE_CPU", "true")}
        pending, running = list(jobs), {}
        self.logs.mkdir(parents=True, exist_ok=True)
        while pending or running:
            for job in [j for j in pending if all(d in self.durations for d in j.after)]:
                if len(running) >= self.parallel:
                    break
                pending.remove(job)
                log = (self.logs / f"{job.name}.log").open("w")
                # A job that starts alone with nothing else ready (pre-training) gets every thread.
                ready = [j for j in pending if all(d in self.durations for d in j.after)]
                threads = str(self.parallel if not running and not ready else 1)
                print(f"  start  {job.name}", flush=True)
                process = subprocess.Popen([sys.executable, *job.argv], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                           env={**base_env, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
                running[job.name] = (process, time.time(), log)
            time.sleep(0.2)
            for name, (process, started, log) in list(running.items()):
                if process.poll() is None:
                    continue
                log.close()
                del running[name]
                if process.returncode != 0:
                    for other, _, other_log in running.values():
                        other.kill()
                        other_log.close()
                    tail = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()[-15:]
                    raise RablipError(f"the demo stage {name} failed (exit {process.returncode}); its log is "
                                      f"{self.logs / name}.log:\n" + "\n".join(tail))
                self.durations[name] = time.time() - started
                print(f"  done   {name} ({self.durations[name]:.0f} s)", flush=True)


def plan(out: Path, seed: int, entities: int, pretrain_steps: int | None, finetune_steps: int | None,
         reading_steps: int | None = None, vision_steps: int | None = None,
         align_steps: int | None = None, rora: bool = False) -> list[Job]:
    """Every job of the experiment, in an order that respects the dependencies."""
    world = out / "world"
    common = [f"run.seed={seed}", f"data.root={world}", f"model.fusion.checkpoint={out / 'pretrain' / 'final'}",
              f"retrieval.index_dir={world / 'index'}"]

    def stage(script: str, config: str, run_dir: str, *extra: str) -> list[str]:
        return [script, "--config", f"{EXPERIMENTS}/synthetic_{config}.yaml", *common,
                f"run.output_dir={out / run_dir}", *extra]

    pretrain = [f"train.max_steps={pretrain_steps}"] if pretrain_steps else []
    build = ["--seed", str(seed), "--entities", str(entities)]
    if reading_steps is not None:
        build += ["--reading-steps", str(reading_steps)]
    if vision_steps is not None:
        build += ["--vision-steps", str(vision_steps)]
    if pretrain_steps:
        # at most every sample of a shortened pre-training is an extra pair
        build += ["--extra-pairs", str(pretrain_steps * PRETRAIN_BATCH)]
    if rora:
        build += ["--only", "world,kb,checkpoint,extra_pairs,llava"]
    finetune = [f"train.max_steps={finetune_steps}"] if finetune_steps else []
    align = [f"train.max_steps={align_steps}", f"train.save_every={align_steps}"] if align_steps else []
    jobs = [
        Job("world", ["scripts/make_synthetic.py", "--out", str(world), *build]),
        Job("pretrain", stage("run_pretrain.py", "pretrain", "pretrain", *pretrain), ["world"]),
        Job("index", ["scripts/encode_kb.py", "--config", f"{EXPERIMENTS}/synthetic_eval.yaml", *common],
            ["pretrain"]),
        Job("align", stage("run_finetune.py", "align", "align",
                           f"model.checkpoint={out / 'pretrain' / 'final' / 'generator'}", *align), ["pretrain"]),
    ]
    retrieval = [
        Job("retrieval", stage("run_eval.py", "eval", "retrieval", "eval.retrieval_only=true"), ["index"]),
        Job("retrieval_uninstructed", stage("run_eval.py", "eval", "retrieval_uninstructed",
                                            "eval.retrieval_only=true", "retrieval.instruct_queries=false"),
            ["index"]),
    ]
    # ra_askg's fine-tuning is the longest job: it starts first, the others share the second core.
    for variant in sorted(VARIANTS, key=lambda name: name != "ra_askg"):
        overrides = VARIANTS[variant]
        checkpoint = f"eval.checkpoint={out / f'finetune_{variant}' / 'final'}"
        source = [o for o in overrides if o.startswith("retrieval.source")]
        start = f"model.checkpoint={out / 'align' / 'final'}"
        jobs.append(Job(f"finetune_{variant}", stage("run_finetune.py", "finetune", f"finetune_{variant}", start,
                                                     *overrides, *finetune), ["index", "align"]))
        if variant == "ra_askg":
            jobs += retrieval
        jobs.append(Job(f"eval_{variant}", stage("run_eval.py", "eval", f"eval_{variant}", checkpoint, *source),
                        [f"finetune_{variant}"]))
        if variant != "no_retrieval":
            jobs.append(Job(f"eval_{variant}_noisy", stage("run_eval.py", "eval", f"eval_{variant}_noisy", checkpoint,
                                                           *source, f"eval.noisy_fraction={NOISY_FRACTION}",
                                                           "eval.k_sweep=[]"), [f"finetune_{variant}"]))
            jobs.append(hard_noisy_job(stage, "eval", variant, checkpoint, *source))
    edited = [f"data.kb.path={world / 'kb_edited.jsonl'}", f"data.kb.store_dir={world / 'kb_store_edited'}",
              f"retrieval.index_dir={world / 'index_edited'}"]
    jobs += [
        # The edit writes new files beside the world's own, so it and its index need only the encoder.
        Job("edit", ["scripts/make_synthetic.py", "--edit", str(world), "--edit-fraction", str(EDIT_FRACTION)],
            ["index"]),
        Job("edit_kb", ["scripts/build_kb.py", "--config", f"{EXPERIMENTS}/synthetic_eval.yaml", *common, *edited],
            ["edit"]),
        Job("edit_index", ["scripts/encode_kb.py", "--config", f"{EXPERIMENTS}/synthetic_eval.yaml", *common,
                           *edited], ["edit_kb"]),
        Job("eval_edit", stage("run_eval.py", "eval", "eval_edit", *edited,
                               f"eval.checkpoint={out / 'finetune_ra_askg' / 'final'}", "eval.k_sweep=[]",
                               f"data.test.path={world / 'edit' / 'OpenEnded_mscoco_test2014_questions.json'}",
                               f"data.test.annotations={world / 'edit' / 'mscoco_test2014_annotations.json'}"),
            ["edit_index", "finetune_ra_askg"]),
    ]
    if rora:
        jobs += [Job("finetune_rora", stage("run_finetune.py", "rora_finetune", "finetune_rora", *finetune), ["index"]),
                 Job("eval_rora", stage("run_eval.py", "rora_eval", "eval_rora",
                                        f"eval.checkpoint={out / 'finetune_rora' / 'final'}"), ["finetune_rora"]),
                 hard_noisy_job(stage, "rora_eval", "rora", f"eval.checkpoint={out / 'finetune_rora' / 'final'}")]
    return jobs


def hard_noisy_job(stage: Callable[..., list[str]], config: str, variant: str, *overrides: str) -> Job:
    """``eval_<variant>_hard_noisy``: the variant's evaluation with the noisy fraction of its references replaced
    by the retriever's own next-ranked wrong items (``eval.noisy_mode=hard``)."""
    name = f"eval_{variant}_hard_noisy"
    return Job(name, stage("run_eval.py", config, name, *overrides, f"eval.noisy_fraction={NOISY_FRACTION}",
                           "eval.noisy_mode=hard", "eval.k_sweep=[]"), [f"finetune_{variant}"])


def group_scores(eval_dir: Path) -> dict[str, float]:
    """Accuracy per question group (knowledge/seen, knowledge/unseen, visual, naming) of one evaluation."""
    return read_json(eval_dir / "metrics.json", "evaluation metrics")["per_group"]


def knowledge_edit_counts(out: Path) -> dict[str, int]:
    """How many edited questions the model answered with the new fact, and with the old one."""
    edits = read_json(out / "world" / "edit" / "edits.json", "knowledge-edit manifest")
    answers = {str(p["question_id"]): p["answer"] for p in read_json(out / "eval_edit" / "predictions.json")}
    questions = edits["questions"]
    given = {qid: normalize_answer(answers.get(qid, "")) for qid in questions}
    return {"edited_questions": len(questions),
            "follows_new_fact": sum(given[qid] == normalize_answer(q["new"]) for qid, q in questions.items()),
            "follows_old_fact": sum(given[qid] == normalize_answer(q["old"]) for qid, q in questions.items())}


def collect(out: Path, seed: int, entities: int, wall: float, rora: bool = False,
            stage_seconds: dict[str, float] | None = None) -> dict:
    """``results.json``: retrieval recall, per-variant accuracies, knowledge-edit counts (and, with ``rora``,
    the RORA variant's accuracies) and each job's wall time (``stage_seconds``)."""
    retrieval = read_json(out / "retrieval" / "metrics.json")["retrieval"]
    uninstructed = read_json(out / "retrieval_uninstructed" / "metrics.json")["retrieval"]
    variants = {}
    for variant in VARIANTS:
        clean = group_scores(out / f"eval_{variant}")
        noisy = group_scores(out / f"eval_{variant}_noisy") if variant != "no_retrieval" else clean
        variants[variant] = {"unseen_knowledge_acc": clean.get("knowledge/unseen", 0.0),
                             "seen_knowledge_acc": clean.get("knowledge/seen", 0.0),
                             "visual_acc": clean.get("visual", 0.0),
                             "noisy_unseen_knowledge_acc": noisy.get("knowledge/unseen", 0.0)}
        if variant != "no_retrieval":
            hard = group_scores(out / f"eval_{variant}_hard_noisy")
            variants[variant]["hard_noisy_unseen_knowledge_acc"] = hard.get("knowledge/unseen", 0.0)
    results = {"seed": seed, "entities": entities, "wall_seconds": round(wall, 1),
               "retrieval": {"recall@1": retrieval["recall@1"], "recall@5": retrieval["recall@5"],
                             "recall@1_uninstructed": uninstructed["recall@1"]},
               "variants": variants, "knowledge_edit": knowledge_edit_counts(out),
               "reports": {variant: str(out / f"eval_{variant}" / "report.html") for variant in VARIANTS},
               "stage_seconds": {name: round(seconds, 1) for name, seconds in (stage_seconds or {}).items()}}
    if rora:
        scores = group_scores(out / "eval_rora")
        results["rora"] = {"unseen_knowledge_acc": scores.get("knowledge/unseen", 0.0),
                           "seen_knowledge_acc": scores.get("knowledge/seen", 0.0),
                           "visual_acc": scores.get("visual", 0.0),
                           "hard_noisy_unseen_knowledge_acc": group_scores(out / "eval_rora_hard_noisy").get(
                               "knowledge/unseen", 0.0)}
        results["reports"]["rora"] = str(out / "eval_rora" / "report.html")
    return results


def table(results: dict) -> str:
    """The results as a plain-text table, with each target and whether it was met."""
    lines = [f"rablip synthetic knowledge-VQA demo (seed {results['seed']}, {results['entities']} entities, "
             f"{results['wall_seconds'] / 60:.1f} min)", "",
             f"{'variant':14s} {'unseen know.':>12s} {'seen know.':>10s} {'visual':>7s} {'noisy unseen':>12s} "
             f"{'hard noisy':>10s}"]

    def cell(v: dict, key: str, width: int) -> str:
        return f"{v[key]:{width}.1f}" if key in v else f"{'-':>{width}s}"

    rows = [*results["variants"].items(), *([("rora", results["rora"])] if "rora" in results else [])]
    for name, v in rows:  # rora (--rora): the tiny LLaVA (no target)
        noisy = cell(v, "noisy_unseen_knowledge_acc", 12) if name != "no_retrieval" else f"{'-':>12s}"
        lines.append(f"{name:14s} {v['unseen_knowledge_acc']:12.1f} {v['seen_knowledge_acc']:10.1f} "
                     f"{v['visual_acc']:7.1f} {noisy} {cell(v, 'hard_noisy_unseen_knowledge_acc', 10)}")
    r, e = results["retrieval"], results["knowledge_edit"]
    lines += ["", f"retrieval: recall@1 {r['recall@1']:.1f}, recall@5 {r['recall@5']:.1f}, "
                  f"recall@1 without the question instructing the Q-Former {r['recall@1_uninstructed']:.1f}",
              f"knowledge edit: {e['edited_questions']} edited questions, {e['follows_new_fact']} answered with the "
              f"new fact, {e['follows_old_fact']} with the old one", "", "targets:"]
    for name, check in TARGETS.items():
        lines.append(f"  [{'met ' if check(results) else 'MISS'}] {name}")
    lines += ["", "reports:"] + [f"  {name}: {path}" for name, path in results["reports"].items()]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--entities", type=int, default=96)
    parser.add_argument("--out", default=None,
                        help="output directory, empty or absent (default: runs/demo/<date-time>)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="jobs run at once")
    parser.add_argument("--pretrain-steps", type=int, default=None, help="override the pre-training steps")
    parser.add_argument("--finetune-steps", type=int, default=None, help="override the fine-tuning steps")
    parser.add_argument("--reading-steps", type=int, default=None,
                        help="override the tiny LLM's text-only reading warm-up steps")
    parser.add_argument("--vision-steps", type=int, default=None,
                        help="override the tiny vision encoder's viewing warm-up steps")
    parser.add_argument("--align-steps", type=int, default=None, help="override the generator's alignment steps")
    parser.add_argument("--rora", action="store_true",
                        help="also run RORA-VLM's variant (the tiny LLaVA, configs/experiment/synthetic_rora_*.yaml)")
    args = parser.parse_args(argv)
    out = Path(args.out or f"runs/demo/{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    if out.exists() and any(out.iterdir()):
        raise RablipError(f"--out {out} is not empty; choose a new directory (or delete this one).")
    started = time.time()
    print(f"rablip demo: seed {args.seed}, {args.entities} entities, output in {out}", flush=True)
    runner = JobRunner(out / "logs", args.jobs)
    runner.run(plan(out, args.seed, args.entities, args.pretrain_steps, args.finetune_steps, args.reading_steps,
                    args.vision_steps, args.align_steps, args.rora))
    results = collect(out, args.seed, args.entities, time.time() - started, args.rora, runner.durations)
    atomic_write_json(out / "results.json", results)
    print()
    print(table(results))
    print(f"\nresults: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    run_main(main)
