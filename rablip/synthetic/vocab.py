"""The synthetic world's vocabularies: visible attributes, hidden facts, and their accepted variants.

Every value is a short lower-case answer (one or two words) that the official VQA normalization
leaves unchanged (no articles, number words or punctuation). ``VARIANTS`` lists accepted
alternative answers that annotators sometimes give (a plural, a synonym); the canonical value is
always the majority answer, so it scores 100 while a variant scores less.
"""

from __future__ import annotations

VISUAL_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": ("circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "heart"),
    "colour": ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink"),
    "pattern": ("solid", "striped", "dotted", "checkered"),
    "size": ("small", "large"),
}
"""What an image shows. Every entity has a unique combination (8 * 8 * 4 * 2 = 512 possible)."""

HIDDEN_FACTS: dict[str, tuple[str, ...]] = {
    "habitat": (
        "forest", "desert", "ocean", "mountains", "swamp", "tundra",
        "cave", "river", "jungle", "meadow", "reef", "volcano",
    ),
    "diet": (
        "fish", "seeds", "insects", "leaves", "fruit", "grass",
        "roots", "nectar", "moss", "berries", "mushrooms", "worms",
    ),
    "origin": (
        "valdor", "karesh", "mirelund", "sothvale", "ephrin", "duskmoor",
        "talvane", "orrin coast", "brightfen", "quellstead", "ashkar", "noventa",
    ),
    "year": tuple(str(year) for year in range(1850, 2000, 5)),
}
"""What no image shows: only the knowledge base states these."""

VARIANTS: dict[str, tuple[str, ...]] = {
    # visible attributes
    "circle": ("round",),
    "cyan": ("turquoise",),
    "purple": ("violet",),
    "striped": ("stripes", "stripy"),
    "dotted": ("spotted", "polka dots"),
    "checkered": ("checked", "checkerboard"),
    "solid": ("plain",),
    "small": ("little", "tiny"),
    "large": ("big",),
    # hidden facts
    "forest": ("woods", "forests"),
    "desert": ("deserts",),
    "ocean": ("sea",),
    "mountains": ("mountain",),
    "swamp": ("marsh",),
    "cave": ("caves",),
    "river": ("rivers",),
    "jungle": ("rainforest",),
    "meadow": ("grassland", "meadows"),
    "reef": ("coral reef",),
    "volcano": ("volcanoes",),
    "seeds": ("seed",),
    "insects": ("bugs",),
    "leaves": ("leaf",),
    "fruit": ("fruits",),
    "roots": ("root",),
    "berries": ("berry",),
    "mushrooms": ("fungi",),
    "worms": ("worm",),
}

ANSWER_TYPES = {"year": "number"}
"""VQA answer type per asked attribute; everything else is 'other'."""


def all_answer_words() -> list[str]:
    """Every word any canonical answer or variant uses, in a fixed order (names excluded)."""
    words: dict[str, None] = {}
    for values in (*VISUAL_ATTRIBUTES.values(), *HIDDEN_FACTS.values()):
        for value in values:
            for answer in (value, *VARIANTS.get(value, ())):
                for word in answer.split():
                    words.setdefault(word, None)
    return list(words)
