"""Reference plans for fine-tuning: clean, ASKG-mixed, and RORA-VLM noise-resilient.

Adaptive Selection Knowledge Generation (RA-BLIP): every training example yields an answering sample
and a relevance-selection sample whose target names the relevant reference, weighted by ``askg.weight``.
What they hold depends on ``askg.answer_refs``:

* ``mixed`` (rablip's way, RORA-style noise training): the answering sample's references mix relevant
  and irrelevant items (``askg.noise_ratio`` is the expected share of irrelevant ones); the selection
  sample lists one relevant item and up to k - 1 of those irrelevant ones.
* ``gold`` (RA-BLIP's release, ``WebqaEnhancedTrainDataset``; :func:`plan_gold`): the answering sample
  holds the example's relevant items (image ones up to ``max_images``, text ones all), no distractors;
  the selection sample lists two references, the release's positive and one negative of the other
  modality (:func:`release_selection`).

``askg.selection_order``: ``shuffled`` lists the selection sample's references in random order (the
relevant one's place carries no signal); ``positive_first`` lists the relevant one first, as the
release always does.

Order of the references of the ``mixed`` answering sample: with a retrieval ranking (``ranked``), the
order the retriever ranks them in, as the generator meets them when it answers, and the items it did
not rank (random negatives, noise snippets) after those, in random order; without one (gold
references), shuffled. So the relevant reference is never first by rule, only where the retriever put
it; and since the retriever mostly puts it first, a generator trained that way learns to read the first
reference. ``askg.answer_order=shuffled`` shuffles the ASKG answering sample's references even with a
ranking, as noisy evaluation shuffles them, so that only their content tells the relevant one. The ``gold`` answering sample keeps the dataset's order (every reference in it is relevant).

Noise-resilient training (RORA-VLM): ``noise.random_snippets`` extra items of random other entities
(never the target's) are added to every example. With two-stage (snippet) references the stage's
:data:`RandomItems` draws image items only, so each noise snippet is an other entity's image with its
name and description.

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

HasImage = Callable[[Sequence[str]], list[bool]]
"""``(item ids) -> whether each item fills an image slot`` (an image item, not a text one)."""

ANSWER_REFS = ("mixed", "gold")
SELECTION_ORDERS = ("shuffled", "positive_first")
ANSWER_ORDERS = ("ranked", "shuffled")
RANDOM_SELECTION_DRAWS = 4
"""``askg.negatives=random`` under ``gold``: random items drawn to find one of the other modality."""


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


def order_selection(selection: list[str], selection_order: str,
                    rng: np.random.Generator) -> tuple[list[str], int]:
    """The selection sample's references in ``askg.selection_order`` and the 0-based place of the
    relevant one, ``selection[0]``: ``positive_first`` keeps the list; ``shuffled`` permutes it."""
    if selection_order == "positive_first":
        return list(selection), 0
    order = rng.permutation(len(selection))
    return [selection[j] for j in order], int(np.flatnonzero(order == 0)[0])


def plan_references(relevant_ids: Sequence[str], k: int, rng: np.random.Generator, *,
                    random_items: RandomItems, askg: bool = False, noise_ratio: float = 0.0,
                    negatives: str = "random", ranked: Sequence[str] | None = None,
                    dataset_negatives: Sequence[str] | None = None, random_snippets: int = 0,
                    answer_refs: str = "mixed", selection_order: str = "shuffled",
                    has_image: HasImage | None = None, answer_order: str = "ranked") -> ReferencePlan:
    """Choose and order the references of one training example.

    ``relevant_ids`` are the example's relevant items (gold labels, or the relevant part of what was
    retrieved); without ASKG the first ``k`` of them are the references (clean training). ``ranked``
    is the retriever's ranking of the example's candidates (hard negatives come from it, and it orders
    the references; see the module docstring). With ASKG, ``answer_refs`` picks the ``mixed`` plan
    (below) or the release's ``gold`` one (:func:`plan_gold`, which needs ``has_image`` and takes
    ``k`` as its image cap); ``selection_order`` orders the selection sample (:func:`order_selection`);
    ``answer_order`` orders the ``mixed`` answering sample: ``ranked`` as the module docstring says,
    ``shuffled`` at random even with a ranking, so the relevant reference's place carries no signal.
    """
    if answer_refs not in ANSWER_REFS:
        raise ValueError(f"askg.answer_refs must be one of {ANSWER_REFS}, got {answer_refs!r}")
    if selection_order not in SELECTION_ORDERS:
        raise ValueError(f"askg.selection_order must be one of {SELECTION_ORDERS}, got {selection_order!r}")
    if answer_order not in ANSWER_ORDERS:
        raise ValueError(f"askg.answer_order must be one of {ANSWER_ORDERS}, got {answer_order!r}")
    if askg and answer_refs == "gold":
        if has_image is None:
            raise ValueError("askg.answer_refs=gold needs has_image (the modality of each item)")
        return plan_gold(relevant_ids, k, rng, has_image=has_image, random_items=random_items,
                         negatives=negatives, ranked=ranked, dataset_negatives=dataset_negatives,
                         random_snippets=random_snippets, selection_order=selection_order)
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
    if ranked is not None and (answer_order == "ranked" or not askg):
        rank = {item_id: position for position, item_id in enumerate(ranked)}
        order = sorted(order, key=lambda j: rank.get(pairs[j][0], len(rank)))  # stable: unranked stay shuffled
    plan = ReferencePlan(ids=[pairs[j][0] for j in order], relevant=[pairs[j][1] for j in order])

    if askg and chosen:
        target = chosen[int(rng.integers(len(chosen)))]
        distractors = [i for i, is_relevant in zip(plan.ids, plan.relevant) if not is_relevant][:max(0, k - 1)]
        if not distractors:
            distractors = random_items(rng, 1, relevant_set)
        plan.selection_ids, plan.selection_target = order_selection([target, *distractors], selection_order, rng)
    return plan


def plan_gold(relevant_ids: Sequence[str], max_images: int, rng: np.random.Generator, *, has_image: HasImage,
              random_items: RandomItems, negatives: str = "dataset", ranked: Sequence[str] | None = None,
              dataset_negatives: Sequence[str] | None = None, random_snippets: int = 0,
              selection_order: str = "shuffled") -> ReferencePlan:
    """RA-BLIP's released ASKG plan (``askg.answer_refs=gold``).

    Answering sample: every relevant item in the given order (the dataset's), image items up to
    ``max_images`` (the release keeps the first 2 positive images), text items all, no distractors;
    RORA's ``random_snippets`` (a separate key) are still added, and then the references are shuffled
    so that the snippets' place carries no signal. Selection sample: :func:`release_selection`, ordered
    by ``selection_order``; none when the example has no relevant item.
    """
    relevant = list(dict.fromkeys(relevant_ids))
    images = has_image(relevant) if relevant else []
    kept, image_count = [], 0
    for item_id, is_image in zip(relevant, images, strict=True):
        if is_image:
            if image_count == max_images:
                continue
            image_count += 1
        kept.append(item_id)
    snippets = random_items(rng, random_snippets, set(relevant)) if random_snippets else []
    pairs = [(i, True) for i in kept] + [(i, False) for i in snippets]
    order = rng.permutation(len(pairs)) if snippets else range(len(pairs))
    plan = ReferencePlan(ids=[pairs[j][0] for j in order], relevant=[pairs[j][1] for j in order])
    if relevant:
        selection = release_selection(relevant, images, rng, has_image=has_image, random_items=random_items,
                                      negatives=negatives, ranked=ranked, dataset_negatives=dataset_negatives)
        plan.selection_ids, plan.selection_target = order_selection(selection, selection_order, rng)
    return plan


def release_selection(relevant: Sequence[str], relevant_images: Sequence[bool], rng: np.random.Generator, *,
                      has_image: HasImage, random_items: RandomItems, negatives: str = "dataset",
                      ranked: Sequence[str] | None = None,
                      dataset_negatives: Sequence[str] | None = None) -> list[str]:
    """The release's two selection references, ``[positive, negative]``.

    Positive: the first relevant text item, or the first relevant item when none is text (the release
    takes its first text fact whenever the question has one, else its first image). Negative, from
    ``askg.negatives``: ``dataset``, the example's own negatives in the dataset's order; ``hard``, the
    retriever's ranking without the relevant items; ``random``, :data:`RANDOM_SELECTION_DRAWS` random
    items (also the fallback when the strategy yields none). Of these the first of the OTHER modality
    than the positive (the release: WebQA's first negative of the other kind), else the first of any
    modality (the release would list an "empty" placeholder instead).
    """
    texts = [item_id for item_id, is_image in zip(relevant, relevant_images, strict=True) if not is_image]
    positive = texts[0] if texts else relevant[0]
    excluded = set(relevant)
    if negatives == "dataset":
        pool = [i for i in dict.fromkeys(dataset_negatives or []) if i not in excluded]
    elif negatives == "hard":
        pool = [i for i in dict.fromkeys(ranked or []) if i not in excluded]
    else:
        pool = []
    if not pool:
        pool = random_items(rng, RANDOM_SELECTION_DRAWS, excluded)
    other = [i for i, is_image in zip(pool, has_image(pool), strict=True) if is_image == bool(texts)]
    return [positive, *(other or pool)[:1]]  # positive alone only when the KB offers no other item
