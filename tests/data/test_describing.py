"""Invented-creature pairs for pre-training: a rendering and a text about the same made-up creature."""

import itertools

import numpy as np

from rablip.synthetic.describing import InventedPairs
from rablip.synthetic.vocab import HIDDEN_FACTS, VISUAL_ATTRIBUTES

ALL_LOOKS = [dict(zip(VISUAL_ATTRIBUTES, combo)) for combo in itertools.product(*VISUAL_ATTRIBUTES.values())]


def test_a_pair_is_a_rendering_and_the_fact_text_or_caption_of_one_invented_creature():
    source = InventedPairs(0, 32, ALL_LOOKS[:-3], ["zorb", "mukrer"], names=50)
    allowed = {" ".join(look[k] for k in ("size", "pattern", "colour", "shape")) for look in ALL_LOOKS[-3:]}
    rng = np.random.default_rng(0)
    kinds = set()
    for draw in range(40):
        image, item, phrase = source.pair(rng, facts=draw % 2 == 0)
        assert phrase is None, "a lone creature needs no phrase to name it"
        assert image.size == (32, 32) and item.modality == "text" and item.title in source.names
        assert item.title in item.text and item.title not in {"zorb", "mukrer"}
        described = [look for look in allowed if look in item.text]
        assert len(described) == 1, "the text describes the creature's look, never an avoided one"
        assert item.id.endswith(described[0])
        facts = [value for values in HIDDEN_FACTS.values() for value in values if f" {value}" in item.text]
        kinds.add("facts" if facts else "caption")
        assert bool(facts) == (draw % 2 == 0), "the fact text when asked for, else the caption"
    assert kinds == {"facts", "caption"}


def test_pairs_are_a_function_of_the_generator_state():
    source = InventedPairs(0, 32)
    first = source.pair(np.random.default_rng([1, 2]), True)
    again = source.pair(np.random.default_rng([1, 2]), True)
    other = source.pair(np.random.default_rng([1, 3]), True)
    assert first[1] == again[1] and np.array_equal(np.asarray(first[0]), np.asarray(again[0]))
    assert first[1] != other[1]
