"""Mapping generated entity names to Wikidata QIDs over OVEN's Wiki6M entity list.

OVEN scores QIDs (``"Q31"``); a generator writes names (``"Belgium"``). The official baseline
(edchengg/oven_eval ``run_bm25_index.py`` and ``run_bm25_query.py``) indexes the 6M Wikipedia titles
with rank_bm25's ``BM25Okapi`` over bert-base-uncased WordPiece tokens and keeps the QID of the top-1
title. :class:`EntityLinker` does the same in two steps:

1. **Exact title.** Both sides are normalised (:func:`normalize_name`: Unicode NFKD with accents
   dropped, as BERT-uncased does; case-folded; every run of characters that are not letters or
   digits becomes one space). A text whose normalised form equals a normalised title maps to that
   entity's QID (the first such entity in file order).
2. **BM25 top-1.** Otherwise the text's tokens (the normalised text split on spaces, repeats kept,
   as rank_bm25 iterates over the query tokens) are scored against every title:
   ``sum idf(t) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avglen))`` with rank_bm25's defaults
   k1 = 1.5, b = 0.75 and ``idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))`` (Lucene's form: never
   negative, so rank_bm25's epsilon floor for tokens in more than half of the titles is not needed).
   The highest score wins; a tie goes to the entity earlier in the file.
3. A text without tokens, or sharing none with any title, maps to ``""`` (which never equals a
   reference QID, so it is scored wrong).

Differences from the baseline, on purpose: word tokens instead of WordPiece (no tokenizer to
download; sub-word pieces mostly help misspelt names), the exact-title step (a generated name that
is a title is that entity, whatever BM25's length normalisation prefers), and the never-negative idf.
So the mapping is close to the baseline's, not identical; the metric itself (exact QID match) is.

Memory and time: the texts to map are known before the list is read, so one streamed pass over the
list keeps only what they need (the postings of their tokens and the QIDs of titles sharing one),
never the 6M titles. Results are memoised per normalised text: mapping the same answers again (the
per-question scores after the prediction file) reads nothing.
"""

from __future__ import annotations

import math
import re
import unicodedata
from array import array
from collections.abc import Iterable, Sequence

import numpy as np

from rablip.data.wiki6m import iter_entities
from rablip.errors import DataError
from rablip.utils.io import PathLike
from rablip.utils.logging import get_logger

K1 = 1.5
"""BM25 term-frequency saturation (rank_bm25's BM25Okapi default)."""
B = 0.75
"""BM25 length normalisation (rank_bm25's BM25Okapi default)."""
NO_ENTITY = ""
"""What a text maps to when no title shares a token with it."""

_NOT_WORD = re.compile(r"[\W_]+")
log = get_logger("rablip.evaluation.entity_linking")


def normalize_name(text: str) -> str:
    """Accents dropped (NFKD), case-folded, non-alphanumeric runs -> one space, stripped.

    ``"Café  de Flore!"`` -> ``"cafe de flore"``; ``"Q.E.D."`` -> ``"q e d"``.
    """
    if not text.isascii():
        text = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))
    return " ".join(_NOT_WORD.sub(" ", text.casefold()).split())


def bm25_idf(n_docs: int, df: int) -> float:
    """Lucene's BM25 idf, ``ln(1 + (N - df + 0.5) / (df + 0.5))`` (positive for any df <= N)."""
    return math.log(1.0 + (n_docs - df + 0.5) / (df + 0.5))


class _Pass:
    """What one streamed pass over the entity list collects for a set of normalised texts."""

    def __init__(self, keys: Iterable[str]) -> None:
        self.keys = set(keys)
        self.vocabulary = {token for key in self.keys for token in key.split()}
        self.exact: dict[str, str] = {}
        self.candidate_qids: list[str] = []
        self.candidate_lengths = array("q")
        self.postings: dict[str, tuple[array, array]] = {t: (array("q"), array("q")) for t in self.vocabulary}
        self.n_docs = 0
        self.total_length = 0

    def add(self, qid: str, title: str) -> None:
        """Count one title; keep it when its normalised form is a text or it shares a token with one."""
        normalized = normalize_name(title)
        tokens = normalized.split()
        self.n_docs += 1
        self.total_length += len(tokens)
        if normalized in self.keys and normalized not in self.exact:
            self.exact[normalized] = qid
        counts: dict[str, int] = {}
        for token in tokens:
            if token in self.vocabulary:
                counts[token] = counts.get(token, 0) + 1
        if not counts:
            return
        candidate = len(self.candidate_qids)
        self.candidate_qids.append(qid)
        self.candidate_lengths.append(len(tokens))
        for token, tf in counts.items():
            documents, frequencies = self.postings[token]
            documents.append(candidate)
            frequencies.append(tf)


