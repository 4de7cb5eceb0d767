"""The main job: the synthetic knowledge-VQA experiment, end to end on a CPU.

    python scripts/demo.py [--seed S] [--entities N] [--out DIR] [--jobs J] [--ranks R] [--skip-rora]

Runs rablip's own entry points with ``configs/experiment/synthetic_*.yaml`` (no separate code path),
each as a subprocess with its log in ``DIR/logs/``:

1. make the synthetic world (``scripts/make_synthetic.py``): its OK-VQA files, the knowledge-base store,
   the tiny generator (tokenizers trained on the world; its vision encoder warms up on renderings of
   invented creatures, its LLM on reading texts about them, none of them world entities) and the
   extra pre-training pairs (renderings of invented creatures with their fact texts or captions);
2. pre-train the Q-Former and fusion encoder (``run_pretrain.py``), the vision encoder frozen; it runs alone,
   as ``--ranks`` data-parallel processes (``accelerate launch``; default 2: the config's batch of 32 split 16
   per rank, the contrastive loss over the gathered global batch; ``--ranks 1``: one process on every thread);
   ``model.export_generator`` saves the generator with the pre-trained query tokens and Q-Former
   for the next stage to start from;
3. encode the knowledge base and build the index (``scripts/encode_kb.py``), and score retrieval
   with and without the question instructing the Q-Former (``run_eval.py eval.retrieval_only=true``), on the
   test split and on the world's ``scene/`` split (two creatures per image, the question naming one by a
   visible attribute: ``results.json`` ``retrieval``; the test split's in ``retrieval.single_creature``);
4. align the generator to say what it sees (``run_finetune.py`` with ``synthetic_align.yaml``): visual
   questions about invented creatures from the world's ``align/`` split, no references, as BLIP-2's
   second stage and InstructBLIP's instruction data did for the real checkpoints;
5. fine-tune four generators from the same aligned generator and pre-trained encoder (``run_finetune.py``):
   ``no_retrieval`` (question image and question only); ``ra`` and ``ra_askg``, RA-BLIP as released (its
   prompt, every InstructBLIP stage in its ``model.multi_image=concat``; trained on each question's gold facts,
   ``ra_askg`` with the release's ASKG selection sample: :data:`VARIANTS`); and ``ra_askg_rablip``, rablip's
   recipe (the retriever's ranked items mixed with its best-ranked wrong ones, a random noise snippet,
   counterfactual facts, rablip's prompt);
6. evaluate each on the test split (``run_eval.py``) with clean retrieval, with noisy retrieval
   (half of the k references replaced by random knowledge-base items) and with hard-noisy retrieval
   (``eval.noisy_mode=hard``: the same half replaced by the retriever's own next-ranked wrong items);
7. knowledge edit: change facts of 20% of the test entities in the knowledge base, rebuild the store
   and the index (no retraining) and answer the affected questions again with ``ra_askg``;
8. RORA-VLM's variant ``rora`` (left out with ``--skip-rora``; nothing above changes): the world's tiny LLaVA
   (``make_synthetic.py --only ...,llava``) fine-tuned with ``synthetic_rora_finetune.yaml`` (two-stage
   snippets, visual token refinement, a noise snippet; its LLM trained fully at this size) and evaluated with
   ``synthetic_rora_eval.yaml``, clean, noisy and hard-noisy, as the other retrieval variants (``results.json``:
   ``variants.rora``).

Writes ``DIR/results.json`` (with each job's wall time in ``stage_seconds``) and prints one table; each
evaluation's ``report.html`` is linked.
Independent jobs run ``--jobs`` at a time (default 2), each on one CPU thread (``scripts/demo_jobs.py``).
A target that needs a variant which was not run (``--skip-rora``) is reported as skipped.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(Path(__file__).resolve().parent))

from demo_jobs import Job, JobRunner  # noqa: E402

from rablip.errors import RablipError  # noqa: E402
from rablip.evaluation.vqa_metric import normalize_answer  # noqa: E402
from rablip.synthetic.files import SCENE_DIR  # noqa: E402
from rablip.utils.cli import run_main  # noqa: E402
from rablip.utils.io import atomic_write_json, read_json  # noqa: E402

EXPERIMENTS = "configs/experiment"
RELEASE = ("prompt.template=release",)
"""RA-BLIP's released prompt ("captions | facts | question", also the Q-Former's instruction), for the variants
that fine-tune as the release does; the release's other half, one Q-Former pass over the concatenated images,
is every InstructBLIP stage's :data:`MODEL` (the mode is fixed from pre-training on)."""
MODEL = ("model.multi_image=concat",)
CLEAN_FACTS = ("noise.random_snippets=0", "noise.counterfactual=0")


