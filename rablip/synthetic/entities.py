"""Entities of the synthetic world: sampling, roles, and the texts the knowledge base states about them.

An entity has a made-up name, visible attributes (shape, colour, pattern, size; a unique
combination, so one image identifies it) and hidden facts (habitat, diet, origin, year) that only
the knowledge base states. Roles: ``seen`` entities appear in every QA split; ``unseen_val`` and
``unseen_test`` only in that evaluation split (and the KB); ``distractor`` entities only in the KB.
Facts are sampled independently of the visible attributes, so an image says nothing about them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from rablip.synthetic.vocab import HIDDEN_FACTS, VISUAL_ATTRIBUTES, all_answer_words

ROLES = ("seen", "unseen_val", "unseen_test", "distractor")

CAPTION_TEMPLATES = (
    "A photo of the {name}, a {description}.",
    "The {name}: a {description}.",
    "Picture of a {name}, which is a {description}.",
)
FACT_TEMPLATES = (
    "The {name} is a {description}. It lives in the {habitat}, eats {diet}, comes from {origin} "
    "and was first recorded in {year}.",
    "Entry for the {name}: a {description}. Habitat: {habitat}. Diet: {diet}. Origin: {origin}. "
    "First recorded: {year}.",
    "A {description} called the {name} makes its home in the {habitat} and feeds on {diet}. "
    "Native to {origin}, it was first recorded in {year}.",
)

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gl", "kr", "tr", "sh")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "", "", "n", "r", "l", "x", "m", "sk")


@dataclass
class Entity:
    """One entity: identity, what images show, what only the KB says, and its role in the splits."""

    id: str
    name: str
    attributes: dict[str, str]
    """Visible attributes: ``shape``, ``colour``, ``pattern``, ``size``."""
    facts: dict[str, str]
    """Hidden facts: ``habitat``, ``diet``, ``origin``, ``year``."""
    role: str
    caption_template: int = 0
    fact_template: int = 0
    kb_ids: dict[str, str] = field(default_factory=dict)
    """KB item ids: ``image`` (image + caption) and ``facts`` (text)."""

    @property
    def description(self) -> str:
        """The visible attributes as a noun phrase, e.g. ``large striped red star``."""
        a = self.attributes
        return f"{a['size']} {a['pattern']} {a['colour']} {a['shape']}"

    def caption(self) -> str:
        """Caption of the entity's KB image: names it and states its visible attributes."""
        return CAPTION_TEMPLATES[self.caption_template].format(name=self.name, description=self.description)

    def facts_text(self, facts: dict[str, str] | None = None) -> str:
        """The KB fact item: names the entity, restates its look, and states every hidden fact.

        ``facts`` overrides the entity's own facts (the knowledge-edit mode rewrites the text with the
        same template and new values).
        """
        values = dict(self.facts if facts is None else facts)
        return FACT_TEMPLATES[self.fact_template].format(name=self.name, description=self.description, **values)

    def to_json(self) -> dict:
        """The manifest record (``world.json``)."""
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "attributes": dict(self.attributes),
            "facts": dict(self.facts),
            "caption_template": self.caption_template,
            "fact_template": self.fact_template,
            "kb_ids": dict(self.kb_ids),
        }

    @classmethod
    def from_json(cls, record: dict) -> Entity:
        """Inverse of :meth:`to_json`."""
        return cls(
            id=record["id"],
            name=record["name"],
            attributes=dict(record["attributes"]),
            facts=dict(record["facts"]),
            role=record["role"],
            caption_template=int(record["caption_template"]),
            fact_template=int(record["fact_template"]),
            kb_ids=dict(record["kb_ids"]),
        )


def invented_entity(rng: np.random.Generator, name: str, attributes: dict[str, str] | None = None) -> Entity:
    """A creature made up outside any world (role ``invented``): the given visible ``attributes`` (else
    random ones), random facts and random text templates."""
    if attributes is None:
        attributes = {key: str(values[rng.integers(len(values))]) for key, values in VISUAL_ATTRIBUTES.items()}
    return Entity(
        id="invented", name=name, role="invented", attributes=dict(attributes),
        facts={key: str(values[rng.integers(len(values))]) for key, values in HIDDEN_FACTS.items()},
        caption_template=int(rng.integers(len(CAPTION_TEMPLATES))),
        fact_template=int(rng.integers(len(FACT_TEMPLATES))))


def split_counts(n_entities: int, unseen_fraction: float) -> tuple[int, int]:
    """(seen, unseen per evaluation split) so that about ``unseen_fraction`` of val's (and test's)
    entities are unseen: val holds the seen entities plus its own unseen ones, test likewise."""
    if not 0.0 <= unseen_fraction < 1.0:
        raise ValueError(f"unseen_fraction must be in [0, 1), got {unseen_fraction}")
    unseen = round(n_entities * unseen_fraction / (1.0 + unseen_fraction))
    if unseen_fraction > 0:
        unseen = max(unseen, 1)
    seen = n_entities - 2 * unseen
    if seen < 1:
        raise ValueError(
            f"{n_entities} entities leave no seen entity with unseen_fraction={unseen_fraction}; "
            "use more entities or a smaller fraction"
        )
    return seen, unseen


