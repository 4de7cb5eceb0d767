"""Evaluation stage (``run_eval.py``): answer a split with a checkpoint and its references, score, report.

The run dir receives the predictions in the benchmark's official format, ``metrics.json`` (scores,
retrieval metrics, accuracy against k and the recipe: resolved config, checkpoint fingerprint,
index layout, metric variant) and ``report.html``. Under ``accelerate launch`` each process answers
its own contiguous slice of the split and the answers are gathered once each (see
:mod:`rablip.evaluation.gather`); the main process writes every file.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from rablip.benchmarks import Benchmark, get_benchmark, load_split
from rablip.benchmarks.base import Answer
from rablip.config.load import to_dict
from rablip.config.schema import Config
from rablip.data.images import ImageLoader, resolve_under_root
from rablip.data.kb import KBStore
from rablip.data.records import QAExample
from rablip.data.samples import make_qa_sample
from rablip.data.snippet_items import reference_items
from rablip.errors import ConfigError
from rablip.evaluation.gather import gather_in_order, shard_bounds
from rablip.evaluation.predict import choose_answers, generate_answers
from rablip.evaluation.report import write_report
from rablip.models.factory import load_generator
from rablip.models.processing import Collator, build_collator
from rablip.retrieval.references import RETRIEVED_SOURCES, NoisyReferences, Ranked, ranked_references
from rablip.retrieval.static import Texts
from rablip.stages.runtime import start_run
from rablip.utils.dist import end_distributed, process_rank_world
from rablip.utils.io import atomic_write_json, read_json
from rablip.utils.logging import get_logger

log = get_logger("rablip.eval")
METRICS_FILE = "metrics.json"
_CHUNK_BATCHES = 4
"""Batches answered per chunk: images are decoded per chunk, never for the whole split at once."""


class Answerer:
    """Answers examples with the model: generated text and, for multiple-choice questions, the likeliest option.
    With ``snippet_texts`` (two-stage references) a reference with attached texts is its knowledge snippet."""

    def __init__(self, cfg: Config, model: torch.nn.Module, collator: Collator, kb: KBStore | None,
                 snippet_texts: Texts | None = None) -> None:
        self.cfg = cfg
        self.model = model
        self.collator = collator
        self.kb = kb
        self.snippet_texts = snippet_texts or {}
        self.question_images = ImageLoader(None, cfg.data.on_bad_image)
        self.item_images = ImageLoader(kb.root if kb is not None else None, cfg.data.on_bad_image)

    def __call__(self, examples: Sequence[QAExample], references: Sequence[list[tuple[str, float | None]]],
                 ) -> list[Answer]:
        cfg = self.cfg
        samples = []
        for example, refs in zip(examples, references, strict=True):
            items = (reference_items(self.kb, [item_id for item_id, _ in refs], self.snippet_texts.get(example.id))
                     if refs and self.kb is not None else [])
            samples.append(make_qa_sample(example, items, self.question_images.load,
                                          load_item_image=self.item_images.load,
                                          reference_views=cfg.prompt.reference_views))
        texts = generate_answers(self.model, self.collator, samples, batch_size=cfg.eval.batch_size,
                                 num_beams=cfg.eval.num_beams, max_new_tokens=cfg.eval.max_new_tokens,
                                 repetition_penalty=cfg.eval.repetition_penalty,
                                 length_penalty=cfg.eval.length_penalty)
        with_choices = [i for i, sample in enumerate(samples) if sample.choices]
        picked = dict(zip(with_choices, choose_answers(self.model, self.collator, [samples[i] for i in with_choices],
                                                       batch_size=cfg.eval.batch_size), strict=True))
        return [Answer(ex.id, text, ex.choices[picked[i]] if i in picked else None, list(refs))
                for i, (ex, text, refs) in enumerate(zip(examples, texts, references, strict=True))]


def answer_split(answer: Answerer, examples: Sequence[QAExample], ranked: Ranked, k: int,
                 noisy: NoisyReferences | None, show_progress: bool, what: str) -> list[Answer]:
    """This process's slice of ``examples`` answered with the top ``k`` references, gathered over processes."""
    rank, world = process_rank_world()
    start, end = shard_bounds(len(examples), rank, world)
    chunk = answer.cfg.eval.batch_size * _CHUNK_BATCHES
    local: list[tuple[int, Answer]] = []
    bar = tqdm(total=end - start, desc=what, unit="q", disable=not show_progress)
    for begin in range(start, end, chunk):
        positions = range(begin, min(begin + chunk, end))
        batch = [examples[p] for p in positions]
        refs = [noisy(ex, p, ranked[ex.id], k) if noisy is not None else ranked[ex.id][:k]
                for ex, p in zip(batch, positions, strict=True)]
        local.extend(zip(positions, answer(batch, refs), strict=True))
        bar.update(len(batch))
    bar.close()
    return gather_in_order(local, len(examples))