class Variant(NamedTuple):
    finetune: tuple[str, ...]
    """Overrides of ``synthetic_finetune.yaml``."""
    evaluate: tuple[str, ...]
    """Overrides of ``synthetic_eval.yaml`` (clean, noisy and hard-noisy alike)."""


INDEX = "retrieval.source=index"
VARIANTS = {
    "no_retrieval": Variant(("retrieval.source=none", "askg.enabled=false", *CLEAN_FACTS), ("retrieval.source=none",)),
    # RA-BLIP as released (iLearn-Lab/TMM25-RA-BLIP WebqaDataset): trained on each question's gold facts (the
    # entity's KB image with its caption and its fact text), answering from the retriever's top k.
    "ra": Variant(("retrieval.source=gold", "askg.enabled=false", *CLEAN_FACTS, *RELEASE), (INDEX, *RELEASE)),
    # ... with the release's ASKG (WebqaEnhancedTrainDataset): the gold answering sample plus a selection sample
    # (the fact text first, then the retriever's best-ranked wrong image item), loss QA + 0.1 x selection.
    "ra_askg": Variant((INDEX, "askg.enabled=true", "askg.answer_refs=gold", "askg.selection_order=positive_first",
                        "askg.negatives=hard", "askg.weight=0.1", *CLEAN_FACTS, *RELEASE), (INDEX, *RELEASE)),
    # rablip's recipe: the answering sample mixes the retriever's ranked items with its best-ranked wrong ones
    # (noise ratio 0.5), a random noise snippet, counterfactual facts; rablip's prompt.
    "ra_askg_rablip": Variant((INDEX, "askg.enabled=true", "askg.answer_refs=mixed", "askg.noise_ratio=0.5",
                               "askg.weight=0.1", "askg.negatives=hard", "noise.random_snippets=1",
                               "noise.counterfactual=1.0", "noise.counterfactual_types=[knowledge/seen,knowledge/unseen]"),
                              (INDEX,)),
}
EDITED_BY = "ra_askg"
"""The variant that answers the knowledge-edit questions."""
PRETRAIN_BATCH = 32
"""train.batch_size of configs/experiment/synthetic_pretrain.yaml."""
NOISY_FRACTION = 0.5
EDIT_FRACTION = 0.2


def _noisy_holds(v: dict, name: str) -> bool:
    """``name`` loses at most 10 points of unseen knowledge with noisy retrieval and beats ``ra`` there."""
    own = v[name]
    return (own["unseen_knowledge_acc"] - own["noisy_unseen_knowledge_acc"] <= 10
            and own["noisy_unseen_knowledge_acc"] > v["ra"]["noisy_unseen_knowledge_acc"])


TARGETS: dict[str, tuple[tuple[str, ...], Callable[[dict], bool]]] = {
    # name: (the variants it needs, reported as skipped when one was not run; the check)
    "ra_askg unseen knowledge >= 80": (("ra_askg",), lambda r: r["variants"]["ra_askg"]["unseen_knowledge_acc"] >= 80),
    "rora unseen knowledge >= 80": (("rora",), lambda r: r["variants"]["rora"]["unseen_knowledge_acc"] >= 80),
    "no_retrieval unseen knowledge <= 25": (("no_retrieval",),
                                            lambda r: r["variants"]["no_retrieval"]["unseen_knowledge_acc"] <= 25),
    "visual >= 90 for every variant": ((), lambda r: all(v["visual_acc"] >= 90 for v in r["variants"].values())),
    "noisy: ra_askg and rora each lose <= 10 and beat ra": (
        ("ra", "ra_askg", "rora"), lambda r: all(_noisy_holds(r["variants"], name) for name in ("ra_askg", "rora"))),
    "scene recall@1 >= 90 and >= 5 above uninstructed": ((), lambda r: (
        r["retrieval"]["recall@1"] >= 90 and r["retrieval"]["recall@1"] >= r["retrieval"]["recall@1_uninstructed"] + 5)),
    "knowledge edit follows new fact >= 80%": ((), lambda r: (
        r["knowledge_edit"]["follows_new_fact"] >= 0.8 * r["knowledge_edit"]["edited_questions"])),
    "wall time <= 15 min": ((), lambda r: r["wall_seconds"] <= 900),
}


