"""Fine-tuning stage: train the generator with retrieved references (``run_finetune.py``).

References come from ``retrieval.source``: the dataset's gold relevance labels, a static retrieval
file, a live index (its results cached as a static file in the run dir), or none. With
``askg.enabled`` every example also yields an ASKG relevance-selection sample, and its references are
mixed with irrelevant items (``askg.answer_refs=mixed``) or are its gold facts alone (``gold``, the
release's; :mod:`rablip.training.askg`); ``noise.random_snippets`` adds RORA-VLM's random snippets;
``noise.counterfactual`` swaps answers in references and targets (:mod:`rablip.training.counterfactual`). With
``train.feature_cache`` the references' images come as precomputed vision features from the
frozen-feature cache (:mod:`rablip.training.feature_cache`) instead of decoded pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from rablip.benchmarks import load_split
from rablip.config.schema import Config
from rablip.data.images import ImageLoader
from rablip.data.kb import KBStore
from rablip.data.random_items import RandomKBItems
from rablip.data.records import QAExample
from rablip.data.samples import Sample, item_has_image, make_qa_sample, make_selection_sample
from rablip.data.snippet_items import reference_items
from rablip.data.webqa_kb import keep_stored_sources
from rablip.errors import ConfigError
from rablip.evaluation.predict import generate_answers
from rablip.evaluation.vqa_metric import vqa_accuracy
from rablip.models.factory import load_generator
from rablip.models.processing import Collator, build_collator
from rablip.retrieval.references import References, ranked_references
from rablip.stages.runtime import interrupted, seed, start_run, write_final
from rablip.training.askg import ReferencePlan, plan_references
from rablip.training.counterfactual import CounterfactualAnswers
from rablip.training.feature_cache import FeatureCache, cache_for_run
from rablip.training.trainer import TrainingInterrupted, train
from rablip.utils.logging import get_logger

log = get_logger("rablip.finetune")


class FinetuneDataset(Dataset):
    """Indexed by ``(example index, epoch)``: the QA sample and, with ASKG, the selection sample.
    With ``features`` (a feature cache), item images in it come as cached features, not pixels; with
    ``counterfactual``, some examples get answer swaps (training only); examples whose id is in
    ``image_only`` (replayed ones) get no references."""

    def __init__(self, cfg: Config, examples: list[QAExample], kb: KBStore, references: References,
                 features: FeatureCache | None = None, counterfactual: CounterfactualAnswers | None = None,
                 image_only: set[str] | None = None) -> None:
        self.cfg = cfg
        self.examples = examples
        self.image_only = image_only or set()
        self.kb = kb
        self.references = references
        self.features = features
        # Snippet references (two_stage): noise snippets are random image items of other entities.
        self.random_items = RandomKBItems(kb, images_only=references.snippet_texts is not None)
        self.counterfactual = counterfactual
        self.question_images = ImageLoader(None, cfg.data.on_bad_image)
        self.item_images = ImageLoader(kb.root, cfg.data.on_bad_image)

    def __len__(self) -> int:
        return len(self.examples)

    def plan(self, example: QAExample, rng: np.random.Generator) -> ReferencePlan:
        cfg = self.cfg
        if cfg.retrieval.source == "none" or cfg.retrieval.k == 0 or example.id in self.image_only:
            return ReferencePlan(ids=[], relevant=[])
        gold = list(example.relevant_ids or [])
        ranked = self.references.ids(example.id) if self.references.retrieved else None
        relevant = gold if ranked is None or cfg.askg.enabled and gold else ranked[:cfg.retrieval.k]
        titles = {item.title for item in self.kb.get_many(gold)} if gold else set()
        if example.extra.get("entity_text"):  # the question's own entity (InfoSeek's entity labels, OVEN)
            titles.add(example.extra["entity_text"])

        def random_items(r: np.random.Generator, n: int, exclude: set[str]) -> list[str]:
            return self.random_items(r, n, exclude | set(gold), titles)

        def has_image(ids) -> list[bool]:
            return [item_has_image(item) for item in self.kb.get_many(ids)]

        return plan_references(relevant, cfg.retrieval.k, rng, random_items=random_items, askg=cfg.askg.enabled,
                               noise_ratio=cfg.askg.noise_ratio, negatives=cfg.askg.negatives, ranked=ranked,
                               dataset_negatives=example.extra.get("negative_ids"),
                               random_snippets=cfg.noise.random_snippets, answer_refs=cfg.askg.answer_refs,
                               selection_order=cfg.askg.selection_order, has_image=has_image,
                               answer_order=cfg.askg.answer_order)

    def __getitem__(self, key: tuple[int, int]) -> list[Sample]:
        index, epoch = key
        example = self.examples[index]
        rng = np.random.default_rng([self.cfg.run.seed, epoch, index])
        plan = self.plan(example, rng)
        load_q, load_item = self.question_images.load, self.item_images.load
        texts = self.references.texts_of(example.id)  # a snippet's attached texts (two_stage references)
        items = reference_items(self.kb, plan.ids, texts)
        selection_items = reference_items(self.kb, plan.selection_ids or [], texts)
        swap = self.counterfactual.draw(example, items, rng) if self.counterfactual else None
        if swap is not None:
            example, items, selection_items = swap.example(example), swap.items(items), swap.items(selection_items)
        views = self.cfg.prompt.reference_views
        samples = [make_qa_sample(example, items, load_q, load_item_image=load_item,
                                  item_features=self.cached(plan.ids), reference_views=views)]
        if plan.selection_ids:
            samples.append(make_selection_sample(example, selection_items, plan.selection_target,
                                                 self.cfg.askg.weight, load_q, load_item_image=load_item,
                                                 item_features=self.cached(plan.selection_ids),
                                                 reference_views=views))
        return samples

    def cached(self, item_ids: list[str]) -> list[torch.Tensor | None] | None:
        """The cached features of the items (None without a cache)."""
        return self.features.features_of(item_ids) if self.features is not None else None


def replay_examples(cfg: Config, train: list[QAExample]) -> list[QAExample]:
    """The first examples of ``data.replay``, as many as make them ``data.replay_share`` of training."""
    share = cfg.data.replay_share
    if not share:
        return []
    replay = load_split(cfg.data, "replay")
    wanted = round(len(train) * share / (1.0 - share))
    if len(replay) < wanted:
        log.warning("data.replay has %d examples, fewer than the %d that data.replay_share=%s asks for; using all",
                    len(replay), wanted, share)
    clashing = {e.id for e in train} & {e.id for e in replay[:wanted]}
    if clashing:
        raise ConfigError(f"data.replay and data.train share question ids ({', '.join(sorted(clashing)[:5])}); "
                          "replayed questions need ids of their own.")
    return replay[:wanted]


def max_references(cfg: Config) -> int:
    """References a training sample may hold: k plus the noise snippets; at least the two of the release's
    selection sample (``askg.answer_refs=gold``), whatever k is."""
    if cfg.retrieval.source == "none":
        return 0
    gold_selection = 2 if cfg.askg.enabled and cfg.askg.answer_refs == "gold" and cfg.retrieval.k else 0
    return max(cfg.retrieval.k + cfg.noise.random_snippets, gold_selection)


def flatten_collate(collator: Collator):
    def collate(groups: list[list[Sample]]) -> dict[str, torch.Tensor]:
        return collator([sample for group in groups for sample in group])
    return collate


def sequence_match(logits: torch.Tensor, labels: torch.Tensor, shift: bool) -> torch.Tensor:
    """Per sample: every labelled token is the argmax of its logits (teacher forcing)."""
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    mask = labels != -100
    right = (logits.argmax(-1) == labels) | ~mask
    return right.all(dim=1) & mask.any(dim=1)


def answer_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted answer + ASKG loss, with the two parts and the selection accuracy to log."""
    out = model(**batch, return_logits=False)
    logs: dict[str, float] = {}
    if out.qa_loss is not None:
        logs["qa_loss"] = float(out.qa_loss)
    if out.askg_loss is not None:
        logs["askg_loss"] = float(out.askg_loss)
        selection = batch["sample_kind"] == 1
        if out.target_match is not None:
            right = out.target_match[selection]
        else:
            shift = bool(getattr(model, "module", model).is_decoder_only)
            right = sequence_match(out.logits.detach(), batch["labels"], shift)[selection]
        logs["selection_acc"] = float(right.float().mean())
    return out.loss, logs


