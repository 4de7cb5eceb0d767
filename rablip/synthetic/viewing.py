"""Renderings of invented creatures with their visible attributes, for the tiny vision encoder's warm-up.

A real RA-BLIP starts from a pre-trained vision encoder that already tells shapes and colours apart.
The tiny one of the synthetic demo is built from scratch; trained only on the world's training
images, it learns the few attribute combinations of the entities it sees rather than the attributes
(BENCHMARKS.md, synthetic demo). So before it meets the world it looks at these: creatures drawn by
the world's renderer with every attribute drawn independently, labelled with those attributes. No
world entity's combination of attributes is drawn, so the world's unseen entities stay unseen.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import numpy as np
from PIL import Image, ImageOps

from rablip.synthetic.render import render_entity
from rablip.synthetic.vocab import VISUAL_ATTRIBUTES

_STREAM_VIEWING = 8
POOL = 1024
"""Renderings a batch samples from (each mirrored left-right half of the time, as every shape is
symmetric about its vertical axis): rendering a whole batch anew is most of a warm-up step's time."""
REFRESH = 8
"""Pool renderings replaced by new ones after each batch, so the pool keeps changing."""


def attribute_label(attributes: Mapping[str, str]) -> list[int]:
    """The index of each visible attribute's value in :data:`VISUAL_ATTRIBUTES` (in its key order)."""
    return [VISUAL_ATTRIBUTES[key].index(attributes[key]) for key in VISUAL_ATTRIBUTES]


def class_counts() -> list[int]:
    """How many values each visible attribute has, in the order of :func:`attribute_label`."""
    return [len(values) for values in VISUAL_ATTRIBUTES.values()]


def viewing_batches(seed: int, batch_size: int, image_size: int, avoid: Iterable[Mapping[str, str]] = (),
                    pool: int = POOL, refresh: int = REFRESH) -> Iterator[tuple[list[Image.Image], list[list[int]]]]:
    """An endless, seeded stream of (renderings, attribute labels) batches of invented creatures.

    ``avoid`` holds attribute dicts (the world's entities'); no rendering has one of their combinations.
    With ``pool`` > 0 a pool of that many renderings is drawn first; batches sample it (mirrored at
    random) and after each batch ``refresh`` of its renderings are replaced by new ones. With 0 every
    batch is rendered anew.
    """
    rng = np.random.default_rng([seed, _STREAM_VIEWING])
    avoided = look_combinations(avoid)

    def draw() -> tuple[Image.Image, list[int]]:
        look = invented_look(rng, avoided)
        return render_entity(look, rng, image_size), attribute_label(look)

    if pool:
        drawn = [draw() for _ in range(pool)]
        while True:
            picked = rng.integers(pool, size=batch_size)
            mirrored = rng.random(batch_size) < 0.5
            yield ([ImageOps.mirror(drawn[i][0]) if flip else drawn[i][0] for i, flip in zip(picked, mirrored)],
                   [drawn[i][1] for i in picked])
            for i in rng.choice(pool, size=min(refresh, pool), replace=False):
                drawn[i] = draw()
    while True:
        batch = [draw() for _ in range(batch_size)]
        yield [image for image, _ in batch], [label for _, label in batch]


def look_combinations(looks: Iterable[Mapping[str, str]]) -> set[tuple[str, ...]]:
    """The attribute combinations of ``looks`` (attribute dicts), as :func:`invented_look` avoids them."""
    return {tuple(look[key] for key in VISUAL_ATTRIBUTES) for look in looks}


def invented_look(rng: np.random.Generator, avoided: set[tuple[str, ...]]) -> dict[str, str]:
    """Visible attributes drawn independently, redrawn while their combination is in ``avoided``."""
    while True:
        look = {key: str(values[rng.integers(len(values))]) for key, values in VISUAL_ATTRIBUTES.items()}
        if tuple(look.values()) not in avoided:
            return look