def target_status(results: dict, name: str) -> str:
    """``met``, ``MISS`` or ``skipped`` (a variant the target needs was not run, e.g. ``--skip-rora``)."""
    needs, check = TARGETS[name]
    if any(variant not in results["variants"] for variant in needs):
        return "skipped"
    return "met" if check(results) else "MISS"


def plan(out: Path, seed: int, entities: int, pretrain_steps: int | None, finetune_steps: int | None,
         reading_steps: int | None = None, vision_steps: int | None = None,
         align_steps: int | None = None, rora: bool = True, ranks: int = 1) -> list[Job]:
    """Every job of the experiment, in an order that respects the dependencies. Pre-training runs alone, so it
    runs as ``ranks`` data-parallel processes, each with ``PRETRAIN_BATCH / ranks`` examples per step (the
    config's global batch)."""
    if ranks < 1 or PRETRAIN_BATCH % ranks:
        raise RablipError(f"--ranks {ranks} must be a positive divisor of the pre-training batch {PRETRAIN_BATCH} "
                          "(train.batch_size is per process; the global batch stays the config's)")
    world = out / "world"
    common = [f"run.seed={seed}", f"data.root={world}", f"model.fusion.checkpoint={out / 'pretrain' / 'final'}",
              f"retrieval.index_dir={world / 'index'}"]
    instructblip = [*common, *MODEL]

    def stage(script: str, config: str, run_dir: str, *extra: str) -> list[str]:
        shared = common if config.startswith("rora") else instructblip  # the LLaVA has no multi_image mode
        return [script, "--config", f"{EXPERIMENTS}/synthetic_{config}.yaml", *shared,
                f"run.output_dir={out / run_dir}", *extra]

    pretrain = [f"train.max_steps={pretrain_steps}"] if pretrain_steps else []
    if ranks > 1:
        pretrain.append(f"train.batch_size={PRETRAIN_BATCH // ranks}")
    build = ["--seed", str(seed), "--entities", str(entities)]
    if reading_steps is not None:
        build += ["--reading-steps", str(reading_steps)]
    if vision_steps is not None:
        build += ["--vision-steps", str(vision_steps)]
    if pretrain_steps:
        # at most every sample of a shortened pre-training (global batch PRETRAIN_BATCH) is an extra pair
        build += ["--extra-pairs", str(pretrain_steps * PRETRAIN_BATCH)]
    finetune = [f"train.max_steps={finetune_steps}"] if finetune_steps else []
    align = [f"train.max_steps={align_steps}", f"train.save_every={align_steps}"] if align_steps else []
    jobs = [
        Job("world", ["scripts/make_synthetic.py", "--out", str(world), *build, "--only", "world,kb,extra_pairs"]),
        # The two generators' warm-ups are independent: they build side by side, the LLaVA's while pre-training
        # waits only for the InstructBLIP checkpoint (--only builds a part into the existing world).
        *[Job(part, ["scripts/make_synthetic.py", "--out", str(world), *build, "--only", part], ["world"])
          for part in ("checkpoint", *(["llava"] if rora else []))],
        Job("pretrain", stage("run_pretrain.py", "pretrain", "pretrain", *pretrain), ["checkpoint"], ranks),
        Job("index", ["scripts/encode_kb.py", "--config", f"{EXPERIMENTS}/synthetic_eval.yaml", *instructblip],
            ["pretrain"]),
        Job("align", stage("run_finetune.py", "align", "align",
                           f"model.checkpoint={out / 'pretrain' / 'final' / 'generator'}", *align), ["pretrain"]),
    ]
    scene = [f"data.test.path={world / SCENE_DIR / 'OpenEnded_mscoco_test2014_questions.json'}",
             f"data.test.annotations={world / SCENE_DIR / 'mscoco_test2014_annotations.json'}",
             f"data.test.image_root={world / SCENE_DIR}"]
    retrieval = [Job(name, stage("run_eval.py", "eval", name, "eval.retrieval_only=true", *split,
                                 *(["retrieval.instruct_queries=false"] if name.endswith("uninstructed") else [])),
                     ["index"])
                 for name, split in (("retrieval", []), ("retrieval_uninstructed", []), ("retrieval_scene", scene),
                                     ("retrieval_scene_uninstructed", scene))]
    # the ASKG fine-tunings are the longest jobs: they start first, the others share the cores after them.
    for variant in sorted(VARIANTS, key=lambda name: not name.startswith("ra_askg")):
        spec = VARIANTS[variant]
        checkpoint = f"eval.checkpoint={out / f'finetune_{variant}' / 'final'}"
        start = f"model.checkpoint={out / 'align' / 'final'}"
        jobs.append(Job(f"finetune_{variant}", stage("run_finetune.py", "finetune", f"finetune_{variant}", start,
                                                     *spec.finetune, *finetune), ["index", "align"]))
        if variant == "ra_askg_rablip":
            jobs += retrieval
        jobs.append(Job(f"eval_{variant}", stage("run_eval.py", "eval", f"eval_{variant}", checkpoint, *spec.evaluate),
                        [f"finetune_{variant}"]))
        if variant != "no_retrieval":
            jobs += noisy_jobs(stage, "eval", variant, checkpoint, *spec.evaluate)
    edited = [f"data.kb.path={world / 'kb_edited.jsonl'}", f"data.kb.store_dir={world / 'kb_store_edited'}",
              f"retrieval.index_dir={world / 'index_edited'}"]
    jobs += [
        # The edit writes new files beside the world's own, so it and its index need only the encoder.
        Job("edit", ["scripts/make_synthetic.py", "--edit", str(world), "--edit-fraction", str(EDIT_FRACTION)],
            ["index"]),
        Job("edit_kb", ["scripts/build_kb.py", "--config", f"{EXPERIMENTS}/synthetic_eval.yaml", *instructblip,
                        *edited], ["edit"]),
        Job("edit_index", ["scripts/encode_kb.py", "--config", f"{EXPERIMENTS}/synthetic_eval.yaml", *instructblip,
                           *edited], ["edit_kb"]),
        Job("eval_edit", stage("run_eval.py", "eval", "eval_edit", *edited,
                               f"eval.checkpoint={out / f'finetune_{EDITED_BY}' / 'final'}", "eval.k_sweep=[]",
                               *VARIANTS[EDITED_BY].evaluate,
                               f"data.test.path={world / 'edit' / 'OpenEnded_mscoco_test2014_questions.json'}",
                               f"data.test.annotations={world / 'edit' / 'mscoco_test2014_annotations.json'}"),
            ["edit_index", f"finetune_{EDITED_BY}"]),
    ]
    if rora:
        checkpoint = f"eval.checkpoint={out / 'finetune_rora' / 'final'}"
        jobs += [Job("finetune_rora", stage("run_finetune.py", "rora_finetune", "finetune_rora", *finetune),
                     ["index", "llava"]),
                 Job("eval_rora", stage("run_eval.py", "rora_eval", "eval_rora", checkpoint), ["finetune_rora"]),
                 *noisy_jobs(stage, "rora_eval", "rora", checkpoint)]
    return jobs


