"""ASKG reference mixing: proportions, shuffling, selection targets, noise snippets."""

import numpy as np
import pytest

from rablip.training.askg import irrelevant_count, plan_references

KB = [f"item{i}" for i in range(200)]


def random_items(rng, n, exclude):
    pool = [i for i in KB if i not in exclude]
    return [pool[j] for j in rng.choice(len(pool), n, replace=False)]


def test_clean_plan_is_the_relevant_items():
    plan = plan_references(["a", "b", "c", "d"], 3, np.random.default_rng(0), random_items=random_items)
    assert sorted(plan.ids) == ["a", "b", "c"] and all(plan.relevant) and plan.selection_ids is None


@pytest.mark.parametrize("k, ratio", [(3, 0.5), (4, 0.25), (5, 0.5), (2, 0.5)])
def test_expected_irrelevant_share_matches_noise_ratio(k, ratio):
    rng = np.random.default_rng(1)
    counts = [irrelevant_count(k, ratio, rng) for _ in range(20000)]
    assert abs(np.mean(counts) / k - ratio) < 0.01


def test_mixed_plans_share_and_membership():
    relevant = ["r1", "r2", "r3", "r4", "r5"]
    shares = []
    for seed in range(2000):
        plan = plan_references(relevant, 4, np.random.default_rng(seed), random_items=random_items,
                               askg=True, noise_ratio=0.5)
        assert len(plan.ids) == 4 and len(set(plan.ids)) == 4
        assert all((i in relevant) == rel for i, rel in zip(plan.ids, plan.relevant))
        assert any(plan.relevant), "with noise_ratio < 1 at least one reference is relevant"
        shares.append(1 - np.mean(plan.relevant))
    assert abs(np.mean(shares) - 0.5) < 0.03


def test_relevant_position_is_shuffled():
    positions = []
    for seed in range(3000):
        plan = plan_references(["r"], 3, np.random.default_rng(seed), random_items=random_items,
                               askg=True, noise_ratio=2 / 3)
        positions.append(plan.relevant.index(True))
    counts = np.bincount(positions, minlength=3) / len(positions)
    assert np.all(np.abs(counts - 1 / 3) < 0.04), counts


def test_selection_sample_names_the_relevant_reference():
    targets = []
    for seed in range(600):
        plan = plan_references(["r1", "r2"], 3, np.random.default_rng(seed), random_items=random_items,
                               askg=True, noise_ratio=0.5)
        chosen = plan.selection_ids[plan.selection_target]
        assert chosen in ("r1", "r2")
        others = [i for j, i in enumerate(plan.selection_ids) if j != plan.selection_target]
        assert others and not set(others) & {"r1", "r2"}
        targets.append(plan.selection_target)
    assert len(set(targets)) >= 2, "the selection target position must vary"


def test_hard_and_dataset_negatives_are_preferred():
    plan = plan_references(["r"], 2, np.random.default_rng(0), random_items=random_items, askg=True,
                           noise_ratio=0.5, negatives="hard", ranked=["h1", "r", "h2"])
    assert set(plan.ids) <= {"r", "h1"}
    plan = plan_references(["r"], 2, np.random.default_rng(0), random_items=random_items, askg=True,
                           noise_ratio=0.5, negatives="dataset", dataset_negatives=["d1"])
    assert set(plan.ids) <= {"r", "d1"}


def test_noise_snippets_never_the_target():
    for seed in range(300):
        plan = plan_references(["item1", "item2"], 2, np.random.default_rng(seed), random_items=random_items,
                               random_snippets=1)
        assert len(plan.ids) == 3
        snippet = [i for i, rel in zip(plan.ids, plan.relevant) if not rel]
        assert len(snippet) == 1 and snippet[0] not in ("item1", "item2")


def test_same_seed_same_plan():
    a = plan_references(["r1", "r2"], 3, np.random.default_rng([4, 1, 7]), random_items=random_items,
                        askg=True, noise_ratio=0.5, random_snippets=1)
    b = plan_references(["r1", "r2"], 3, np.random.default_rng([4, 1, 7]), random_items=random_items,
                        askg=True, noise_ratio=0.5, random_snippets=1)
    assert a == b


def test_with_a_ranking_references_keep_the_retrievers_order_and_unranked_items_come_last():
    ranked = ["h1", "r", "h2", "h3"]
    orders, last = set(), set()
    for seed in range(300):
        plan = plan_references(["r"], 3, np.random.default_rng(seed), random_items=random_items, askg=True,
                               noise_ratio=2 / 3, negatives="hard", ranked=ranked, random_snippets=2)
        ranked_part = [i for i in plan.ids if i in ranked]
        assert ranked_part == sorted(ranked_part, key=ranked.index), "the retriever's order"
        assert plan.ids[:len(ranked_part)] == ranked_part, "unranked items after the ranked ones"
        orders.add(tuple(plan.ids[len(ranked_part):]))
        last.add(plan.selection_target)
    assert len(orders) > 100, "the unranked items (random snippets) come in a random order"
    assert len(last) >= 2, "the selection sample stays shuffled"
    clean = plan_references(["a", "b", "c"], 3, np.random.default_rng(0), random_items=random_items,
                            ranked=["a", "b", "c"])
    assert clean.ids == ["a", "b", "c"], "clean training keeps the retrieved top k in rank order"
