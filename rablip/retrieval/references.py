"""The one provider of ranked references, for fine-tuning and evaluation alike.

``retrieval.source`` says where the ranked candidates of a split's questions come from: ``index``
(live search, cached in the run dir), ``static`` (a retrieval results file), ``gold`` (the dataset's
relevance labels, an oracle) or ``none``. Evaluation answers a question with the top ``k`` of its
candidates; fine-tuning plans its references from them (:mod:`rablip.training.askg`: ASKG mixing and
noise snippets, and counterfactual swaps, are transforms of this output), and so does noisy
evaluation (:class:`NoisyReferences`, below).

Noisy evaluation (``eval.noisy_fraction``) replaces ``round(fraction * k)`` of the k references by
random knowledge-base items: the lowest-ranked ones go, the best ``k - round(fraction * k)``
retrieved items stay, the random items are drawn from other entities (never a relevant item or one
with a relevant item's title), and the k references are then shuffled, so rank carries no hint.
Everything is seeded by ``run.seed`` and the question's position in the split, so the noisy set
is the same for any number of processes.

Hard noise (``eval.noisy_mode=hard``) replaces the same references by the retriever's own next-ranked
wrong items instead: walking the question's ranking below its top k (the cache keeps enough of it,
:func:`rablip.retrieval.cache.cache_depth`), the first items that are wrong in random mode's sense (not a
relevant item, not of a relevant item's title), best first. A ranking with too few of them (a short static
file, a small knowledge base) is filled up with random mode's items. Count, kept items, the order of the k
(the same seeded permutation random mode applies) and the scores (None for every replacement) are random
mode's: neither mode hands the generator a rank, a score or a label of the items it mixed in.

Knowledge snippets (``retrieval.mode: two_stage``, :mod:`rablip.retrieval.snippets`): a snippet is
identified by its anchor, the stage-1 image item, in the ranking (so recall@k and the other retrieval
metrics on item ids measure stage 1, the anchors), and the ids of its attached stage-2 text items
travel beside the ranking in :attr:`References.snippet_texts` (from the results file's ``texts``);
:func:`rablip.data.snippet_items.reference_items` makes each snippet one reference. Noise snippets
(``noise.random_snippets``, ``eval.noisy_fraction``) are then random image items of other entities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rablip.config.schema import Config
from rablip.data.kb import KBStore
from rablip.data.random_items import RandomKBItems
from rablip.data.records import QAExample
from rablip.errors import ConfigError
from rablip.retrieval.cache import cache_paths, noise_count, retrieve_split_cached
from rablip.retrieval.static import Retrieved, Texts, read_retrieval, read_retrieval_texts

Ranked = dict[str, list[tuple[str, float | None]]]
_NOISE_STREAM = 7


RETRIEVED_SOURCES = ("index", "static")
"""The sources whose candidates a retriever ranked (the others are gold labels, or nothing)."""


@dataclass
class References:
    """The ranked candidates of every question of a split."""

    ranked: Ranked
    """Question id -> ranked (item id, score or None)."""
    retrieved: bool
    """Whether a retriever ranked them (``retrieval.source`` index or static): a ranking that orders
    references and hard negatives come from. False for gold labels (unordered) and none."""
    snippet_texts: Texts | None = None
    """Two-stage retrieval (index or static): question id -> snippet anchor id -> its attached text item
    ids; None when the references are not snippets."""

    def ids(self, question_id: str) -> list[str]:
        return [item_id for item_id, _ in self.ranked[question_id]]

    def texts_of(self, question_id: str) -> dict[str, list[str]]:
        """Anchor id -> attached text ids of one question's snippets (empty when there are none)."""
        return (self.snippet_texts or {}).get(question_id, {})


