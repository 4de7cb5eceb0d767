"""Reference plans for fine-tuning: clean, ASKG-mixed, and RORA-VLM noise-resilient.

Adaptive Selection Knowledge Generation (RA-BLIP): a training example's references mix relevant and
irrelevant items (``askg.noise_ratio`` is the expected share of irrelevant ones), and the example also
yields a relevance-selection sample whose target names the relevant reference (listed in a shuffled
order), weighted by ``askg.weight``.

Order of the references of the answering sample: with a retrieval ranking (``ranked``), the order the
retriever ranks them in, as the generator meets them when it answers, and the items it did not rank
(random negatives, noise snippets) after those, in random order; without one (gold references),
shuffled. So the relevant reference is never first by rule (the release's position bias), only where
the retriever put it.

Noise-resilient training (RORA-VLM): ``noise.random_snippets`` extra items of random other entities
(never the target's) are added to every example.

Everything here is a pure function of its inputs and a ``numpy`` generator, so a run seeded per
(seed, epoch, example) draws the same references after a resume.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

RandomItems = Callable[[np.random.Generator, int, set[str]], list[str]]
"""``(rng, n, excluded ids) -> n random KB item ids`` not in ``excluded`` (nor of the same entity)."""


@dataclass
class ReferencePlan:
    ids: list[str]
    """References for the QA sample, in prompt order."""
    relevant: list[bool]
    """Whether each reference is relevant."""
    selection_ids: list[str] | None = None
    """References of the ASKG selection sample (exactly one relevant), or None."""
    selection_target: int | None = None
    """0-based position of the relevant reference in ``selection_ids``."""


def irrelevant_count(k: int, noise_ratio: float, rng: np.random.Generator) -> int:
    """How many of ``k`` references are irrelevant: ``k x noise_ratio`` rounded stochastically, so the
    expected share is exactly ``noise_ratio`` whatever ``k`` is."""
    exact = k * noise_ratio
    low = math.floor(exact)
    return low + int(rng.random() < exact - low)


def negative_candidates(strategy: str, relevant: set[str], ranked: Sequence[str] | None,
                        dataset_negatives: Sequence[str] | None, rng: np.random.Generator) -> list[str]:
    """Irrelevant candidates in preference order for ``askg.negatives`` = hard | dataset (random
    negatives come from :data:`RandomItems` instead)."""
    if strategy == "hard":
        return [i for i in (ranked or []) if i not in relevant]
    if strategy == "dataset":
        pool = [i for i in (dataset_negatives or []) if i not in relevant]
        return [pool[j] for j in rng.permutation(len(pool))]
    return []


def plan_references(relevant_ids: Sequence[str], k: int, rng: np.random.Generator, *,
                    random_items: RandomItems, askg: bool = False, noise_ratio: float = 0.0,
                    negatives: str = "random", ranked: Sequence[str] | None = None,
                    dataset_negatives: Sequence[str] | None = None, random_snippets: int = 0) -> ReferencePlan:
    """Choose and order the references of one training example.

    ``relevant_ids`` are the example's relevant items (gold labels, or the relevant part of what was
    retrieved); without ASKG the first ``k`` of them are the references (clean training). ``ranked``
    is the retriever's ranking of the example's candidates (hard negatives come from it, and it orders
    the references; see the module docstring).
    """
    relevant = list(dict.fromkeys(relevant_ids))
    relevant_set = set(relevant)
    if not askg:
        chosen = relevant[:k]
        irrelevant: list[str] = []
    else:
        n_irrelevant = irrelevant_count(k, noise_ratio, rng)
        if relevant and noise_ratio < 1.0:
            n_irrelevant = min(n_irrelevant, k - 1)
        n_relevant = min(len(relevant), k - n_irrelevant)
        chosen = [relevant[i] for i in sorted(rng.choice(len(relevant), n_relevant, replace=False))] if n_relevant else []
        irrelevant = negative_candidates(negatives, relevant_set, ranked, dataset_negatives, rng)[:n_irrelevant]
        if len(irrelevant) < n_irrelevant:
            irrelevant += random_items(rng, n_irrelevant - len(irrelevant), relevant_set | set(irrelevant))
    if random_snippets:
        irrelevant += random_items(rng, random_snippets, relevant_set | set(irrelevant))

    pairs = [(i, True) for i in chosen] + [(i, False) for i in irrelevant]
    order = rng.permutation(len(pairs))
    if ranked is not None:
        rank = {item_id: position for position, item_id in enumerate(ranked)}
        order = sorted(order, key=lambda j: rank.get(pairs[j][0], len(rank)))  # stable: unranked stay shuffled
    plan = ReferencePlan(ids=[pairs[j][0] for j in order], relevant=[pairs[j][1] for j in order])

    if askg and chosen:
        target = chosen[int(rng.integers(len(chosen)))]
        distractors = [i for i, is_relevant in zip(plan.ids, plan.relevant) if not is_relevant][:max(0, k - 1)]
        if not distractors:
            distractors = random_items(rng, 1, relevant_set)
        selection = [target, *distractors]
        order = rng.permutation(len(selection))
        plan.selection_ids = [selection[j] for j in order]
        plan.selection_target = int(np.flatnonzero(order == 0)[0])
    return plan
