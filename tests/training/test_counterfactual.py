"""Counterfactual answer swaps: what is replaced, where the alternatives come from, when nothing happens."""

import numpy as np
import pytest

from rablip.data.records import KBItem, QAExample
from rablip.errors import ConfigError
from rablip.training.counterfactual import AnswerSwap, CounterfactualAnswers


def example(qid, question, answer, qtype="knowledge", answer_type="other"):
    return QAExample(id=qid, image=None, question=question, answers=[answer] * 10, question_type=qtype,
                     extra={"answer_type": answer_type})


TRAIN = [
    example("1", "Where does it live?", "forest"),
    example("2", "Where does it live?", "desert"),
    example("3", "What does it eat?", "fish"),
    example("4", "What does it eat?", "seeds"),
    example("5", "When was it found?", "1950", answer_type="number"),
    example("6", "When was it found?", "1955", answer_type="number"),
    example("7", "What color is it?", "red", qtype="visual"),
    example("8", "What color is it?", "blue", qtype="visual"),
    example("9", "Who named it?", "tolk"),
]


def test_swap_replaces_whole_words_in_any_case_and_sets_the_target():
    swap = AnswerSwap("forest", "desert")
    items = [KBItem(id="a", modality="text", text="Forest dweller; lives in the forest, not in forests."),
             KBItem(id="b", modality="text", text="Eats fish.")]
    out = swap.items(items)
    assert out[0].text == "desert dweller; lives in the desert, not in forests."
    assert out[1].text == "Eats fish."
    assert items[0].text.startswith("Forest"), "the store's items are not changed in place"
    assert swap.example(TRAIN[0]).answers == ["desert"]
    assert TRAIN[0].answers[0] == "forest"


def test_alternatives_come_from_the_same_question_else_the_same_kind():
    swaps = CounterfactualAnswers(TRAIN, 1.0)
    assert swaps.alternatives(TRAIN[0], "forest") == ["desert"]
    assert swaps.alternatives(TRAIN[4], "1950") == ["1955"]
    lonely = example("10", "Who named it?", "tolk")
    assert swaps.alternatives(lonely, "tolk") == ["desert", "fish", "forest", "seeds"]
    cased = CounterfactualAnswers([example("1", "Where?", "Forest"), example("2", "Where?", "forest"),
                                   example("3", "What?", "fish")], 1.0)
    assert cased.alternatives(example("4", "Where?", "forest"), "forest") == ["fish"], "case-only variants are not others"


def test_drawn_swaps_follow_fraction_types_and_need_a_reference_that_states_the_answer():
    rng = np.random.default_rng(0)
    stated = [KBItem(id="a", modality="text", text="It lives in the forest.")]
    swaps = CounterfactualAnswers(TRAIN, 1.0, ["knowledge"])
    assert swaps.draw(TRAIN[0], stated, rng) == AnswerSwap("forest", "desert")
    assert swaps.draw(TRAIN[0], [KBItem(id="b", modality="text", text="It eats fish.")], rng) is None
    colour = [KBItem(id="c", modality="text", text="A red star.")]
    assert swaps.draw(TRAIN[6], colour, rng) is None, "visual questions are not eligible"
    assert CounterfactualAnswers(TRAIN, 1.0).draw(TRAIN[6], colour, rng) == AnswerSwap("red", "blue")
    assert CounterfactualAnswers(TRAIN, 0.0).draw(TRAIN[0], stated, rng) is None
    half = CounterfactualAnswers(TRAIN, 0.5, ["knowledge"])
    drawn = sum(half.draw(TRAIN[0], stated, np.random.default_rng(seed)) is not None for seed in range(400))
    assert 160 < drawn < 240


def test_question_types_that_no_training_example_has_are_refused():
    with pytest.raises(ConfigError, match="noise.counterfactual_types.*knowlege.*knowledge"):
        CounterfactualAnswers(TRAIN, 0.5, ["knowlege"])
    CounterfactualAnswers(TRAIN, 0.0, ["knowlege"])  # off: nothing to check