def ranked_references(cfg: Config, examples: Sequence[QAExample], split: str, run_dir: Path) -> References:
    """The ranked candidates of every one of ``examples`` (the questions of ``data.<split>``) from
    ``retrieval.source``; a question the static file or the cache lacks is an error naming it."""
    source = cfg.retrieval.source
    retrieved = source in RETRIEVED_SOURCES
    if source == "none" or cfg.retrieval.k == 0:
        return References({ex.id: [] for ex in examples}, retrieved)
    if source == "gold":
        return References({ex.id: [(item_id, None) for item_id in ex.relevant_ids or []] for ex in examples}, False)
    results: dict[str, Retrieved]
    if source == "static":
        if not cfg.retrieval.static_file:
            raise ConfigError("retrieval.source=static needs retrieval.static_file (a retrieval results file).")
        results = read_retrieval(cfg.retrieval.static_file)
    else:
        results = retrieve_split_cached(cfg, split, examples, run_dir)
    missing = [ex.id for ex in examples if ex.id not in results]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        if source == "static":
            where, fix = (cfg.retrieval.static_file, f"point retrieval.static_file at the results of data.{split} "
                          "or write results for every one of its questions")
        else:
            where, fix = "the retrieval cache", "retrieve for this split again"
        raise ConfigError(f"{len(missing)} question(s) of data.{split} have no retrieval results in {where} "
                          f"({shown}); {fix}.")
    texts = None
    if cfg.retrieval.mode == "two_stage":
        found = read_retrieval_texts(cfg.retrieval.static_file if source == "static" else cache_paths(run_dir, split)[0])
        texts = {ex.id: found.get(ex.id, {}) for ex in examples}
    return References({ex.id: [(item_id, float(score)) for item_id, score in results[ex.id]] for ex in examples},
                      True, texts)


NOISY_MODES = ("random", "hard")


class NoisyReferences:
    """Replaces the tail of a question's top-k by random KB items (``mode="random"``) or by the next-ranked
    wrong items of its ranking (``mode="hard"``, random items where those run out), and shuffles (see the
    module doc); with ``images_only`` (snippet references) the random items are image items of other entities."""

    def __init__(self, kb: KBStore, fraction: float, seed: int, images_only: bool = False,
                 mode: str = "random") -> None:
        if mode not in NOISY_MODES:
            raise ValueError(f"noisy references: mode {mode!r} is not one of {NOISY_MODES}")
        self.kb = kb
        self.fraction = fraction
        self.seed = seed
        self.mode = mode
        self.random_items = RandomKBItems(kb, images_only=images_only)

    def __call__(self, example: QAExample, position: int, top: list[tuple[str, float | None]],
                 k: int) -> list[tuple[str, float | None]]:
        """The k references of ``example`` (the ``position``-th question of its split) from its ranking ``top``."""
        replaced = noise_count(self.fraction, k)
        if replaced == 0:
            return top[:k]
        rng = np.random.default_rng([self.seed, _NOISE_STREAM, position])
        kept = top[:k - replaced]
        relevant = set(example.relevant_ids or [])
        exclude = relevant | {item_id for item_id, _ in kept}
        titles = {item.title for item in self.kb.get_many(sorted(relevant))} if relevant else set()
        # Hard mode draws random mode's items too (its fallback): the rng then reaches the shuffle in the same
        # state, so both modes put the kept items and the replacement slots in the same places.
        wanted = k - len(kept)
        noise = self.random_items(rng, wanted, exclude, titles)
        if self.mode == "hard":
            hard = self.next_ranked_wrong(top[k:], wanted, exclude, titles)
            noise = hard + [item_id for item_id in noise if item_id not in hard][:wanted - len(hard)]
        mixed = kept + [(item_id, None) for item_id in noise]
        return [mixed[i] for i in rng.permutation(len(mixed))]

    def next_ranked_wrong(self, below: list[tuple[str, float | None]], n: int, exclude: set[str],
                          exclude_titles: set[str]) -> list[str]:
        """The first ``n`` items of ``below`` (the ranking under the top k) that are not in ``exclude`` nor of an
        entity (title) in ``exclude_titles``, in rank order; fewer when the ranking has fewer."""
        picked: list[str] = []
        candidates = [item_id for item_id, _ in below if item_id not in exclude]
        for item_id, item in zip(candidates, self.kb.get_many(candidates), strict=True):
            if len(picked) == n:
                break
            if item_id not in picked and item.title not in exclude_titles:
                picked.append(item_id)
        return picked