def checkpoint_fingerprint(path: str | Path) -> dict:
    """sha256 of a checkpoint dir's weight and config files, and of the base checkpoint it builds on."""
    directory = Path(path)
    files: dict = {}
    for file in sorted([*directory.glob("*.safetensors"), *directory.glob("config.json")]):
        digest = hashlib.sha256()
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        files[file.name] = digest.hexdigest()
    record = {"path": str(directory.resolve()), "sha256": files}
    config = directory / "config.json"
    base = read_json(config, "checkpoint config").get("base_checkpoint") if config.is_file() else None
    if base and Path(base).resolve() != directory.resolve():
        record["base"] = checkpoint_fingerprint(base if Path(base).is_absolute() else directory / base)
    return record


def group_accuracy(benchmark: Benchmark, examples: Sequence[QAExample], per_question: dict[str, float],
                   ) -> dict[str, float]:
    """Mean question score per report group (:meth:`Benchmark.question_group`), groups sorted by name."""
    groups: dict[str, list[float]] = {}
    for ex in examples:
        groups.setdefault(benchmark.question_group(ex), []).append(per_question.get(ex.id, 0.0))
    return {name: sum(values) / len(values) for name, values in sorted(groups.items())}


def report_records(benchmark: Benchmark, examples: Sequence[QAExample], answers: Sequence[Answer],
                   per_question: dict[str, float]) -> list[dict]:
    """One small record per question; images and reference texts are added for the gallery only."""
    records = []
    for position, (ex, answer) in enumerate(zip(examples, answers, strict=True)):
        relevant = set(ex.relevant_ids or [])
        records.append({
            "question_id": ex.id, "question": ex.question, "question_type": benchmark.question_group(ex), "image": None,
            "prediction": answer.choice if answer.choice is not None and not ex.answers else answer.text,
            "answers": list(ex.answers) or ([ex.choices[ex.correct_choice_idx]]
                                            if ex.choices and ex.correct_choice_idx is not None else []),
            "score": min(100.0, max(0.0, per_question.get(ex.id, 0.0))),
            "references": [{"id": item_id, "score": score, "relevant": item_id in relevant if ex.relevant_ids else None}
                           for item_id, score in answer.references],
            "_position": position,
        })
    return records


def gallery_completer(examples: Sequence[QAExample], kb: KBStore | None):
    """Fills the question image and each reference's title, text and image of the shown records."""
    def complete(shown: list[dict]) -> None:
        for record in shown:
            record["image"] = examples[record.pop("_position")].image
            if not record["references"] or kb is None:
                continue
            items = kb.get_many([ref["id"] for ref in record["references"]])
            for ref, item in zip(record["references"], items, strict=True):
                image = item.image
                if isinstance(image, str) and kb.root is not None:
                    image = str(resolve_under_root(kb.root, image))
                ref.update(title=item.title, text=item.text, image=image if item.modality != "text" else None)
    return complete


def index_recipe(cfg: Config) -> dict | None:
    if cfg.retrieval.source != "index":
        return None
    from rablip.retrieval.groups import layout_checksum, read_layout

    return {"dir": str(Path(cfg.retrieval.index_dir).resolve()), "layout": read_layout(cfg.retrieval.index_dir),
            "layout_sha256": layout_checksum(cfg.retrieval.index_dir)}


def retrieval_metrics(cfg: Config, ranked: Ranked, examples: Sequence[QAExample]) -> dict[str, float]:
    """recall@1/5/10, precision@1/5/10, MRR and the benchmark's own retrieval metrics of the references."""
    return get_benchmark(cfg.data.dataset).retrieval_metrics(ranked, examples, ks=(1, 5, 10))


