"""Pre-training stage: the Q-Former and fusion encoder learn one space for questions and knowledge
items (``run_pretrain.py``), with image-text contrastive (ITC), matching with hard negatives (ITM)
and Q-Former caption generation (ITG) losses, each weighted by ``train.{itc,itm,itg}_weight``.

Training pairs (query, item):
- knowledge-item pairs: the image of an image+text item as the query, the whole item as the target
  (``train.item_pairs=entity``: any item with the same title, such as the entity's text article, with
  a random training question's text in the query as real queries have, and the image moved a little,
  so that entities no training question asks about are learnt too). The question is one that an item
  of the target's kind answers in training (a text item: a question with a relevant text item; an
  image item: one with a relevant image item), so a query never learns to find an item that could not
  answer its question;
- question pairs: a training question's image and text as the query, one of its relevant items as
  the target;
- extra pairs (``data.extra_pairs``): records of a JSONL file (:mod:`rablip.data.extra_pairs`), a
  ``share`` of all pairs, a new record for each extra pair of each epoch (the synthetic world's are
  renderings of invented creatures with their fact texts or captions, written by make_synthetic); or
  samples of a sharded corpus, WebDataset tar shards of image-text pairs or JSONL shards, streamed, each
  process and worker reading shards of its own, resumed from the step count
  (:mod:`rablip.data.pair_shards`, :mod:`rablip.training.stream_slots`).
The final directory holds the retrieval encoder (``model.fusion.checkpoint`` of later stages) with the
Q-Former tokenizer and image processor it was trained with, which later stages' retrieval reads from there.
``train.stage=rerank`` trains the re-ranker head on that encoder instead (:mod:`rablip.stages.rerank`).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from rablip.benchmarks import load_split
from rablip.config.schema import Config
from rablip.data.extra_pairs import ExtraPairs, questions_by_kind
from rablip.data.images import ImageLoader
from rablip.data.kb import KBStore
from rablip.data.pair_shards import ShardedPairs, is_sharded
from rablip.data.records import KBItem, QAExample
from rablip.evaluation.retrieval_metrics import retrieval_scores
from rablip.models.factory import build_retrieval_encoder, load_generator
from rablip.models.processor_files import copy_processor_files, processor_dir
from rablip.models.retrieval_processing import RetrievalBatcher
from rablip.retrieval.candidates import check_scope, listed_sources
from rablip.retrieval.embed import embed_item_batches, embed_questions
from rablip.stages.rerank import train_reranker
from rablip.stages.runtime import interrupted, seed, start_run, write_final
from rablip.training.objectives import RetrievalPretrainingLoss
from rablip.training.stream_slots import SlotStreams, StreamedPairs
from rablip.training.trainer import TrainingInterrupted, train
from rablip.utils.logging import get_logger

log = get_logger("rablip.pretrain")
GENERATOR_DIR = "generator"
_STREAM_IMAGE_ONLY = 1
"""Seeds, beside (seed, index, epoch), the draw of whether a query drops its question."""


@dataclass
class Pair:
    query_image: object
    """Question image reference (None for a question without one, e.g. WebQA's), or None when the query
    is the image of knowledge item ``record_id``."""
    question: str
    item_ids: list[str]
    """Candidate targets (one is drawn per epoch)."""
    record_id: str
    from_question: bool = False
    """A question pair (``record_id`` is the question's id); else a knowledge-item pair."""


def item_key(item_id: str) -> int:
    """A stable 63-bit integer per item id, so equal targets in a batch are not negatives."""
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "little") >> 1


def build_pairs(examples: list[QAExample], kb: KBStore, item_pairs: str = "self") -> list[Pair]:
    by_title: dict[str, list[str]] = defaultdict(list)
    image_items: list[tuple[str, str]] = []
    for batch in kb.iter_batches(4096):
        for item in batch:
            if item_pairs == "entity" and item.title:
                by_title[item.title].append(item.id)
            if item.modality == "image+text":
                image_items.append((item.id, item.title))
    pairs = [Pair(None, "", by_title.get(title) or [item_id], item_id) for item_id, title in image_items]
    unstored = 0
    for ex in examples:
        # A relevant item the store left out (WebQA's data.kb.on_missing=skip) cannot be a target.
        stored = [item_id for item_id in ex.relevant_ids or [] if item_id in kb]
        unstored += len(ex.relevant_ids or []) - len(stored)
        if stored:
            pairs.append(Pair(ex.image, ex.question, stored, ex.id, from_question=True))
    if unstored:
        log.warning("%d relevant item(s) of training questions are not in the knowledge-base store; "
                    "they are not used as targets", unstored)
    return pairs


def new_view(image, rng: np.random.Generator):
    """The image slightly rotated (up to 15 degrees), shifted (up to 10% of a side) and scaled (0.9-1.1),
    the uncovered border filled with the corner colour: another view of the same thing."""
    if image is None:
        return None
    width, height = image.size
    angle = float(rng.uniform(-15, 15))
    scale = float(rng.uniform(0.9, 1.1))
    shift = (float(rng.uniform(-0.1, 0.1)) * width, float(rng.uniform(-0.1, 0.1)) * height)
    resized = image.resize((max(1, round(width * scale)), max(1, round(height * scale))))
    canvas = Image.new(image.mode, image.size, image.getpixel((0, 0)))
    canvas.paste(resized, (round((width - resized.width) / 2), round((height - resized.height) / 2)))
    return canvas.rotate(angle, translate=shift, fillcolor=image.getpixel((0, 0)))


def extra_pairs(cfg: Config, real_pairs: int, world_size: int = 1) -> tuple[ExtraPairs | StreamedPairs | None, int]:
    """The extra pairs of ``data.extra_pairs`` and how many to add to ``real_pairs`` per epoch
    (``data.extra_pairs.share`` of all); (None, 0) when there are none. A JSONL file is read whole
    (:class:`ExtraPairs`); shards (``format=webdataset``, or a directory or brace pattern of JSONL files)
    are streamed, dealt to ``world_size`` processes x max(1, ``data.num_workers``) workers
    (:class:`StreamedPairs`)."""
    pc = cfg.data.extra_pairs
    if pc.share == 0:
        return None, 0
    extra = round(real_pairs * pc.share / (1.0 - pc.share))
    if pc.format == "jsonl" and not is_sharded(pc.path):
        return ExtraPairs(pc.path, cfg.data.on_bad_image), extra
    slots = SlotStreams(real_pairs + extra, real_pairs, cfg.train.batch_size, world_size=world_size,
                        workers=cfg.data.num_workers, seed=cfg.run.seed)
    shards = ShardedPairs(pc.path, pc.format, slots.streams, cfg.run.seed, cfg.data.on_bad_image)
    return StreamedPairs(shards, slots), extra


class PairDataset(Dataset):
    """Indexed by ``(pair index, epoch)``: the query image, question, target item and its image. Index
    ``len(pairs) + i`` of epoch e is record (e x extra + i) mod N of ``extra_records`` (N records), so a
    record repeats only after all N were used, or, for a streamed corpus, the sample the step order gives
    that slot; an empty question there is drawn as for entity pairs."""

    def __init__(self, cfg: Config, pairs: list[Pair], kb: KBStore,
                 extra_records: ExtraPairs | StreamedPairs | None = None,
                 extra: int = 0) -> None:
        self.cfg, self.pairs, self.kb, self.extra_records = cfg, pairs, kb, extra_records
        self.extra = extra if extra_records is not None else 0
        entity = cfg.train.item_pairs == "entity" or self.extra > 0
        self.questions = questions_by_item_kind(pairs, kb) if entity else {}
        self.question_images = ImageLoader(None, cfg.data.on_bad_image)
        self.item_images = ImageLoader(kb.root, cfg.data.on_bad_image)

    def __len__(self) -> int:
        return len(self.pairs) + self.extra

    def __getitem__(self, key: tuple[int, int]) -> tuple[object, str, KBItem, object]:
        query_image, question, item, item_image = self.pair(*key)
        share = self.cfg.train.image_only_queries
        if share and query_image is not None:
            # a stream of its own, so that the pairs drawn stay those of share 0
            if np.random.default_rng([self.cfg.run.seed, *key, _STREAM_IMAGE_ONLY]).random() < share:
                question = ""
        return query_image, question, item, item_image

    def pair(self, index: int, epoch: int) -> tuple[object, str, KBItem, object]:
        rng = np.random.default_rng([self.cfg.run.seed, epoch, index])
        if index >= len(self.pairs):
            if isinstance(self.extra_records, StreamedPairs):
                query_image, question, item, item_image = self.extra_records.load(index, epoch)
            else:
                record = (epoch * self.extra + index - len(self.pairs)) % len(self.extra_records)
                query_image, question, item, item_image = self.extra_records.load(record)
            return query_image, question or self.question_for(rng, item_kind(item)), item, item_image
        pair = self.pairs[index]
        item = self.kb[pair.item_ids[int(rng.integers(len(pair.item_ids)))]]
        item_image = self.item_images.load(item.image, item.id) if item.modality != "text" else None
        question = pair.question
        if pair.from_question or pair.query_image is not None:
            query_image = (self.question_images.load(pair.query_image, pair.record_id)
                           if pair.query_image is not None else None)
        else:
            source = item if item.id == pair.record_id else self.kb[pair.record_id]
            query_image = item_image if source is item else self.item_images.load(source.image, source.id)
            if self.questions:
                question = self.question_for(rng, item_kind(item))
                query_image = new_view(query_image, rng)
        return query_image, question, item, item_image

    def question_for(self, rng: np.random.Generator, kind: str) -> str:
        """A random training question that an item of ``kind`` (text, image) answers; empty when no training
        question has a relevant item of that kind (InfoSeek's questions name none): the query is then the
        item's image alone, as for an item pair."""
        questions = self.questions[kind]
        return questions[int(rng.integers(len(questions)))] if questions else ""


def item_kind(item: KBItem) -> str:
    """``text`` for a text item, ``image`` for an item with an image."""
    return "text" if item.modality == "text" else "image"


def questions_by_item_kind(pairs: list[Pair], kb: KBStore) -> dict[str, list[str]]:
    """Training question texts by the kind of item (text, image) that is relevant to them; a kind no
    question has falls back to every question."""
    return questions_by_kind((pair.question, [item_kind(item) for item in kb.get_many(pair.item_ids)])
                             for pair in pairs if pair.question)


class PretrainModel(torch.nn.Module):
    """The retrieval encoder with its loss-side parameters (temperature, Q-Former LM head)."""

    def __init__(self, objective: RetrievalPretrainingLoss) -> None:
        super().__init__()
        self.objective = objective

    @property
    def encoder(self):
        return self.objective.encoder

    def train(self, mode: bool = True) -> PretrainModel:
        """Train mode, except a frozen vision tower stays in eval mode (no dropout on frozen features)."""
        super().train(mode)
        if not any(p.requires_grad for p in self.encoder.vision_model.parameters()):
            self.encoder.vision_model.eval()
        return self

    def forward(self, query: dict, item: dict, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.objective(query, item, ids)


def make_collate(batcher: RetrievalBatcher):
    def collate(rows: list[tuple]) -> dict:
        query_images, questions, items, item_images = zip(*rows)
        return {"query": batcher.queries(list(query_images), list(questions)),
                "item": batcher.items(list(items), list(item_images)),
                "ids": torch.tensor([item_key(item.id) for item in items], dtype=torch.long)}
    return collate


def make_loss(cfg: Config):
    weights = {"itc": cfg.train.itc_weight, "itm": cfg.train.itm_weight, "itg": cfg.train.itg_weight}

    def loss(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        device = batch["ids"].device
        query = {k: v.to(device) for k, v in batch["query"].items()}
        item = {k: v.to(device) for k, v in batch["item"].items()}
        parts = model(query, item, batch["ids"])
        total = sum(weights[name] * value for name, value in parts.items())
        return total, {name: float(value.detach()) for name, value in parts.items()}
    return loss


def make_retrieval_evaluator(cfg: Config, batcher: RetrievalBatcher, kb: KBStore, limit: int = 512):
    """Recall@1/5/10 and MRR of val questions (gold labels) against the whole knowledge base, or with
    ``retrieval.scope=candidates`` (WebQA) against each question's own listed sources: only those items
    are embedded, not the whole corpus. Without labelled val questions (InfoSeek names no relevant item) it
    scores nothing: ``{}``."""
    examples = [ex for ex in load_split(cfg.data, "val") if ex.relevant_ids][:limit]
    question_images = ImageLoader(None, cfg.data.on_bad_image)
    item_images = ImageLoader(kb.root, cfg.data.on_bad_image)
    check_scope(cfg)
    listed = ([[item_id for item_id in listed_sources(ex) if item_id in kb] for ex in examples]
              if cfg.retrieval.scope == "candidates" else None)

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        if not examples:
            return {}
        encoder = model.encoder
        if listed is None:
            batches = kb.iter_batches(cfg.eval.batch_size)
        else:
            pool = list(dict.fromkeys(item_id for own in listed for item_id in own))
            if not pool:
                return {}
            batches = (kb.get_many(pool[start:start + cfg.eval.batch_size])
                       for start in range(0, len(pool), cfg.eval.batch_size))
        ids, items = embed_item_batches(encoder, batcher, batches, item_images.load)
        queries = embed_questions(encoder, batcher, examples, question_images.load, cfg.eval.batch_size)
        similarity = queries @ items.T
        if listed is None:
            ranked = [[ids[j] for j in row] for row in np.argsort(-similarity, axis=1)[:, :10]]
        else:
            column = {item_id: j for j, item_id in enumerate(ids)}
            ranked = [[own[j] for j in np.argsort(-row[[column[i] for i in own]], kind="stable")[:10]]
                      for row, own in zip(similarity, listed, strict=True)]
        scores = retrieval_scores(ranked, [set(ex.relevant_ids) for ex in examples])
        return {k: v for k, v in scores.items() if k != "questions"}
    return evaluate


def export_generator(generator: torch.nn.Module, out: Path) -> None:
    """Save the generator (sharing the encoder's trained vision model, query tokens and Q-Former) as a
    full checkpoint with its base checkpoint's tokenizers and image processor beside it."""
    generator.save_pretrained(str(out))
    copy_processor_files(processor_dir(generator.config.base_checkpoint), out)


def pretrain(cfg: Config) -> int:
    """Pre-train the retrieval encoder on ``data.train`` and the knowledge base; it goes to ``<run>/final``.
    With ``train.stage=rerank``, train the re-ranker head on the pre-trained encoder instead."""
    if cfg.train.stage == "rerank":
        return train_reranker(cfg)
    # Run: accelerator and run directory; the base generator (main process first); seeds.
    accelerator, run_dir = start_run(cfg)
    with accelerator.main_process_first():
        generator = load_generator(cfg)
    seed(cfg, accelerator)

    # Model: the retrieval encoder on the generator's vision model and Q-Former, with its losses.
    batcher = RetrievalBatcher.from_checkpoint(generator.config.base_checkpoint, cfg.data.qformer_max_length)
    processors = processor_dir(generator.config.base_checkpoint)  # the batcher's files, saved with the encoder
    encoder = build_retrieval_encoder(cfg, generator)
    if not cfg.model.export_generator:
        del generator  # the LLM is not needed here
    trainable = set(cfg.model.trainable)
    for name, module in (("vision_model", encoder.vision_model), ("qformer", encoder.qformer)):
        module.requires_grad_(name in trainable)
    encoder.query_tokens.requires_grad_("query_tokens" in trainable)
    encoder.fusion.requires_grad_("fusion" in trainable)
    encoder.match_head.requires_grad_("fusion" in trainable)
    if "vision_model" not in trainable:
        encoder.vision_model.eval()
    model = PretrainModel(RetrievalPretrainingLoss(encoder, itg_bos_token_id=batcher.tokenizer.cls_token_id))

    # Data: (query, item) pairs from the knowledge base and the training questions.
    kb = KBStore.open(cfg.data.kb.store_dir, root=cfg.data.kb.root or None)
    pairs = build_pairs(load_split(cfg.data, "train"), kb, cfg.train.item_pairs)
    extra_records, extra = extra_pairs(cfg, len(pairs), accelerator.num_processes)
    log.info("pre-training pairs: %d (knowledge items and training questions)%s", len(pairs),
             f" and {extra} from {cfg.data.extra_pairs.path} per epoch" if extra else "")
    evaluate = make_retrieval_evaluator(cfg, batcher, kb) if cfg.data.val.path else None

    dataset = PairDataset(cfg, pairs, kb, extra_records, extra)

    # Loop: ITC + ITM + ITG over (pair, epoch) samples.
    try:
        state = train(cfg, accelerator, run_dir, model, dataset, make_collate(batcher), make_loss(cfg), evaluate)
    except TrainingInterrupted as stop:
        return interrupted(stop)

    # Artefacts: the retrieval encoder with the Q-Former tokenizer and image processor it was trained with
    # (later stages read them from its dir: a LLaVA generator has none), and the generator when asked.
    def save_final(out: Path) -> None:
        model.encoder.save_pretrained(out)
        copy_processor_files(processors, out)
        if cfg.model.export_generator:
            export_generator(generator, out / GENERATOR_DIR)

    return write_final(accelerator, run_dir, save_final, "pre-training done", state.step)