def noisy_jobs(stage: Callable[..., list[str]], config: str, variant: str, *overrides: str) -> list[Job]:
    """``eval_<variant>_noisy`` and ``eval_<variant>_hard_noisy``: the variant's evaluation with the noisy fraction
    of its references replaced by random knowledge-base items, and by the retriever's own next-ranked wrong items
    (``eval.noisy_mode=hard``)."""
    return [Job(name, stage("run_eval.py", config, name, *overrides, f"eval.noisy_fraction={NOISY_FRACTION}",
                            *mode, "eval.k_sweep=[]"), [f"finetune_{variant}"])
            for name, mode in ((f"eval_{variant}_noisy", []), (f"eval_{variant}_hard_noisy", ["eval.noisy_mode=hard"]))]


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


def collect(out: Path, seed: int, entities: int, wall: float, rora: bool = True,
            stage_seconds: dict[str, float] | None = None) -> dict:
    """``results.json``: retrieval recall, per-variant accuracies (with ``rora``, RORA-VLM's variant as
    ``variants.rora``), knowledge-edit counts and each job's wall time (``stage_seconds``)."""
    def recall(job: str) -> dict[str, float]:
        found = read_json(out / job / "metrics.json")["retrieval"]
        return {"recall@1": found["recall@1"], "recall@5": found["recall@5"],
                "recall@1_uninstructed": read_json(out / f"{job}_uninstructed" / "metrics.json")["retrieval"]["recall@1"]}

    variants = {}
    for variant in [*VARIANTS, *(["rora"] if rora else [])]:
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
               "retrieval": {**recall("retrieval_scene"), "single_creature": recall("retrieval")},
               "variants": variants, "knowledge_edit": knowledge_edit_counts(out),
               "reports": {variant: str(out / f"eval_{variant}" / "report.html") for variant in variants},
               "stage_seconds": {name: round(seconds, 1) for name, seconds in (stage_seconds or {}).items()}}
    return results