def evaluate(cfg: Config) -> int:
    """Answer ``data.<eval.split>``, write official-format predictions, ``metrics.json`` and ``report.html``;
    with ``eval.retrieval_only``, score the configured retriever alone (no generator is loaded)."""
    started = time.time()
    if cfg.eval.retrieval_only and cfg.retrieval.source not in RETRIEVED_SOURCES:
        raise ConfigError(f"eval.retrieval_only scores a retriever: set retrieval.source to index or static "
                          f"(it is {cfg.retrieval.source!r}).")
    if cfg.eval.noisy_mode == "hard" and cfg.retrieval.source not in RETRIEVED_SOURCES:
        raise ConfigError(f"eval.noisy_mode=hard replaces references by the retriever's next-ranked wrong items: set "
                          f"retrieval.source to index or static (it is {cfg.retrieval.source!r}, which ranks "
                          "nothing), or eval.noisy_mode=random.")
    accelerator, run_dir = start_run(cfg)
    examples = load_split(cfg.data, cfg.eval.split)
    # References before the generator: a bad retrieval file or index is reported without waiting for
    # the model, and a live retriever's encoder and index are freed before the generator is loaded.
    references = ranked_references(cfg, examples, cfg.eval.split, run_dir)
    ranked = references.ranked
    if not cfg.eval.retrieval_only:
        answer_and_write(cfg, accelerator, run_dir, examples, ranked, started, references.snippet_texts)
    elif accelerator.is_main_process:
        write_retrieval_only(cfg, run_dir, examples, ranked, started)
    accelerator.wait_for_everyone()
    end_distributed()
    return 0


def write_retrieval_only(cfg: Config, run_dir: Path, examples: Sequence[QAExample], ranked: Ranked,
                         started: float) -> None:
    """``metrics.json`` of ``eval.retrieval_only`` (main process)."""
    metrics = {"dataset": cfg.data.dataset, "split": cfg.eval.split, "num_questions": len(examples),
               "retrieval": retrieval_metrics(cfg, ranked, examples),
               "recipe": {"config": to_dict(cfg), "index": index_recipe(cfg),
                          "references": {"source": cfg.retrieval.source,
                                         "instruct_queries": cfg.retrieval.instruct_queries}},
               "wall_seconds": round(time.time() - started, 2)}
    atomic_write_json(run_dir / METRICS_FILE, metrics)
    shown = ", ".join(f"{key} {value:.2f}" for key, value in metrics["retrieval"].items() if "@" in key)
    log.info("retrieval on %s: %s (%s)", cfg.eval.split, shown, run_dir / METRICS_FILE)


def answer_and_write(cfg: Config, accelerator: Accelerator, run_dir: Path, examples: Sequence[QAExample], ranked: Ranked,
                     started: float, snippet_texts: Texts | None = None) -> None:
    """Load the generator, answer the split (and the k sweep) on every process, write on the main one;
    ``snippet_texts``: the two-stage references' attached texts (:attr:`References.snippet_texts`)."""
    split = cfg.eval.split
    with accelerator.main_process_first():
        model = load_generator(cfg, cfg.eval.checkpoint or None)
    model.to(accelerator.device).eval()
    k = cfg.retrieval.k if cfg.retrieval.source != "none" else 0
    sweep = sorted({k, *cfg.eval.k_sweep}) if cfg.retrieval.source != "none" else [0]
    kb = KBStore.open(cfg.data.kb.store_dir, root=cfg.data.kb.root or None) if max(sweep) > 0 else None
    collator = build_collator(cfg, model, max(sweep), mode="generate")
    answer = Answerer(cfg, model, collator, kb, snippet_texts)
    noisy = (NoisyReferences(kb, cfg.eval.noisy_fraction, cfg.run.seed, images_only=snippet_texts is not None,
                             mode=cfg.eval.noisy_mode) if kb and cfg.eval.noisy_fraction else None)
    show = accelerator.is_main_process
    with accelerator.autocast():
        answering = time.perf_counter()
        answers = answer_split(answer, examples, ranked, k, noisy, show, f"answering {split} (k={k})")
        answer_seconds = time.perf_counter() - answering
        sweep_answers = {other: answer_split(answer, examples, ranked, other, None, show, f"k sweep: k={other}")
                         for other in sweep if other != k}
    if accelerator.is_main_process:
        write_outputs(cfg, run_dir, examples, answers, sweep_answers, ranked, kb, started, answer_seconds)


