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

from rablip.synthetic.render import render_entity, render_scene
from rablip.synthetic.vocab import VISUAL_ATTRIBUTES

_STREAM_VIEWING = 8
_STREAM_VIEWING_SCENES = 13
IGNORED = -100
"""A label the warm-up's loss skips (cross-entropy's ignore index)."""
POOL = 1024
"""Renderings a batch samples from (each mirrored left-right half of the time, as every shape is
symmetric about its vertical axis): rendering a whole batch anew is most of a warm-up step's time."""
REFRESH = 8
"""Pool renderings replaced by new ones after each batch, so the pool keeps changing."""


def attribute_label(attributes: Mapping[str, str]) -> list[int]:
    """The index of each visible attribute's value in :data:`VISUAL_ATTRIBUTES` (in its key order)."""
    return [VISUAL_ATTRIBUTES[key].index(attributes[key]) for key in VISUAL_ATTRIBUTES]


def class_counts(scenes: bool = False) -> list[int]:
    """How many values each visible attribute has, in the order of :func:`attribute_label` (three times over,
    in the order of :func:`scene_label`, with ``scenes``)."""
    return [len(values) for values in VISUAL_ATTRIBUTES.values()] * (3 if scenes else 1)


def viewing_batches(seed: int, batch_size: int, image_size: int, avoid: Iterable[Mapping[str, str]] = (),
                    pool: int = POOL, refresh: int = REFRESH, scene_share: float = 0.0,
                    ) -> Iterator[tuple[list[Image.Image], list[list[int]]]]:
    """An endless, seeded stream of (renderings, attribute labels) batches of invented creatures.

    ``avoid`` holds attribute dicts (the world's entities'); no rendering has one of their combinations.
    With ``pool`` > 0 a pool of that many renderings is drawn first; batches sample it (mirrored at
    random) and after each batch ``refresh`` of its renderings are replaced by new ones. With 0 every
    batch is rendered anew. With ``scene_share`` > 0 that share of the renderings are scenes of two creatures
    (:func:`rablip.synthetic.render.render_scene`) and every label has three blocks (:func:`scene_label`).
    """
    rng = np.random.default_rng([seed, _STREAM_VIEWING])
    scene_rng = np.random.default_rng([seed, _STREAM_VIEWING_SCENES])
    avoided = look_combinations(avoid)

    def draw() -> tuple[Image.Image, list[int]]:
        if scene_share and scene_rng.random() < scene_share:
            looks = [invented_look(scene_rng, avoided), invented_look(scene_rng, avoided)]
            return render_scene(looks, scene_rng, image_size), scene_label(None, *looks)
        look = invented_look(rng, avoided)
        image = render_entity(look, rng, image_size)
        return image, scene_label(look) if scene_share else attribute_label(look)

    def mirror(image: Image.Image, label: list[int]) -> tuple[Image.Image, list[int]]:
        """The rendering mirrored left-right; a scene's left and right creatures trade places."""
        n = len(VISUAL_ATTRIBUTES)
        return ImageOps.mirror(image), label if len(label) == n else [*label[:n], *label[2 * n:], *label[n:2 * n]]

    if pool:
        drawn = [draw() for _ in range(pool)]
        while True:
            picked = rng.integers(pool, size=batch_size)
            mirrored = rng.random(batch_size) < 0.5
            views = [mirror(*drawn[i]) if flip else drawn[i] for i, flip in zip(picked, mirrored)]
            yield [image for image, _ in views], [label for _, label in views]
            for i in rng.choice(pool, size=min(refresh, pool), replace=False):
                drawn[i] = draw()
    while True:
        batch = [draw() for _ in range(batch_size)]
        yield [image for image, _ in batch], [label for _, label in batch]


def scene_label(whole: Mapping[str, str] | None, left: Mapping[str, str] | None = None,
                right: Mapping[str, str] | None = None) -> list[int]:
    """Three label blocks for a viewing warm-up with scenes: the creature of a single rendering (``whole``),
    then the left and the right creature of a scene; an absent block is :data:`IGNORED` throughout."""
    return [value for look in (whole, left, right)
            for value in (attribute_label(look) if look is not None else [IGNORED] * len(VISUAL_ATTRIBUTES))]


def look_combinations(looks: Iterable[Mapping[str, str]]) -> set[tuple[str, ...]]:
    """The attribute combinations of ``looks`` (attribute dicts), as :func:`invented_look` avoids them."""
    return {tuple(look[key] for key in VISUAL_ATTRIBUTES) for look in looks}


def invented_look(rng: np.random.Generator, avoided: set[tuple[str, ...]]) -> dict[str, str]:
    """Visible attributes drawn independently, redrawn while their combination is in ``avoided``."""
    while True:
        look = {key: str(values[rng.integers(len(values))]) for key, values in VISUAL_ATTRIBUTES.items()}
        if tuple(look.values()) not in avoided:
            return look