def make_names(rng: np.random.Generator, count: int) -> list[str]:
    """Unique pronounceable made-up names that collide with no answer or template word."""
    reserved = set(all_answer_words())
    for template in (*CAPTION_TEMPLATES, *FACT_TEMPLATES):
        reserved.update(word.strip(".,:{}").lower() for word in template.split())
    names: list[str] = []
    taken: set[str] = set()
    while len(names) < count:
        syllables = int(rng.integers(2, 4))
        name = "".join(
            _ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))] for _ in range(syllables)
        )
        name += _CODAS[rng.integers(len(_CODAS))]
        if name not in reserved and name not in taken:
            taken.add(name)
            names.append(name)
    return names


def _assign_roles(rng: np.random.Generator, combos: list[tuple[str, ...]], n_seen: int) -> list[int]:
    """Order the question entities so the first ``n_seen`` cover every attribute value if they can
    (an unseen entity's colour or shape then never is a word the models have not learned)."""
    order = [int(i) for i in rng.permutation(len(combos))]
    covered: list[set[str]] = [set() for _ in VISUAL_ATTRIBUTES]
    seen: list[int] = []
    rest: list[int] = []
    for index in order:
        adds_value = any(value not in covered[k] for k, value in enumerate(combos[index]))
        if len(seen) < n_seen and adds_value:
            seen.append(index)
            for k, value in enumerate(combos[index]):
                covered[k].add(value)
        else:
            rest.append(index)
    fill = n_seen - len(seen)
    return seen + rest[:fill] + rest[fill:]


def _sample_facts(rng: np.random.Generator, n_seen: int, n_unseen: int, n_distractors: int) -> list[dict[str, str]]:
    """Hidden facts, balanced over the vocabulary for question entities; an unseen entity only gets
    values some seen entity has (the generator has then met every answer word in training)."""
    n_question = n_seen + n_unseen
    columns: dict[str, list[str]] = {}
    for fact, values in HIDDEN_FACTS.items():
        repeats = -(-n_question // len(values))
        column = [str(v) for v in rng.permutation(np.array(list(values) * repeats, dtype=object))[:n_question]]
        seen_values = sorted(set(column[:n_seen]), key=values.index)
        for i in range(n_seen, n_question):
            if column[i] not in seen_values:
                column[i] = seen_values[rng.integers(len(seen_values))]
        column += [values[rng.integers(len(values))] for _ in range(n_distractors)]
        columns[fact] = column
    return [{fact: columns[fact][i] for fact in HIDDEN_FACTS} for i in range(n_question + n_distractors)]


def sample_entities(seed: int, n_entities: int, n_distractors: int, unseen_fraction: float) -> list[Entity]:
    """Sample ``n_entities`` question entities and ``n_distractors`` KB-only entities, sorted by id.

    Roles follow :func:`split_counts`. Ids (``e0000``...) are assigned in a random order so an id
    tells nothing about its role.
    """
    if n_entities < 1 or n_distractors < 0:
        raise ValueError(f"need n_entities >= 1 and n_distractors >= 0, got {n_entities}, {n_distractors}")
    all_combos = list(itertools.product(*VISUAL_ATTRIBUTES.values()))
    total = n_entities + n_distractors
    if total > len(all_combos):
        raise ValueError(
            f"{total} entities (+ distractors) exceed the {len(all_combos)} unique attribute combinations"
        )
    n_seen, n_unseen = split_counts(n_entities, unseen_fraction)
    rng = np.random.default_rng([seed, 1])
    picked = [all_combos[int(i)] for i in rng.choice(len(all_combos), size=total, replace=False)]
    question_order = _assign_roles(rng, picked[:n_entities], n_seen)
    combos = [picked[i] for i in question_order] + picked[n_entities:]
    roles = (
        ["seen"] * n_seen + ["unseen_val"] * n_unseen + ["unseen_test"] * n_unseen + ["distractor"] * n_distractors
    )
    facts = _sample_facts(rng, n_seen, 2 * n_unseen, n_distractors)
    names = make_names(rng, total)
    id_numbers = rng.permutation(total)
    entities = []
    for i in range(total):
        entity_id = f"e{int(id_numbers[i]):04d}"
        entities.append(
            Entity(
                id=entity_id,
                name=names[i],
                attributes=dict(zip(VISUAL_ATTRIBUTES, combos[i])),
                facts=facts[i],
                role=roles[i],
                caption_template=int(rng.integers(len(CAPTION_TEMPLATES))),
                fact_template=int(rng.integers(len(FACT_TEMPLATES))),
                kb_ids={"image": f"kb-img-{entity_id}", "facts": f"kb-txt-{entity_id}"},
            )
        )
    return sorted(entities, key=lambda entity: entity.id)
