"""``retrieval.scope: candidates``: rank each question's own listed sources instead of the whole KB.

WebQA lists, for every question, the sources it is to choose from (train/val: ``txt_posFacts``,
``txt_negFacts``, ``img_posFacts``, ``img_negFacts``; test: ``txt_Facts`` and ``img_Facts``), and its
standard setting, the one its leaderboard and RA-BLIP report, picks the answer's sources among
them. Here each question's embedding is scored against exactly its candidates' stored embeddings
(the full-precision rows the index was built from, found through the index's id files), so the
ranking is exact whatever the index type, and no item outside the list can appear. A question with
no listed sources gets an empty ranking; a listed source the index lacks is left out and counted in
a warning (the store was built without it, e.g. ``data.kb.on_missing=skip``). With a re-ranker
(``retrieval.rerank_model``) the top ``k * rerank_factor`` candidates are re-scored as in global
search.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rablip.config.schema import Config
from rablip.data.images import ImageLoader
from rablip.data.records import QAExample
from rablip.errors import ConfigError, RablipError
from rablip.retrieval.groups import GroupIndexes, Hits
from rablip.retrieval.retriever import Retriever
from rablip.retrieval.static import Retrieved
from rablip.utils.logging import get_logger

log = get_logger("rablip.retrieval")
LISTING_DATASETS = ("webqa",)
"""Datasets whose questions list their own sources (QAExample.extra ``candidate_ids`` / ``negative_ids``)."""


def check_scope(cfg: Config) -> None:
    """ConfigError naming ``retrieval.scope`` when ``candidates`` cannot apply to this config."""
    if cfg.retrieval.scope != "candidates":
        return
    if cfg.data.dataset not in LISTING_DATASETS:
        raise ConfigError(f"retrieval.scope=candidates ranks each question's listed sources, but "
                          f"data.dataset={cfg.data.dataset} lists none (only {', '.join(LISTING_DATASETS)} does); "
                          "set retrieval.scope=global.")
    if cfg.retrieval.mode != "ra_blip":
        raise ConfigError(f"retrieval.scope=candidates scores the question against its sources with the ra_blip "
                          f"query; retrieval.mode={cfg.retrieval.mode} searches by the question image. Set "
                          "retrieval.mode=ra_blip or retrieval.scope=global.")


def listed_sources(example: QAExample) -> list[str]:
    """The question's own sources, each once, in listed order: ``extra["candidate_ids"]`` (WebQA test),
    else the relevant ids followed by ``extra["negative_ids"]`` (train/val); empty when it lists none."""
    extra = example.extra or {}
    if "candidate_ids" in extra:
        ids = list(extra["candidate_ids"])
    else:
        ids = list(example.relevant_ids or []) + list(extra.get("negative_ids", []))
    return list(dict.fromkeys(ids))


class CandidateScorer:
    """Exact inner products between query embeddings and given items' stored embeddings."""

    def __init__(self, indexes: GroupIndexes) -> None:
        self.indexes = indexes
        self._rows: dict[str, tuple[str, int]] | None = None

    def rows(self) -> dict[str, tuple[str, int]]:
        """Item id -> (group, row in that group's index and embeddings); read once, on first use."""
        if self._rows is None:
            rows: dict[str, tuple[str, int]] = {}
            for group, index in self.indexes.indexes.items():
                for row, item_id in enumerate(index.ids):
                    rows[item_id] = (group, row)
            self._rows = rows
        return self._rows

    def vectors(self, group: str, rows: np.ndarray) -> np.ndarray:
        index = self.indexes.indexes[group]
        try:
            return index.embeddings.gather(rows)
        except RablipError as err:
            raise RablipError(f"retrieval.scope=candidates scores with the stored embeddings: {err}") from None

    def score(self, queries: np.ndarray, candidates: Sequence[Sequence[str]], depth: int,
              ) -> tuple[Hits, list[str]]:
        """Per query, its candidates ranked by inner product (best first, at most ``depth``), and the
        candidate ids the index does not hold (left out)."""
        rows = self.rows()
        hits: Hits = []
        unknown: list[str] = []
        for query, ids in zip(queries, candidates, strict=True):
            known = [item_id for item_id in ids if item_id in rows]
            unknown.extend(item_id for item_id in ids if item_id not in rows)
            scored: list[tuple[str, float]] = []
            for group in {rows[item_id][0] for item_id in known}:
                members = [item_id for item_id in known if rows[item_id][0] == group]
                vectors = self.vectors(group, np.array([rows[item_id][1] for item_id in members], np.int64))
                scored.extend(zip(members, (vectors @ query).astype(float).tolist(), strict=True))
            position = {item_id: i for i, item_id in enumerate(known)}
            scored.sort(key=lambda hit: (-hit[1], position[hit[0]]))
            hits.append(scored[:depth])
        return hits, unknown


def retrieve_candidates(retriever: Retriever, examples: Sequence[QAExample], k: int, image_loader: ImageLoader,
                        batch_size: int = 64, scorer: CandidateScorer | None = None) -> dict[str, Retrieved]:
    """Question id -> its listed sources ranked (top ``k``), see the module docstring."""
    scorer = scorer or CandidateScorer(retriever.indexes)
    results: dict[str, Retrieved] = {}
    unknown: list[str] = []
    without = 0
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start:start + batch_size])
        listed = [listed_sources(ex) for ex in chunk]
        asking = [i for i, ids in enumerate(listed) if ids]
        without += len(chunk) - len(asking)
        for example in chunk:
            results[example.id] = []
        if not asking:
            continue
        images = [image_loader.load(chunk[i].image, chunk[i].id) if chunk[i].image is not None else None
                  for i in asking]
        texts = [chunk[i].question for i in asking]
        depth = k * retriever.rerank_factor if retriever.reranker is not None else k
        hits, missing = scorer.score(retriever.embed_queries(images, texts), [listed[i] for i in asking], depth)
        unknown.extend(missing)
        if retriever.reranker is not None:
            hits = retriever.rerank(images, texts, hits, k)
        for i, row in zip(asking, hits, strict=True):
            results[chunk[i].id] = row[:k]
    if without:
        log.warning("retrieval.scope=candidates: %d question(s) list no sources and get no references", without)
    if unknown:
        log.warning("retrieval.scope=candidates: %d listed source(s) are not in the index and were left out "
                    "(first: %s); was the knowledge base built with data.kb.on_missing=skip, or from other files?",
                    len(unknown), ", ".join(list(dict.fromkeys(unknown))[:5]))
    return results
