"""Renderings of invented creatures paired with a text about them, for pre-training the retrieval encoder.

A real RA-BLIP's Q-Former is pre-trained on many image-text pairs before it meets a knowledge base.
The synthetic world has a few dozen entities that training questions ask about; trained on those
alone, the retrieval encoder learns them rather than how a picture matches a description, and finds
the items of entities no training question asks about less often (BENCHMARKS.md, synthetic demo).
So pre-training can also draw pairs of invented creatures: a fresh rendering as the query, and the
creature's fact text or caption as a text item to find. No world entity's look or name is drawn, so
the world's unseen entities stay unseen.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from PIL import Image

from rablip.data.records import KBItem
from rablip.synthetic.entities import invented_entity, make_names
from rablip.synthetic.render import render_entity
from rablip.synthetic.viewing import invented_look, look_combinations

_STREAM_NAMES = 9


class InventedPairs:
    """Draws (rendering, text item) pairs of invented creatures from a caller's random generator."""

    def __init__(self, seed: int, image_size: int, avoid_looks: Iterable[Mapping[str, str]] = (),
                 avoid_names: Iterable[str] = (), names: int = 2000) -> None:
        avoid = set(avoid_names)
        drawn = make_names(np.random.default_rng([seed, _STREAM_NAMES]), names + len(avoid))
        self.names = [name for name in drawn if name not in avoid][:names]
        self.avoided = look_combinations(avoid_looks)
        self.image_size = image_size

    def pair(self, rng: np.random.Generator, facts: bool) -> tuple[Image.Image, KBItem]:
        """A rendering of a new invented creature and its fact text (``facts``) or its caption."""
        name = self.names[int(rng.integers(len(self.names)))]
        creature = invented_entity(rng, name, invented_look(rng, self.avoided))
        kind = "facts" if facts else "caption"
        text = creature.facts_text() if facts else creature.caption()
        item = KBItem(id=f"invented-{kind}-{name}-{creature.description}", modality="text", text=text,
                      title=name, source="invented")
        return render_entity(creature.attributes, rng, self.image_size), item