def make_val_evaluator(cfg: Config, collator: Collator, kb: KBStore, run_dir: Path, limit: int = 256,
                       features: FeatureCache | None = None):
    """VQA accuracy of generated answers on the first ``limit`` val examples, with their references."""
    examples = load_split(cfg.data, "val")[:limit]
    references = ranked_references(cfg, examples, "val", run_dir)
    dataset = FinetuneDataset(cfg, examples, kb, references, features)

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        samples = [dataset[(i, 0)][0] for i in range(len(examples))]
        answers = generate_answers(model, collator, samples, batch_size=cfg.eval.batch_size,
                                   num_beams=1, max_new_tokens=cfg.eval.max_new_tokens)
        return {"vqa_acc": 100.0 * float(np.mean([vqa_accuracy(a, ex.answers) for a, ex in zip(answers, examples)]))}
    return evaluate


def finetune(cfg: Config) -> int:
    """Fine-tune ``model.checkpoint`` on ``data.train``; the trainable weights go to ``<run>/final``."""
    # Run: accelerator and run directory; the base generator (main process first); seeds.
    accelerator, run_dir = start_run(cfg)
    with accelerator.main_process_first():
        model = load_generator(cfg, for_training=True)  # + LoRA adapters on the LLM with model.lora.r > 0
    seed(cfg, accelerator)
    collator = build_collator(cfg, model, max_references(cfg))

    # Data: the knowledge base, the training examples (and replayed ones), their ranked references.
    kb = KBStore.open(cfg.data.kb.store_dir, root=cfg.data.kb.root or None)
    examples = load_split(cfg.data, "train")
    if cfg.data.dataset == "webqa":  # a store built with data.kb.on_missing=skip lacks some listed facts
        examples = keep_stored_sources(examples, kb)
    references = ranked_references(cfg, examples, "train", run_dir)
    with accelerator.main_process_first():
        features = cache_for_run(cfg, model, collator.image_processor, kb, is_main_process=accelerator.is_main_process,
                                 device=accelerator.device)
    counterfactual = CounterfactualAnswers(examples, cfg.noise.counterfactual, cfg.noise.counterfactual_types)
    replay = replay_examples(cfg, examples)
    if replay:
        log.info("replaying %d examples of data.replay (answered without references) beside %d training examples",
                 len(replay), len(examples))
    dataset = FinetuneDataset(cfg, examples + replay, kb, references, features, counterfactual,
                              image_only={e.id for e in replay})
    evaluate = None
    if cfg.train.eval_every and cfg.data.val.path:
        evaluate = make_val_evaluator(cfg, collator, kb, run_dir, features=features)

    # Loop: the answer (+ ASKG selection) loss over (example, epoch) samples.
    try:
        state = train(cfg, accelerator, run_dir, model, dataset, flatten_collate(collator), answer_loss, evaluate)
    except TrainingInterrupted as stop:
        return interrupted(stop)

    # Artefact: the trainable weights (and LoRA adapter files) beside a pointer to the base checkpoint.
    return write_final(accelerator, run_dir, lambda out: model.save_pretrained(str(out), trainable_only=True),
                       "fine-tuning done", state.step)
