"""The retriever: (question image, question) batches -> top-k knowledge item ids with scores.

Modes (``retrieval.mode``):

- ``ra_blip``: the fused image+question query (the question also instructs the Q-Former, unless
  ``instruct_queries`` is off) searches every item (both group indexes, merged by score). A
  question without an image (WebQA) becomes a text-only query.
- ``image``: the image-only query (no question text) searches the items with an image.
- ``two_stage`` (RORA-VLM): knowledge snippets (:mod:`rablip.retrieval.snippets`). The image-only
  query searches the items with an image; the first hit of each entity (title) anchors a snippet;
  the question expanded with that entity's name (:func:`expand_question`), as a text-only query,
  searches the text-only items, and up to ``snippet_texts`` of that entity's hits are attached. The
  result is the ranking of the anchors (stage 1); :meth:`Retriever.retrieve_snippets` returns the
  snippets. :meth:`Retriever.retrieve_two_stage` is the stages' diagnostic view: one question
  expanded with the first ``expansion_entities`` distinct names, and its text hits.

Searching a group means searching its own index (:mod:`rablip.retrieval.groups`), so a result of
the ``image`` or ``text`` group never holds an item of the other modality.

Re-ranking: ``rerank_exact`` makes the index re-score ``k * rerank_factor`` candidates with the
exact embeddings. With a ``reranker`` (``retrieval.rerank_model``) the top ``k * rerank_factor``
candidates are re-scored by the fusion re-ranker on the joint (query, item) sequence, and the best
``k`` kept; their score is then the re-ranker's match log-odds instead of the inner product. The
re-ranker scores with the head trained by ``run_pretrain.py train.stage=rerank`` when the encoder
directory holds one (:data:`rablip.models.rerank.HEAD_FILE`), with the ITM head otherwise.
:meth:`Retriever.pair_features` gives the fused features it scores (the re-ranker stage trains on them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from rablip.config.schema import Config
from rablip.data.images import ImageLoader
from rablip.data.kb import KBStore
from rablip.errors import RablipError
from rablip.models.fusion_layers import TokenSequence
from rablip.models.rerank import FusionReranker
from rablip.models.retrieval_processing import RetrievalBatcher
from rablip.retrieval.groups import GROUPS, GroupIndexes, Hits
from rablip.retrieval.item_encoding import item_sequence_shared, shared_image_batch
from rablip.utils.dist import process_device

MODES = ("ra_blip", "image", "two_stage")
STAGE1_DEPTH_PER_ENTITY = 5
"""two_stage: image hits searched per wanted entity name (several hits may share one title)."""


def expand_question(question: str, entity_names: Sequence[str]) -> str:
    """The stage-2 query text: the entity names first (so truncation cuts the question, not them)."""
    names = "; ".join(name for name in entity_names if name)
    return f"{names}. {question}" if names else question


@dataclass
class TwoStageResult:
    """Both stages of a two-stage retrieval for one question."""

    image_hits: list[tuple[str, float]]
    """Stage 1: image items found by the image-only query, best first."""
    entity_names: list[str]
    """Distinct titles of the image hits used to expand the question."""
    expanded_question: str
    text_hits: list[tuple[str, float]]
    """Stage 2: text items found by the expanded question (the retrieval result)."""


class Retriever:
    """Embeds queries with the retrieval encoder and searches the group indexes; see the module docstring."""

    def __init__(self, encoder: torch.nn.Module, batcher: RetrievalBatcher, indexes: GroupIndexes,
                 mode: str = "ra_blip", *, kb: KBStore | None = None,
                 load_item_image: Callable | None = None, expansion_entities: int = 1, snippet_texts: int = 2,
                 snippet_search_depth: int = 0,
                 reranker: FusionReranker | None = None, rerank_exact: bool = False, rerank_factor: int = 4,
                 nprobe: int | None = None, batch_size: int = 32, bf16: bool = False) -> None:
        if mode not in MODES:
            raise RablipError(f"retrieval mode {mode!r} is not one of {', '.join(MODES)}.")
        if kb is None and (mode == "two_stage" or reranker is not None):
            raise RablipError("two_stage retrieval (entity names) and model re-ranking (item contents) need the "
                              "knowledge-base store: pass kb=KBStore.open(...).")
        self.encoder = encoder
        self.batcher = batcher
        self.indexes = indexes
        self.mode = mode
        self.kb = kb
        self.load_item_image = load_item_image or ImageLoader(None, "error").load
        self.expansion_entities = expansion_entities
        self.snippet_texts = snippet_texts
        self.snippet_search_depth = snippet_search_depth
        self.reranker = reranker
        self.search_kwargs = {"rerank_exact": rerank_exact, "rerank_factor": rerank_factor, "nprobe": nprobe}
        self.rerank_factor = rerank_factor
        self.batch_size = batch_size
        self.bf16 = bf16
        self.device = next(encoder.parameters()).device

    @classmethod
    def from_config(cls, cfg: Config, device: torch.device | None = None) -> Retriever:
        """The retriever of ``retrieval.*`` with ``model.fusion.checkpoint`` and ``retrieval.index_dir``."""
        from rablip.retrieval.components import (
            encoder_fingerprint,
            load_encoder,
            retrieval_batcher,
            use_bf16,
        )

        r = cfg.retrieval
        device = device or process_device()
        encoder = load_encoder(cfg, device)
        fingerprint = encoder_fingerprint(cfg.model.fusion.checkpoint)
        indexes = GroupIndexes.load(r.index_dir, expected_fingerprint=fingerprint, allow_foreign=r.allow_foreign_index)
        reranker = None
        if r.rerank_model:
            reranker = FusionReranker.from_pretrained(encoder, cfg.model.fusion.checkpoint, fingerprint).to(device)
        kb = KBStore.open(cfg.data.kb.store_dir, root=cfg.data.kb.root or None)
        return cls(encoder, retrieval_batcher(cfg), indexes, r.mode, kb=kb,
                   load_item_image=ImageLoader(None, cfg.data.on_bad_image).load,
                   expansion_entities=r.expansion_entities, snippet_texts=r.snippet_texts,
                   snippet_search_depth=r.snippet_search_depth,
                   reranker=reranker, rerank_exact=r.rerank_exact,
                   rerank_factor=r.rerank_factor, nprobe=r.nprobe,
                   batch_size=cfg.retrieval.encode_batch_size or cfg.eval.batch_size, bf16=use_bf16(cfg, device))

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def _query_batch(self, images: Sequence[Image.Image | None], texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return {name: value.to(self.device) for name, value in self.batcher.queries(images, texts).items()}

    @torch.no_grad()
    def embed_queries(self, images: Sequence[Image.Image | None], texts: Sequence[str]) -> np.ndarray:
        """(Q, D) float32 query embeddings; a None image or an empty text leaves that part out."""
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self._query_batch(images[start:start + self.batch_size], texts[start:start + self.batch_size])
            with self._autocast():
                out.append(self.encoder.encode_queries(batch).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.encoder.fusion.embed_dim), np.float32)

    def search(self, groups: tuple[str, ...], images: Sequence[Image.Image | None], texts: Sequence[str],
               k: int) -> Hits:
        """Top-``k`` hits of the (images, texts) queries over ``groups``, re-ranked when configured."""
        queries = self.embed_queries(images, texts)
        depth = k * self.rerank_factor if self.reranker is not None else k
        hits = self.indexes.search(groups, queries, depth, **self.search_kwargs)
        if self.reranker is not None:
            hits = self.rerank(images, texts, hits, k)
        return hits

    def retrieve(self, images: Sequence[Image.Image | None], questions: Sequence[str], k: int) -> Hits:
        """Top-``k`` (item id, score) per question, best first, in ``self.mode``."""
        if len(images) != len(questions):
            raise RablipError(f"retrieve got {len(images)} images for {len(questions)} questions.")
        if k <= 0 or not questions:
            return [[] for _ in questions]
        if self.mode == "ra_blip":
            return self.search(GROUPS, images, questions, k)
        if self.mode == "image":
            self._require_images(images)
            return self.search(("image",), images, [""] * len(images), k)
        return [[(snippet.image_id, snippet.score) for snippet in row]
                for row in self.retrieve_snippets(images, questions, k)]

    def retrieve_snippets(self, images: Sequence[Image.Image | None], questions: Sequence[str], k: int) -> list:
        """The top-``k`` RORA-VLM knowledge snippets per question (``list[list[Snippet]]``), each with up
        to ``self.snippet_texts`` texts of its entity: :func:`rablip.retrieval.snippets.retrieve_snippets`."""
        from rablip.retrieval.snippets import retrieve_snippets  # it builds on this module

        return retrieve_snippets(self, images, questions, k, self.snippet_texts)

    def retrieve_two_stage(self, images: Sequence[Image.Image | None], questions: Sequence[str],
                           k: int) -> list[TwoStageResult]:
        """RORA-VLM two-stage retrieval with every stage kept (see the module docstring)."""
        self._require_images(images)
        self.indexes.require("text", "two_stage retrieval")
        self.indexes.require("image", "two_stage retrieval")
        depth = STAGE1_DEPTH_PER_ENTITY * self.expansion_entities
        image_queries = self.embed_queries(images, [""] * len(images))
        image_hits = self.indexes.search(("image",), image_queries, depth, **self.search_kwargs)
        names = [self._entity_names(hits) for hits in image_hits]
        expanded = [expand_question(question, entity) for question, entity in zip(questions, names, strict=True)]
        text_hits = self.search(("text",), [None] * len(questions), expanded, k)
        return [TwoStageResult(i, n, e, t) for i, n, e, t in zip(image_hits, names, expanded, text_hits, strict=True)]

    def _entity_names(self, hits: list[tuple[str, float]]) -> list[str]:
        names: list[str] = []
        for item in self.kb.get_many([item_id for item_id, _ in hits]):
            if item.title and item.title not in names:
                names.append(item.title)
            if len(names) == self.expansion_entities:
                break
        return names

    @staticmethod
    def _require_images(images: Sequence[Image.Image | None]) -> None:
        missing = [position for position, image in enumerate(images) if image is None]
        if missing:
            raise RablipError(f"queries {missing[:10]} have no image, but image and two_stage retrieval search with "
                              "the question image. Use retrieval.mode=ra_blip for questions without images.")

    @torch.no_grad()
    def rerank(self, images: Sequence[Image.Image | None], texts: Sequence[str], hits: Hits, k: int) -> Hits:
        """Re-score each query's hits with the fusion re-ranker; keep the best ``k`` (ties keep the order)."""
        depth = max((len(row) for row in hits), default=0)
        chunk = max(1, self.batch_size // max(depth, 1))
        out: Hits = []
        for start in range(0, len(hits), chunk):
            out.extend(self._rerank_chunk(images[start:start + chunk], texts[start:start + chunk],
                                          hits[start:start + chunk], k))
        return out

    @torch.no_grad()
    def pair_features(self, images: Sequence[Image.Image | None], texts: Sequence[str],
                      candidates: Sequence[Sequence[str]]) -> tuple[torch.Tensor, list[tuple[int, str]]]:
        """The fusion encoder's fused [CLS] features of query i, ``(images[i], texts[i])``, with each item
        of ``candidates[i]``: ``(features (N, H) on this device, rows)``, ``rows[n]`` being (query
        position, item id) of feature row n, in the given order. An item whose image fails to load (the
        ``skip`` policy) has no row. Queries are encoded once, each distinct item image once."""
        owners = [query for query, row in enumerate(candidates) for _ in row]
        if not owners:
            return torch.zeros(0, self.encoder.fusion.hidden_size, device=self.device), []
        items = self.kb.get_many([item_id for row in candidates for item_id in row])
        refs = [self.kb.image_of(item) if item.modality != "text" else None for item in items]
        shared = shared_image_batch(self.batcher, items, refs, self.load_item_image)
        with self._autocast():
            query_seq = self.encoder.query_sequence(self._query_batch(images, texts))
            item_seq = item_sequence_shared(self.encoder, shared, self.device)
            pair_owner = torch.tensor([owners[i] for i in shared.kept], dtype=torch.long, device=self.device)
            fused = self.encoder.fusion(TokenSequence.concat([query_seq.select(pair_owner), item_seq]))
        return fused, [(owners[i], items[i].id) for i in shared.kept]

    def _rerank_chunk(self, images, texts, hits: Hits, k: int) -> Hits:
        fused, rows = self.pair_features(images, texts, [[item_id for item_id, _ in row] for row in hits])
        with self._autocast():
            scores = self.reranker.classify(fused).float().cpu().tolist()
        rescored: Hits = [[] for _ in hits]
        for (query, item_id), score in zip(rows, scores, strict=True):
            rescored[query].append((item_id, float(score)))
        return [sorted(row, key=lambda hit: -hit[1])[:k] for row in rescored]