class EntityLinker:
    """Text -> Wikidata QID over one entity list (see the module docstring for the method).

    ``entity_list`` is ``Wiki6M_ver_1_0.jsonl.gz``, its title-only version, or any JSONL of
    ``{"wikidata_id", "wikipedia_title"}`` records. :attr:`passes` counts the reads of the list.
    """

    def __init__(self, entity_list: PathLike, k1: float = K1, b: float = B) -> None:
        self.entity_list = str(entity_list)
        self.k1, self.b = k1, b
        self.passes = 0
        self._linked: dict[str, str] = {}
        self._how: dict[str, str] = {}

    def link(self, texts: Sequence[str]) -> list[str]:
        """The QID of each text, in order (``""`` where nothing matches); reads the list at most once."""
        keys = [normalize_name(text) for text in texts]
        new = {key for key in keys if key and key not in self._linked}
        if new:
            self._resolve(new)
        return [self._linked.get(key, NO_ENTITY) if key else NO_ENTITY for key in keys]

    def method(self, text: str) -> str:
        """How ``text`` was mapped, once :meth:`link` has seen it: ``exact``, ``bm25`` or ``none``."""
        key = normalize_name(text)
        if key and key not in self._how:
            raise KeyError(f"{text!r} has not been linked yet")
        return self._how.get(key, "none")

    def _resolve(self, keys: set[str]) -> None:
        """One pass over the list for ``keys``: exact titles first, BM25 top-1 for the rest."""
        collected = _Pass(keys)
        for _, qid, title in iter_entities(self.entity_list):
            collected.add(qid, title)
        self.passes += 1
        if collected.n_docs == 0:
            raise DataError(f"Wiki6M entity list {self.entity_list} holds no entities. "
                            "Point data.<split>.entities at Wiki6M_ver_1_0.jsonl.gz.")
        log.info("linked %d name(s) over %d entities of %s: %d by exact title", len(keys), collected.n_docs,
                 self.entity_list, len(collected.exact))
        for key, qid in collected.exact.items():
            self._linked[key], self._how[key] = qid, "exact"
        weights = self._token_weights(collected)
        for key in sorted(keys - collected.exact.keys()):
            qid = self._bm25_top1(key.split(), weights, collected.candidate_qids)
            self._linked[key], self._how[key] = qid, ("bm25" if qid else "none")

    def _token_weights(self, collected: _Pass) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Token -> (candidate indices, BM25 contribution of that token to each candidate)."""
        lengths = np.frombuffer(collected.candidate_lengths, dtype=np.int64).astype(np.float64)
        average = collected.total_length / collected.n_docs or 1.0
        weights = {}
        for token, (documents, frequencies) in collected.postings.items():
            if not documents:
                continue
            docs = np.frombuffer(documents, dtype=np.int64)
            tf = np.frombuffer(frequencies, dtype=np.int64).astype(np.float64)
            norm = self.k1 * (1.0 - self.b + self.b * lengths[docs] / average)
            weights[token] = (docs, bm25_idf(collected.n_docs, len(docs)) * tf * (self.k1 + 1.0) / (tf + norm))
        return weights

    @staticmethod
    def _bm25_top1(tokens: list[str], weights: dict[str, tuple[np.ndarray, np.ndarray]],
                   candidate_qids: list[str]) -> str:
        """The QID of the best-scoring candidate for ``tokens`` (earliest on ties), ``""`` if none."""
        parts = [weights[token] for token in tokens if token in weights]
        if not parts:
            return NO_ENTITY
        documents = np.concatenate([docs for docs, _ in parts])
        contributions = np.concatenate([values for _, values in parts])
        unique, inverse = np.unique(documents, return_inverse=True)
        scores = np.bincount(inverse, weights=contributions)
        return candidate_qids[int(unique[int(np.argmax(scores))])]