def write_outputs(cfg: Config, run_dir: Path, examples: Sequence[QAExample], answers: list[Answer],
                  sweep_answers: dict[int, list[Answer]], ranked: Ranked, kb: KBStore | None, started: float,
                  answer_seconds: float) -> None:
    """Predictions, scores, metrics.json and the report (main process). ``answer_seconds``: the time this
    process spent answering the split at ``retrieval.k`` (collation, references, generation)."""
    dataset, split_cfg = cfg.data.dataset, getattr(cfg.data, cfg.eval.split)
    benchmark = get_benchmark(dataset)
    path = benchmark.write_predictions(benchmark.predictions_file(run_dir), answers, split_cfg)
    log.info("predictions written to %s", path)
    metrics: dict = {"dataset": dataset, "split": cfg.eval.split, "num_questions": len(examples)}
    if cfg.retrieval.source in RETRIEVED_SOURCES:
        metrics["retrieval"] = retrieval_metrics(cfg, ranked, examples)
    labelled = benchmark.is_labelled(split_cfg, examples)
    per_question: dict[str, float] = {}
    if labelled:
        scores = benchmark.score(path, split_cfg, lemmatize=cfg.eval.lemmatize)
        per_question = benchmark.question_scores(split_cfg, scores, answers)
        metrics["scores"] = {key: value for key, value in scores.items() if key != "per_question"}
        metrics["main_score"] = benchmark.main_score(scores)
        metrics["per_group"] = group_accuracy(benchmark, examples, per_question)
        if sweep_answers:
            metrics["accuracy_vs_k"] = {str(cfg.retrieval.k): metrics["main_score"]}
            for other, other_answers in sweep_answers.items():
                other_path = benchmark.write_predictions(benchmark.predictions_file(run_dir, f"predictions_k{other}"),
                                                         other_answers, split_cfg)
                metrics["accuracy_vs_k"][str(other)] = benchmark.main_score(
                    benchmark.score(other_path, split_cfg, lemmatize=cfg.eval.lemmatize))
            metrics["accuracy_vs_k"] = dict(sorted(metrics["accuracy_vs_k"].items(), key=lambda kv: int(kv[0])))
    else:
        # A test split (WebQA_test.json, A-OKVQA test, ...) publishes no answers: its predictions file is the
        # submission to the benchmark's leaderboard, in the official format, and nothing is scored here.
        log.info("data.%s has no labels (answers/annotations): scoring skipped; %s is the submission file in "
                 "%s's official format", cfg.eval.split, path, dataset)
    metrics["recipe"] = {
        "config": to_dict(cfg),
        "checkpoint": checkpoint_fingerprint(cfg.eval.checkpoint or cfg.model.checkpoint),
        "index": index_recipe(cfg),
        "references": {"source": cfg.retrieval.source, "k": cfg.retrieval.k,
                       "noisy_fraction": cfg.eval.noisy_fraction, "noisy_mode": cfg.eval.noisy_mode},
        "metric": metrics.get("scores", {}).get("metric"),
    }
    metrics["answer_seconds"] = round(answer_seconds, 3)
    metrics["wall_seconds"] = round(time.time() - started, 2)
    atomic_write_json(run_dir / METRICS_FILE, metrics)
    if labelled and metrics.get("main_score") is not None:
        log.info("%s %s: %.2f (%s)", dataset, cfg.eval.split, metrics["main_score"], run_dir / METRICS_FILE)
    if cfg.eval.report and labelled:
        report_metrics = {"overall": metrics["main_score"], "per_question_type": metrics["per_group"],
                          "retrieval": metrics.get("retrieval", {})}
        accuracy_vs_k = {int(key): value for key, value in metrics.get("accuracy_vs_k", {}).items()}
        records = report_records(benchmark, examples, answers, per_question)
        report = write_report(run_dir, title=f"rablip evaluation: {dataset} {cfg.eval.split}", metrics=report_metrics,
                              records=records, accuracy_vs_k=accuracy_vs_k if len(accuracy_vs_k) > 1 else None,
                              gallery_size=cfg.eval.gallery_size, complete_shown=gallery_completer(examples, kb))
        log.info("report written to %s", report)
