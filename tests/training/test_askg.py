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


def test_shuffled_answer_order_puts_the_relevant_reference_anywhere_despite_the_ranking():
    ranked = ["r", "h1", "h2", "h3"]
    positions = []
    for seed in range(300):
        plan = plan_references(["r"], 3, np.random.default_rng(seed), random_items=random_items, askg=True,
                               noise_ratio=2 / 3, negatives="hard", ranked=ranked, answer_order="shuffled")
        assert sorted(plan.ids) == ["h1", "h2", "r"], "the same members as the ranked order"
        positions.append(plan.ids.index("r"))
    counts = np.bincount(positions, minlength=3)
    assert counts.min() > 60, f"the relevant reference in every place about equally often: {counts}"
    ranked_plan = plan_references(["r"], 3, np.random.default_rng(0), random_items=random_items, askg=True,
                                  noise_ratio=2 / 3, negatives="hard", ranked=ranked)
    assert ranked_plan.ids[0] == "r", "answer_order=ranked (the default) keeps the retriever's order"
    with pytest.raises(ValueError, match="answer_order"):
        plan_references(["r"], 2, np.random.default_rng(0), random_items=random_items, answer_order="random")


# askg.answer_refs=gold: RA-BLIP's released plan. Ids starting with "i" are image items, the rest text.
def has_image(ids):
    return [i.startswith("i") for i in ids]


def gold_plan(relevant, seed=0, **kw):
    kw.setdefault("negatives", "dataset")
    return plan_references(relevant, 2, np.random.default_rng(seed), random_items=random_items, askg=True,
                           noise_ratio=0.5, answer_refs="gold", has_image=has_image, **kw)


@pytest.mark.parametrize("relevant, expected", [
    (["t1", "t2", "t3"], ["t1", "t2", "t3"]),                # every text fact, however many
    (["i1", "i2", "i3"], ["i1", "i2"]),                      # image facts up to k = 2
    (["t1", "i1", "t2", "i2", "i3"], ["t1", "i1", "t2", "i2"]),
])
def test_gold_answering_sample_holds_exactly_the_gold_facts(relevant, expected):
    for seed in range(50):
        plan = gold_plan(relevant, seed, dataset_negatives=["n1", "in1"])
        assert plan.ids == expected and all(plan.relevant), "the gold facts in the dataset's order, no distractors"


@pytest.mark.parametrize("relevant, negatives, pair", [
    (["i1", "i2"], ["n1", "n2", "in1", "in2"], ["i1", "n1"]),       # image positive, the first text negative
    (["i1", "t1", "t2"], ["n1", "in1", "in2"], ["t1", "in1"]),      # a text positive wins, image negative
    (["t1"], ["n1", "n2"], ["t1", "n1"]),                           # no image negative: any negative
    (["t1"], ["t1", "in3"], ["t1", "in3"]),                         # a relevant item is never the negative
])
def test_gold_selection_positive_first_is_the_releases_pair(relevant, negatives, pair):
    for seed in range(20):
        plan = gold_plan(relevant, seed, dataset_negatives=negatives, selection_order="positive_first")
        assert plan.selection_ids == pair and plan.selection_target == 0


def test_gold_selection_negative_of_the_other_modality_from_hard_and_random_negatives():
    plan = gold_plan(["t1"], negatives="hard", ranked=["n1", "t1", "in1", "in2"], selection_order="positive_first")
    assert plan.selection_ids == ["t1", "in1"]
    plan = gold_plan(["i1"], negatives="hard", ranked=["in1", "n5"], selection_order="positive_first")
    assert plan.selection_ids == ["i1", "n5"]
    for seed in range(30):  # random KB items (no dataset negatives): never a relevant one
        plan = gold_plan(["t1", "t2"], seed, dataset_negatives=None, selection_order="positive_first")
        assert plan.selection_ids[0] == "t1" and plan.selection_ids[1] in KB


def test_gold_selection_shuffled_puts_the_positive_in_either_place():
    places = []
    for seed in range(400):
        plan = gold_plan(["t1", "t2"], seed, dataset_negatives=["n1", "in1"])
        assert sorted(plan.selection_ids) == ["in1", "t1"]
        assert plan.selection_ids[plan.selection_target] == "t1"
        places.append(plan.selection_target)
    assert 0.4 < np.mean(places) < 0.6, "the positive is first about half the time"


def test_gold_plan_is_deterministic_per_rng_and_keeps_noise_snippets():
    a = gold_plan(["t1", "i1"], seed=5, dataset_negatives=["n1", "in1"], random_snippets=2)
    b = gold_plan(["t1", "i1"], seed=5, dataset_negatives=["n1", "in1"], random_snippets=2)
    assert a == b
    assert sorted(i for i, rel in zip(a.ids, a.relevant) if rel) == ["i1", "t1"]
    assert len(a.ids) == 4 and sum(a.relevant) == 2
    assert gold_plan([], dataset_negatives=["n1"]).selection_ids is None, "no gold fact, no selection sample"


def test_mixed_positive_first_keeps_the_members_and_lists_the_target_first():
    for seed in range(200):
        kwargs = dict(random_items=random_items, askg=True, noise_ratio=0.5)
        shuffled = plan_references(["r1", "r2"], 3, np.random.default_rng(seed), **kwargs)
        first = plan_references(["r1", "r2"], 3, np.random.default_rng(seed), selection_order="positive_first",
                                **kwargs)
        assert first.ids == shuffled.ids and first.selection_target == 0
        assert first.selection_ids[0] == shuffled.selection_ids[shuffled.selection_target]
        assert sorted(first.selection_ids) == sorted(shuffled.selection_ids)


def test_unknown_plan_settings_are_refused():
    with pytest.raises(ValueError, match="answer_refs"):
        plan_references(["r"], 2, np.random.default_rng(0), random_items=random_items, answer_refs="all")
    with pytest.raises(ValueError, match="has_image"):
        plan_references(["r"], 2, np.random.default_rng(0), random_items=random_items, askg=True, answer_refs="gold")


def test_the_collator_makes_room_for_the_releases_two_selection_references():
    from rablip.config.schema import Config
    from rablip.stages.finetune import max_references

    cfg = Config()
    cfg.retrieval.k, cfg.askg.enabled = 1, True
    assert max_references(cfg) == 1, "mixed: the selection holds at most k references"
    cfg.askg.answer_refs = "gold"
    assert max_references(cfg) == 2
    cfg.retrieval.k, cfg.noise.random_snippets = 3, 1
    assert max_references(cfg) == 4
