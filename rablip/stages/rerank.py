"""Re-ranker stage (``run_pretrain.py --config ... train.stage=rerank``): train the re-ranker's 2-way
head on the frozen fusion encoder's fused (question, item) features, as RA-BLIP's figure re-ranks the
retriever's top-K with a trainable classifier on frozen features.

Config -> data -> model -> loop -> artefacts:

- the pre-trained retrieval encoder of ``model.fusion.checkpoint``, frozen (eval mode, no gradients;
  ``model.trainable`` is not read), and its retriever over ``retrieval.index_dir`` without a re-ranker;
- candidates of a training question: its top ``cache_depth x retrieval.rerank_factor`` items (with
  retrieval.k 3: 10 x 4 = 40), the very list that ``retrieval.rerank_model`` re-scores at evaluation
  (over the whole knowledge base, or with ``retrieval.scope=candidates`` among its listed sources).
  Positives: its relevant items (those the retriever missed too); hard negatives: every other
  candidate. A question without a relevant item or without a negative is left out;
- features: the fused [CLS] feature of every (question, candidate) pair, computed once under no grad
  (:meth:`rablip.retrieval.retriever.Retriever.pair_features`; the encoder is frozen, so they never
  change) and kept in memory as float16: questions x candidates x width x 2 bytes (34k WebQA questions
  x 41 x 768: about 2 GB). Every process computes all of them;
- the head: a fresh 2-way head initialised from the ITM head (:class:`FusionReranker` ``own_head``).
  A sample is one training question: one positive (drawn per epoch) and all its hard negatives; the
  loss is the softmax cross-entropy of the positive over the match log-odds of the (positive,
  negatives) list, which is what re-ranking a list asks of the head;
- evaluation (with ``data.val``): recall@1/5 and MRR of up to ``VAL_QUESTIONS`` val questions when their
  retrieved candidates are ordered by the head, beside the retriever's own ``retriever_recall@1``;
- artefacts: ``rerank_head.safetensors`` (with the encoder's fingerprint) in ``<run>/final`` and beside
  the encoder in ``model.fusion.checkpoint``, where ``retrieval.rerank_model=true`` finds it. The
  encoder's own files are not touched, so its fingerprint and every index built for it stay valid,
  and no later config has to change; pre-training that encoder again replaces its directory, and with
  it the head (which would no longer fit it).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from rablip.benchmarks import load_split
from rablip.config.schema import Config
from rablip.data.images import ImageLoader
from rablip.data.records import QAExample
from rablip.errors import ConfigError
from rablip.evaluation.retrieval_metrics import retrieval_scores
from rablip.models.rerank import HEAD_FILE, FusionReranker, save_rerank_head
from rablip.retrieval.cache import cache_depth, retrieve_examples
from rablip.retrieval.candidates import check_scope, retrieve_candidates
from rablip.retrieval.components import encoder_fingerprint
from rablip.retrieval.retriever import Retriever
from rablip.stages.runtime import interrupted, seed, start_run, write_final
from rablip.training.trainer import TrainingInterrupted, train
from rablip.utils.logging import get_logger

log = get_logger("rablip.rerank")
VAL_QUESTIONS = 512
"""Val questions (with relevance labels) that the periodic evaluation re-ranks."""


@dataclass
class Candidates:
    """One question's candidate items and their fused features with the question."""

    ids: list[str]
    """Candidate item ids: the retrieved ones best first, then relevant items the retriever missed."""
    features: torch.Tensor
    """(C, H) float16 fused [CLS] features, one row per id."""
    relevant: torch.Tensor
    """(C,) bool: whether each candidate is one of the question's relevant items."""


def candidate_depth(cfg: Config) -> int:
    """How many retrieved items ``retrieval.rerank_model`` re-scores per question at evaluation."""
    return cache_depth(cfg) * cfg.retrieval.rerank_factor


