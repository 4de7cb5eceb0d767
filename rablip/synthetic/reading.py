"""A reading corpus about invented creatures, for the tiny LLM's text-only warm-up.

A real RA-BLIP starts from a pre-trained LLM that can already read an answer out of a passage. The
tiny LLM of the synthetic demo is built from scratch, so before it meets images it reads these, laid
out as the generator lays out its input:

* a *lead*, standing in for the question image's tokens: the words of the pictured creature's look
  (size, pattern, colour, shape) in a random order;
* references in the generator's reference-line layout and in the order a retriever ranks them: the
  pictured creature's fact text (sometimes after its caption) first, then fact texts and captions of
  0-2 other creatures (random ones, or neighbours that differ from it in one or two attributes);
* a question: about a hidden fact of the pictured creature (answered from the first fact text) or,
  for a share of them, about its look (answered from the lead, whatever the references say).

Names, looks and facts are drawn independently of any world (looks avoid the world's combinations), so
what the LLM knows about the world's unseen entities still comes only from retrieved references.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from rablip.models import prompts
from rablip.synthetic.entities import Entity, invented_entity, make_names
from rablip.synthetic.questions import KNOWLEDGE_ATTRIBUTES, TEMPLATES, VISUAL_ATTRIBUTE_KEYS
from rablip.synthetic.viewing import invented_look, look_combinations
from rablip.synthetic.vocab import VISUAL_ATTRIBUTES

_STREAM_READING = 7
MAX_OTHERS = 2
"""Other creatures whose texts are references besides the pictured one's."""
VISUAL_SHARE = 0.3
"""Share of questions about the pictured creature's look rather than a hidden fact."""
NEIGHBOUR_SHARE = 0.5
"""Share of examples whose other creatures are neighbours of the pictured one (one or two attributes differ)."""
OTHER_FACTS_SHARE = 0.6
"""Chance that another creature's reference is its fact text rather than its caption."""
CAPTION_FIRST_SHARE = 0.3
"""Chance that the pictured creature's caption is ranked before its fact text."""


@dataclass(frozen=True)
class ReadingExample:
    lead: str
    """The pictured creature's look words, where the generator puts the question image's tokens."""
    prompt: str
    """``Reference N: ...`` lines and the QA prompt."""
    answer: str


def neighbour(rng: np.random.Generator, creature: Entity, name: str, avoided: set[tuple[str, ...]]) -> Entity:
    """An invented creature that looks like ``creature`` but for one or two attributes (never a look in
    ``avoided``), with its own random facts."""
    while True:
        look = dict(creature.attributes)
        for key in rng.choice(list(VISUAL_ATTRIBUTES), size=int(rng.integers(1, 3)), replace=False):
            values = [value for value in VISUAL_ATTRIBUTES[key] if value != look[key]]
            look[key] = values[int(rng.integers(len(values)))]
        if tuple(look[key] for key in VISUAL_ATTRIBUTES) not in avoided:
            return invented_entity(rng, name, look)


def reading_examples(seed: int, avoid_names: Iterable[str] = (), avoid_looks: Iterable[Mapping[str, str]] = (),
                     pool: int = 2000) -> Iterator[ReadingExample]:
    """An endless, seeded stream of reading examples; invented names never equal ``avoid_names`` and
    looks never equal one of ``avoid_looks`` (attribute dicts)."""
    rng = np.random.default_rng([seed, _STREAM_READING])
    avoid = set(avoid_names)
    avoided = look_combinations(avoid_looks)
    names = [name for name in make_names(rng, pool + len(avoid)) if name not in avoid][:pool]
    while True:
        picked = [names[int(i)] for i in rng.choice(len(names), size=1 + MAX_OTHERS, replace=False)]
        pictured = invented_entity(rng, picked[0], invented_look(rng, avoided))
        near = rng.random() < NEIGHBOUR_SHARE
        others = [neighbour(rng, pictured, name, avoided) if near else invented_entity(rng, name, invented_look(rng, avoided))
                  for name in picked[1:1 + int(rng.integers(MAX_OTHERS + 1))]]
        visual = rng.random() < VISUAL_SHARE
        references: list[tuple[Entity, str]] = []
        if not visual or rng.random() < 0.5:
            if rng.random() < CAPTION_FIRST_SHARE:
                references.append((pictured, pictured.caption()))
            references.append((pictured, pictured.facts_text()))
        for other in others:
            references.append((other, other.facts_text() if rng.random() < OTHER_FACTS_SHARE else other.caption()))
        lines = [prompts.qa_reference_line(n + 1, creature.name, text) for n, (creature, text) in enumerate(references)]
        attributes = VISUAL_ATTRIBUTE_KEYS if visual else KNOWLEDGE_ATTRIBUTES
        attribute = attributes[int(rng.integers(len(attributes)))]
        question = TEMPLATES[attribute][int(rng.integers(len(TEMPLATES[attribute])))]
        lead = " ".join(pictured.attributes[key] for key in rng.permutation(list(VISUAL_ATTRIBUTES)))
        text = "".join(line + prompts.REFERENCE_SEPARATOR for line in lines) + prompts.qa_prompt(question)
        answer = pictured.attributes[attribute] if visual else pictured.facts[attribute]
        yield ReadingExample(lead, text, answer)