def table(results: dict) -> str:
    """The results as a plain-text table, with each target and whether it was met."""
    lines = [f"rablip synthetic knowledge-VQA demo (seed {results['seed']}, {results['entities']} entities, "
             f"{results['wall_seconds'] / 60:.1f} min)", "",
             f"{'variant':14s} {'unseen know.':>12s} {'seen know.':>10s} {'visual':>7s} {'noisy unseen':>12s} "
             f"{'hard noisy':>10s}"]

    def cell(v: dict, key: str, width: int) -> str:
        return f"{v[key]:{width}.1f}" if key in v else f"{'-':>{width}s}"

    for name, v in results["variants"].items():
        noisy = cell(v, "noisy_unseen_knowledge_acc", 12) if name != "no_retrieval" else f"{'-':>12s}"
        lines.append(f"{name:14s} {v['unseen_knowledge_acc']:12.1f} {v['seen_knowledge_acc']:10.1f} "
                     f"{v['visual_acc']:7.1f} {noisy} {cell(v, 'hard_noisy_unseen_knowledge_acc', 10)}")
    r, e = results["retrieval"], results["knowledge_edit"]
    single = r["single_creature"]
    lines += ["", f"retrieval on scenes (two creatures, the question names one): recall@1 {r['recall@1']:.1f}, "
                  f"recall@5 {r['recall@5']:.1f}, recall@1 without the question instructing the Q-Former "
                  f"{r['recall@1_uninstructed']:.1f}",
              f"retrieval on the test split (one creature per image): recall@1 {single['recall@1']:.1f}, recall@5 "
              f"{single['recall@5']:.1f}, uninstructed {single['recall@1_uninstructed']:.1f}",
              f"knowledge edit: {e['edited_questions']} edited questions, {e['follows_new_fact']} answered with the "
              f"new fact, {e['follows_old_fact']} with the old one", "", "targets:"]
    for name in TARGETS:
        status = target_status(results, name)
        lines.append(f"  [{status[:4]:4s}] {name}" + (" (skipped: a variant it needs was not run)"
                                                       if status == "skipped" else ""))
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
    parser.add_argument("--skip-rora", action="store_true",
                        help="leave out RORA-VLM's variant (the tiny LLaVA, configs/experiment/synthetic_rora_*.yaml) "
                             "for a quicker run; its targets are reported as skipped")
    parser.add_argument("--ranks", type=int, default=min(2, os.cpu_count() or 1),
                        help="data-parallel processes of pre-training, which runs alone (accelerate launch, one "
                             "thread each; per-process batch = the config's / ranks); 1: one process on every thread "
                             "(default: 2 where there are 2 cores)")
    args = parser.parse_args(argv)
    out = Path(args.out or f"runs/demo/{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    if out.exists() and any(out.iterdir()):
        raise RablipError(f"--out {out} is not empty; choose a new directory (or delete this one).")
    started = time.time()
    print(f"rablip demo: seed {args.seed}, {args.entities} entities, output in {out}", flush=True)
    runner = JobRunner(out / "logs", args.jobs)
    rora = not args.skip_rora
    jobs = plan(out, args.seed, args.entities, args.pretrain_steps, args.finetune_steps, args.reading_steps,
                args.vision_steps, args.align_steps, rora, args.ranks)
    runner.run(jobs)
    results = collect(out, args.seed, args.entities, time.time() - started, rora, runner.durations)
    atomic_write_json(out / "results.json", results)
    print()
    print(table(results))
    print(f"\nresults: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    run_main(main)