def query_texts(cfg: Config, examples: Sequence[QAExample]) -> list[str]:
    """The query texts the retriever searches with: the questions (``ra_blip``) or none (``image``)."""
    if cfg.retrieval.mode == "two_stage":
        raise ConfigError("train.stage=rerank trains on (question image, question) queries; two_stage retrieval "
                          "re-ranks text items for the entity-expanded question. Use retrieval.mode=ra_blip or image.")
    return [ex.question if cfg.retrieval.mode == "ra_blip" else "" for ex in examples]


@torch.no_grad()
def candidate_features(cfg: Config, retriever: Retriever, examples: Sequence[QAExample], add_relevant: bool,
                       ) -> list[Candidates]:
    """The retriever's top :func:`candidate_depth` items of each of ``examples`` with their fused features
    (``add_relevant``: relevant items it missed are added), in example order."""
    loader = ImageLoader(None, cfg.data.on_bad_image)
    batch = cfg.retrieval.encode_batch_size or cfg.eval.batch_size
    depth = candidate_depth(cfg)
    retrieve = retrieve_candidates if cfg.retrieval.scope == "candidates" else retrieve_examples
    retrieved = retrieve(retriever, examples, depth, loader, batch_size=batch)
    texts = query_texts(cfg, examples)
    lists = []
    for ex in examples:
        ids = [item_id for item_id, _ in retrieved[ex.id]]
        # A question the retriever could not query (image mode, no usable image) gets no candidates; a
        # relevant item the store left out (data.kb.on_missing=skip) cannot be one.
        wanted = add_relevant and (bool(ids) or cfg.retrieval.mode == "ra_blip")
        missed = [i for i in ex.relevant_ids or [] if wanted and i not in ids and i in retriever.kb]
        lists.append(ids + missed)
    chunk = max(1, batch // max(depth, 1))
    log.info("fused features of %d questions x up to %d candidates (%d questions per encoder batch)",
             len(examples), depth, chunk)
    out: list[Candidates] = []
    for start in range(0, len(examples), chunk):
        part = examples[start:start + chunk]
        images = [loader.load(ex.image, ex.id) if ex.image is not None else None for ex in part]
        fused, rows = retriever.pair_features(images, texts[start:start + chunk], lists[start:start + chunk])
        fused = fused.float().cpu().half()
        for query, ex in enumerate(part):
            mine = [n for n, (owner, _) in enumerate(rows) if owner == query]
            ids = [rows[n][1] for n in mine]
            relevant = set(ex.relevant_ids or [])
            out.append(Candidates(ids, fused[mine], torch.tensor([i in relevant for i in ids], dtype=torch.bool)))
    return out


class RerankSamples(Dataset):
    """Indexed by ``(question index, epoch)``: the (1 + negatives, H) features of one question's list,
    the positive (drawn from its relevant candidates, seeded by ``run.seed``, epoch and index) first."""

    def __init__(self, questions: list[Candidates], seed: int) -> None:
        self.questions, self.seed = questions, seed

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        index, epoch = key
        question = self.questions[index]
        positives = torch.nonzero(question.relevant).flatten()
        rng = np.random.default_rng([self.seed, epoch, index])
        positive = int(positives[int(rng.integers(len(positives)))])
        return torch.cat([question.features[positive:positive + 1], question.features[~question.relevant]])


def collate(rows: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pad the lists to the longest: ``features`` (B, C, H) float32 and ``mask`` (B, C) of real rows."""
    width = max(row.shape[0] for row in rows)
    features = torch.zeros(len(rows), width, rows[0].shape[1])
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for b, row in enumerate(rows):
        features[b, :row.shape[0]] = row.float()
        mask[b, :row.shape[0]] = True
    return {"features": features, "mask": mask}


def listwise_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy of the positive (column 0) over each list's match log-odds; also logs how often
    the positive scores above every hard negative (``positive_first``)."""
    features, mask = batch["features"], batch["mask"]
    size, width, hidden = features.shape
    scores = model(features.reshape(size * width, hidden)).float().view(size, width)
    scores = scores.masked_fill(~mask, float("-inf"))
    loss = F.cross_entropy(scores, torch.zeros(size, dtype=torch.long, device=scores.device))
    first = (scores[:, 1:] < scores[:, :1]).all(dim=1).float().mean()
    return loss, {"positive_first": float(first)}


def ranked_by_head(model: torch.nn.Module, questions: Sequence[Candidates]) -> list[list[str]]:
    """Each question's candidate ids ordered by the head's scores (ties keep the retriever's order)."""
    device = next(model.parameters()).device
    ranked = []
    for question in questions:
        if not question.ids:
            ranked.append([])
            continue
        scores = model(question.features.float().to(device)).float()
        order = torch.sort(scores, descending=True, stable=True).indices.tolist()
        ranked.append([question.ids[i] for i in order])
    return ranked


def make_evaluator(val: list[Candidates], relevant: list[set[str]]):
    """recall@1/5 and MRR of the val candidates re-ranked by the head, and the retriever's recall@1."""
    retriever_recall = retrieval_scores([q.ids for q in val], relevant, ks=(1,)).get("recall@1", 0.0)

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        scores = retrieval_scores(ranked_by_head(model, val), relevant, ks=(1, 5))
        return {"recall@1": scores.get("recall@1", 0.0), "recall@5": scores.get("recall@5", 0.0),
                "mrr": scores.get("mrr", 0.0), "retriever_recall@1": retriever_recall}
    return evaluate


def train_reranker(cfg: Config) -> int:
    """Train the re-ranker head on the frozen encoder of ``model.fusion.checkpoint``; the head goes to
    ``<run>/final`` and beside the encoder."""
    # Run: accelerator and run directory; the frozen encoder and its retriever without a re-ranker.
    check_scope(cfg)
    accelerator, run_dir = start_run(cfg)
    source = Path(cfg.model.fusion.checkpoint)
    fingerprint = encoder_fingerprint(source)
    plain = dataclasses.replace(cfg, retrieval=dataclasses.replace(cfg.retrieval, rerank_model=False))
    retriever = Retriever.from_config(plain, accelerator.device)
    retriever.encoder.requires_grad_(False)
    seed(cfg, accelerator)

    # Data: each training question's candidates with their fused features, computed once.
    examples = [ex for ex in load_split(cfg.data, "train") if ex.relevant_ids]
    questions = [q for q in candidate_features(cfg, retriever, examples, add_relevant=True)
                 if q.relevant.any() and not q.relevant.all()]
    if not questions:
        raise ConfigError(f"no training question of data.train has both a relevant item and a non-relevant "
                          f"candidate among the top {candidate_depth(cfg)}: nothing to train the re-ranker on.")
    log.info("re-ranker training: %d questions, %.1f candidates each (top %d retrieved + missed relevant)",
             len(questions), sum(len(q.ids) for q in questions) / len(questions), candidate_depth(cfg))
    evaluate = None
    if cfg.data.val.path:
        val_examples = [ex for ex in load_split(cfg.data, "val") if ex.relevant_ids][:VAL_QUESTIONS]
        val = candidate_features(cfg, retriever, val_examples, add_relevant=False)
        evaluate = make_evaluator(val, [set(ex.relevant_ids) for ex in val_examples])

    # Model: a 2-way head of its own, initialised from the ITM head; nothing else trains.
    model = FusionReranker(retriever.encoder, own_head=True)

    # Loop: listwise cross-entropy over (positive, hard negatives).
    try:
        state = train(cfg, accelerator, run_dir, model, RerankSamples(questions, cfg.run.seed), collate,
                      listwise_loss, evaluate)
    except TrainingInterrupted as stop:
        return interrupted(stop)

    # Artefacts: the head in the run's final directory and beside the (unchanged) encoder files.
    def save_final(out: Path) -> None:
        written = save_rerank_head(model.head, out, fingerprint)
        installed = source / HEAD_FILE  # the same bytes (safetensors orders metadata keys freely)
        shutil.copyfile(written, installed.with_name(installed.name + ".tmp"))
        os.replace(installed.with_name(installed.name + ".tmp"), installed)
        log.info("re-ranker head installed at %s", installed)

    return write_final(accelerator, run_dir, save_final, "re-ranker training done", state.step)
