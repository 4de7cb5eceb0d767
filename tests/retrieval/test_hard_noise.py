"""Hard-noise evaluation (``eval.noisy_mode=hard``): the replaced references are the retriever's own
next-ranked wrong items, with random mode's count, kept items, shuffle and scores.

A hand-made KB store of three entities (the question is about Beta Bird) and hand-made rankings, so which
items are next-ranked and which are wrong is known in advance."""

from __future__ import annotations

import pytest

from rablip.config import load_config
from rablip.data.kb import KBStore
from rablip.data.kb_writer import build_kb_store
from rablip.data.records import KBItem, QAExample
from rablip.errors import ConfigError, RablipError
from rablip.retrieval.cache import cache_depth
from rablip.retrieval.references import NoisyReferences
from rablip.stages.evaluate import evaluate

BETA, GAMMA, ALPHA = "Beta Bird", "Gamma Goat", "Alpha Ape"
ITEMS = [KBItem(f"beta-{i}", "text", None, f"Beta Bird fact {i}.", BETA) for i in range(4)] + \
        [KBItem(f"gamma-{i}", "text", None, f"Gamma Goat fact {i}.", GAMMA) for i in range(6)] + \
        [KBItem(f"alpha-{i}", "text", None, f"Alpha Ape fact {i}.", ALPHA) for i in range(6)]
EXAMPLE = QAExample("q1", None, "What does this bird eat?", relevant_ids=["beta-0", "beta-1"])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return KBStore.open(build_kb_store(ITEMS, tmp_path_factory.mktemp("hard_noise") / "store", show_progress=False))


def ranking(*ids: str) -> list[tuple[str, float | None]]:
    return [(item_id, 1.0 - 0.05 * rank) for rank, item_id in enumerate(ids)]


# top 4: two relevant, two wrong; below it: a relevant item, an item of the question's entity (beta-2, not
# labelled relevant), then wrong items in rank order
RANKED = ranking("beta-0", "gamma-0", "beta-1", "alpha-0", "beta-3", "beta-2", "gamma-1", "alpha-1", "gamma-2")


def test_hard_mode_takes_the_next_ranked_wrong_items(store):
    hard = NoisyReferences(store, 0.5, seed=0, mode="hard")
    for position in range(8):
        refs = hard(EXAMPLE, position, RANKED, 4)
        assert set(refs) == {("beta-0", 1.0), ("gamma-0", 0.95), ("gamma-1", None), ("alpha-1", None)}
        assert not {item_id for item_id, _ in refs if item_id.startswith("beta")} - {"beta-0"}, \
            "never a relevant item nor one of the question's entity as a replacement"


def test_hard_mode_keeps_random_modes_count_positions_and_shuffle(store):
    random_mode = NoisyReferences(store, 0.5, seed=4)
    hard = NoisyReferences(store, 0.5, seed=4, mode="hard")
    slots = set()
    for position in range(12):
        shuffled, hardened = random_mode(EXAMPLE, position, RANKED, 4), hard(EXAMPLE, position, RANKED, 4)
        assert len(shuffled) == len(hardened) == 4
        kept = [i for i, (_, score) in enumerate(shuffled) if score is not None]
        assert kept == [i for i, (_, score) in enumerate(hardened) if score is not None]
        assert [shuffled[i] for i in kept] == [hardened[i] for i in kept], "kept items in the same places"
        assert all(hardened[i][1] is None for i in range(4) if i not in kept), "no score for a replacement"
        slots.add(tuple(kept))
        assert hard(EXAMPLE, position, RANKED, 4) == hardened, "deterministic per seed and position"
    assert len(slots) > 1, "shuffled: the kept references are not always in the same places"
    assert NoisyReferences(store, 0.0, seed=4, mode="hard")(EXAMPLE, 0, RANKED, 4) == RANKED[:4]


def test_hard_mode_falls_back_to_random_items_when_the_ranking_runs_out(store):
    hard = NoisyReferences(store, 0.75, seed=1, mode="hard")  # 3 of 4 replaced; one wrong item below the top 4
    short = ranking("beta-0", "gamma-0", "beta-1", "alpha-0", "beta-2", "gamma-5")
    for position in range(6):
        refs = hard(EXAMPLE, position, short, 4)
        ids = [item_id for item_id, _ in refs]
        assert len(ids) == len(set(ids)) == 4 and "beta-0" in ids and "gamma-5" in ids
        added = [item_id for item_id, score in refs if score is None]
        assert len(added) == 3 and all(store[item_id].title != BETA for item_id in added)
    seeds = {tuple(sorted(NoisyReferences(store, 0.75, seed=s, mode="hard")(EXAMPLE, 0, short, 4))) for s in range(6)}
    assert len(seeds) > 1, "the fallback items are random, seeded"


def test_hard_mode_needs_a_ranking_and_a_known_mode(tmp_path, store):
    with pytest.raises(ValueError, match="mode"):
        NoisyReferences(store, 0.5, seed=0, mode="hardest")
    with pytest.raises(RablipError, match="eval.noisy_mode"):
        load_config(None, ["eval.noisy_mode=hardest"])
    for source in ("gold", "none"):
        cfg = load_config(None, [f"retrieval.source={source}", "eval.noisy_mode=hard", "eval.noisy_fraction=0.5",
                                 f"run.output_dir={tmp_path / source}"])
        with pytest.raises(ConfigError, match="eval.noisy_mode=hard"):
            evaluate(cfg)
        assert not (tmp_path / source).exists(), "refused before the run starts"


def test_hard_mode_keeps_two_ranked_candidates_per_replacement():
    assert cache_depth(load_config(None, ["retrieval.k=3", "eval.noisy_fraction=0.5", "eval.noisy_mode=hard"])) == 10
    assert cache_depth(load_config(None, ["retrieval.k=8", "eval.noisy_fraction=1.0"])) == 16
    assert cache_depth(load_config(None, ["retrieval.k=8", "eval.noisy_fraction=1.0", "eval.noisy_mode=hard"])) == 24
