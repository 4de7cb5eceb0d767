"""A reading corpus about invented creatures, for the tiny LLM's text-only warm-up.

A real RA-BLIP starts from a pre-trained LLM that can already read an answer out of a passage. The
tiny LLM of the synthetic demo is built from scratch, so before it meets images it reads these:
references in the generator's own prompt layout (fact texts and captions of creatures made up here,
with names and facts drawn independently of any world), a question about one hidden fact, and the
answer the fact text states. No world entity, name or fact is used, so what the LLM knows about the
world's unseen entities still comes only from retrieved references.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from rablip.data import prompts
from rablip.data.synthetic.entities import invented_entity, make_names
from rablip.data.synthetic.questions import KNOWLEDGE_ATTRIBUTES, TEMPLATES

_STREAM_READING = 7
MAX_REFERENCES = 3


@dataclass(frozen=True)
class ReadingExample:
    prompt: str
    """``Reference 1: ...`` lines (one fact text among captions) and the QA prompt."""
    answer: str


def reading_examples(seed: int, avoid_names: Iterable[str] = (), pool: int = 2000) -> Iterator[ReadingExample]:
    """An endless, seeded stream of reading examples; invented names never equal ``avoid_names``."""
    rng = np.random.default_rng([seed, _STREAM_READING])
    avoid = set(avoid_names)
    names = [name for name in make_names(rng, pool + len(avoid)) if name not in avoid][:pool]
    while True:
        picked = rng.choice(len(names), size=int(rng.integers(1, MAX_REFERENCES + 1)), replace=False)
        creatures = [invented_entity(rng, names[int(i)]) for i in picked]
        asked = creatures[0]
        references = [(asked.name, asked.facts_text())] + [(c.name, c.caption()) for c in creatures[1:]]
        order = rng.permutation(len(references))
        lines = [prompts.qa_reference_line(n + 1, *references[int(i)]) for n, i in enumerate(order)]
        attribute = KNOWLEDGE_ATTRIBUTES[int(rng.integers(len(KNOWLEDGE_ATTRIBUTES)))]
        question = TEMPLATES[attribute][int(rng.integers(len(TEMPLATES[attribute])))]
        text = prompts.REFERENCE_SEPARATOR.join(lines) + prompts.REFERENCE_SEPARATOR + prompts.qa_prompt(question)
        yield ReadingExample(text, asked.facts[attribute])
