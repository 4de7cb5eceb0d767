"""Counterfactual references: swap a training answer for another one in the references and the target.

A generator fine-tuned on questions about the same entities again and again can answer from memory
(the image or the entity's name in a reference recalls the fact) instead of reading the reference,
and then fails on entities it never saw and ignores an edited knowledge base. With
``noise.counterfactual`` a share of the training examples gets a consistent alternative world: where
a reference's text states the example's answer, that answer is replaced (there and in the target)
by another answer of the same kind, so only reading the reference gives the right target.

"Same kind": the training answers of examples with the same question text, question type and answer
type; when that group has a single distinct answer, those of the same question type and answer type.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from rablip.data.records import KBItem, QAExample
from rablip.data.samples import pick_answer
from rablip.errors import ConfigError


def _kind(example: QAExample) -> tuple[str, str]:
    return example.question_type or "", str(example.extra.get("answer_type", ""))


def _stated(answer: str) -> re.Pattern:
    """The answer as whole words, any case."""
    return re.compile(rf"(?<!\w){re.escape(answer)}(?!\w)", re.IGNORECASE)


@dataclass(frozen=True)
class AnswerSwap:
    """Replace ``old`` by ``new`` in reference texts and make ``new`` the target."""

    old: str
    new: str

    def example(self, example: QAExample) -> QAExample:
        return replace(example, answers=[self.new])

    def items(self, items: Sequence[KBItem]) -> list[KBItem]:
        pattern = _stated(self.old)
        return [replace(item, text=pattern.sub(self.new, item.text)) for item in items]


class CounterfactualAnswers:
    """Draws answer swaps for ``fraction`` of the examples of the eligible question types."""

    def __init__(self, examples: Sequence[QAExample], fraction: float, question_types: Sequence[str] = ()) -> None:
        self.fraction = fraction
        self.question_types = set(question_types)
        by_question: dict[tuple, set[str]] = defaultdict(set)
        by_kind: dict[tuple, set[str]] = defaultdict(set)
        for example in examples:
            answer = pick_answer(example)
            if answer:
                by_question[(example.question.strip().lower(), *_kind(example))].add(answer)
                by_kind[_kind(example)].add(answer)
        self.by_question = {key: sorted(values) for key, values in by_question.items()}
        self.by_kind = {key: sorted(values) for key, values in by_kind.items()}
        present = {example.question_type or "" for example in examples}
        if fraction > 0 and self.question_types and examples and not self.question_types & present:
            raise ConfigError(f"noise.counterfactual_types {sorted(self.question_types)} names no question type of the "
                              f"training split; its types are {sorted(present)}. Fix the list or leave it empty (all).")

    def eligible(self, example: QAExample) -> bool:
        return not self.question_types or (example.question_type or "") in self.question_types

    def alternatives(self, example: QAExample, answer: str) -> list[str]:
        def others(pool: list[str]) -> list[str]:
            return [a for a in pool if a.lower() != answer.lower()]

        return (others(self.by_question.get((example.question.strip().lower(), *_kind(example)), []))
                or others(self.by_kind.get(_kind(example), [])))

    def draw(self, example: QAExample, items: Sequence[KBItem], rng: np.random.Generator) -> AnswerSwap | None:
        """A swap for this example, or None (not drawn, not eligible, or no reference states the answer)."""
        if self.fraction <= 0 or rng.random() >= self.fraction or not self.eligible(example):
            return None
        answer = pick_answer(example)
        if not answer or not any(_stated(answer).search(item.text) for item in items):
            return None
        alternatives = self.alternatives(example, answer)
        if not alternatives:
            return None
        return AnswerSwap(answer, alternatives[int(rng.integers(len(alternatives)))])
