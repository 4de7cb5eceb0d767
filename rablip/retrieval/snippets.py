"""RORA-VLM knowledge snippets: two-stage retrieval that returns (image, entity, texts) snippets.

A knowledge snippet is the retrieved image, its entity's name and description, and text snippets
about that entity (RORA-VLM, arXiv 2410.08876). For each question:

1. Stage 1: the image-only query (the question image, no text) searches the ``image`` group index.
   Walking its hits best first, the first hit of each distinct entity (KB title) becomes a snippet's
   anchor, up to ``k`` anchors (an untitled hit is an entity of its own). The anchor's title is the
   entity name and its own text the description.
2. Stage 2: for each anchor, the question expanded with that entity's name
   (:func:`~rablip.retrieval.retriever.expand_question`: "Castle of Good Hope. Which year was it
   built?") searches the ``text`` group index as a text-only query; of its hits, those of that entity
   (title equal to the entity name) are attached to the snippet, up to ``texts_per_snippet``
   (``retrieval.snippet_texts``), best first. An untitled anchor gets none (its entity is unknown).
   The search depth is ``retrieval.snippet_search_depth`` (default ``snippet_texts x 5``): hits of other
   entities are dropped after the search, so a dense encoder that ranks the name's texts low finds none of
   them at a shallow depth; a depth of the text group's size filters the entity's texts exactly.
   One query per snippet, not one query with every name: each entity's texts are searched for with
   that entity's name alone, as the paper's expanded query names one entity.

The paper's stage 2 is a web search API; rablip's is its own offline text index, so the text
snippets are KB text items. Scores: a snippet's score is its anchor's stage-1 score; its text hits
keep their stage-2 scores (re-ranked by the fusion re-ranker when one is configured; stage 1 is a
plain index search, as in :meth:`~rablip.retrieval.retriever.Retriever.retrieve_two_stage`).

How snippets are identified downstream: in :class:`~rablip.retrieval.references.References` a
snippet is its anchor's id (the ranking is the stage-1 ranking of the anchors, so recall@k on item
ids measures stage 1, as the paper reports stage-1 precision), and the ids of its attached texts ride
beside the ranking (``References.snippet_texts``; the ``texts`` field of the static results format,
:mod:`rablip.retrieval.static`). :func:`rablip.data.snippet_items.reference_items` turns them into
one composite reference per snippet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image

from rablip.data.records import KBItem
from rablip.retrieval.retriever import STAGE1_DEPTH_PER_ENTITY, Retriever, expand_question

STAGE2_DEPTH_PER_TEXT = 5
"""Text hits searched per wanted text: hits of other entities are dropped, so search deeper than kept."""


@dataclass
class Snippet:
    """One knowledge snippet of one question (see the module docstring)."""

    image_id: str
    """The anchor: a stage-1 image hit, the first of its entity."""
    score: float
    """The anchor's stage-1 score."""
    entity: str
    """The anchor's title (the entity name; empty for an untitled item)."""
    description: str
    """The anchor's own text (e.g. its caption or reference description)."""
    expanded_question: str = ""
    """The stage-2 query text (empty when no stage-2 search ran for this snippet)."""
    text_hits: list[tuple[str, float]] = field(default_factory=list)
    """Stage 2: this entity's text items found by the expanded question, best first."""

    @property
    def text_ids(self) -> list[str]:
        return [item_id for item_id, _ in self.text_hits]


def entity_anchors(hits: Sequence[tuple[str, float]], items: Sequence[KBItem], k: int,
                   ) -> list[tuple[KBItem, float]]:
    """The first hit of each distinct entity (title), best first, at most ``k``; ``items`` are the
    hits' KB items in the same order. Untitled items are each an entity of their own."""
    anchors: list[tuple[KBItem, float]] = []
    seen: set[str] = set()
    for (_, score), item in zip(hits, items, strict=True):
        if len(anchors) == k:
            break
        if item.title and item.title in seen:
            continue
        seen.add(item.title)
        anchors.append((item, float(score)))
    return anchors


def retrieve_snippets(retriever: Retriever, images: Sequence[Image.Image | None], questions: Sequence[str], k: int,
                      texts_per_snippet: int) -> list[list[Snippet]]:
    """The top-``k`` knowledge snippets of each question, best first (see the module docstring).

    Every question needs its image (a RablipError names those without one), and the index needs both
    the ``image`` and the ``text`` group."""
    if len(images) != len(questions):
        raise ValueError(f"retrieve_snippets got {len(images)} images for {len(questions)} questions")
    retriever._require_images(images)
    retriever.indexes.require("image", "two_stage retrieval")
    retriever.indexes.require("text", "two_stage retrieval")
    if k <= 0 or not questions:
        return [[] for _ in questions]
    queries = retriever.embed_queries(images, [""] * len(images))
    image_hits = retriever.indexes.search(("image",), queries, STAGE1_DEPTH_PER_ENTITY * k, **retriever.search_kwargs)
    snippets: list[list[Snippet]] = []
    for hits in image_hits:
        items = retriever.kb.get_many([item_id for item_id, _ in hits])
        snippets.append([Snippet(item.id, score, item.title, item.text)
                         for item, score in entity_anchors(hits, items, k)])
    if texts_per_snippet > 0:
        attach_texts(retriever, questions, snippets, texts_per_snippet)
    return snippets


def attach_texts(retriever: Retriever, questions: Sequence[str], snippets: list[list[Snippet]],
                 texts_per_snippet: int) -> None:
    """Stage 2, in place: each titled snippet's expanded question searches the text index; its
    entity's hits (up to ``texts_per_snippet``) become the snippet's ``text_hits``."""
    wanted = [(question, snippet) for question, row in zip(questions, snippets, strict=True)
              for snippet in row if snippet.entity]
    if not wanted:
        return
    for question, snippet in wanted:
        snippet.expanded_question = expand_question(question, [snippet.entity])
    hits = retriever.search(("text",), [None] * len(wanted), [snippet.expanded_question for _, snippet in wanted],
                            stage2_depth(retriever, texts_per_snippet))
    titles = {item.id: item.title
              for item in retriever.kb.get_many(sorted({item_id for row in hits for item_id, _ in row}))}
    for (_, snippet), row in zip(wanted, hits, strict=True):
        own = [(item_id, float(score)) for item_id, score in row if titles[item_id] == snippet.entity]
        snippet.text_hits = own[:texts_per_snippet]


def stage2_depth(retriever: Retriever, texts_per_snippet: int) -> int:
    """Text hits one stage-2 query searches: ``retriever.snippet_search_depth`` (0: ``texts_per_snippet x
    STAGE2_DEPTH_PER_TEXT``), at most the text group's size (a depth that covers the whole group makes stage 2
    an exact filter on the entity, its texts ranked by the expanded question)."""
    wanted = retriever.snippet_search_depth or texts_per_snippet * STAGE2_DEPTH_PER_TEXT
    return max(1, min(wanted, len(retriever.indexes.require("text", "two_stage retrieval"))))


def snippet_texts(snippets: Sequence[Snippet]) -> dict[str, list[str]]:
    """Anchor id -> attached text ids of one question's snippets (every anchor listed, texts or not)."""
    return {snippet.image_id: snippet.text_ids for snippet in snippets}
