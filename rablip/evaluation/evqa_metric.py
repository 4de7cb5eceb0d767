"""Encyclopedic-VQA accuracy, equal to the official ``evaluation_utils.py`` (google-research ``encyclopedic_vqa``).

Normalisation (:func:`normalize_answer`, the official ``preprocess_answer``): lower-case; newlines and tabs
to spaces; strip; when the text starts with ``"<extra_id_0> "`` every occurrence of that prefix is removed
(the official code calls ``str.replace``, not a prefix cut: quirk kept); every character of
``string.punctuation`` and ``‘’´`_`` deleted; ``\\b(the answer is|a|an|the)\\b`` replaced by a space; per
token, number words to digits, true/entailment to yes, false/contradiction to no, then the VQA contraction
table (its keys with apostrophes can never match, since apostrophes are gone: quirk kept); single spaces.

Per question, the score is the maximum over the reference alternatives (the CSV ``answer`` split on '|'):
- single answer: 1 when the normalised candidate equals the normalised reference;
- ``multi_answer``: the reference is split on '&&', the candidate on ',' after replacing ``' and '`` and
  ``' & '`` (case-sensitive, before normalisation) by ','; parts are normalised and empty ones dropped; 1
  when the set IoU is >= 0.5.
A reference that normalises to empty (every '&&' part, for multi_answer) is an error, as in the official
code; rablip finds it while reading the CSV and names the row.

The official score adds BEM where exact match fails (:mod:`rablip.evaluation.bem`): a BERT answer-equivalence
classifier whose checkpoint the user supplies. Without one, rablip reports exact match (a lower bound of
the official number) and says so in ``metric``; with one, the BEM-augmented accuracy, with exact match
beside it. Groups: ``single_hop`` is every question but ``2_hop`` (the issue's definition);
``single_hop_templated_automatic`` leaves ``multi_answer`` out too (the README's "single-hop templated and
automatically generated questions"): the two README versions disagree, so both are reported.

Differences from the official code, on purpose: a missing prediction scores 0 (and is counted); an unknown
``question_id`` is ignored with one warning (refused with ``strict``); percentages are 100 x the mean,
unrounded; a question type outside the four is refused when the CSV is read.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from rablip.data.evqa import QUESTION_TYPES, answer_alternatives, iter_evqa_rows
from rablip.errors import DataError
from rablip.evaluation.predictions import add_unique, known_predictions, require_string
from rablip.evaluation.vqa_metric import CONTRACTIONS, NUMBER_WORDS
from rablip.utils.io import PathLike, iter_jsonl_with_lines, require_keys

PUNCTUATION = frozenset(string.punctuation + "‘’´`_")
SPAN_PREFIX = "<extra_id_0> "
"""What some T5-style generators put before an answer; the official normalisation removes it."""
WORD_MAP = {**NUMBER_WORDS, "entailment": "yes", "true": "yes", "contradiction": "no", "false": "no"}
"""The official per-token map before the contraction table (number words as VQA, plus yes/no words)."""
IOU_THRESHOLD = 0.5
SCORE_COLUMNS = ("question", "answer", "question_type")
SINGLE_HOP_TYPES = ("templated", "automatic", "multi_answer")
README_SINGLE_HOP_TYPES = ("templated", "automatic")
_ARTICLES = re.compile(r"\b(the answer is|a|an|the)\b")
_SEPARATORS = (" and ", " & ")


def normalize_answer(text: str) -> str:
    """The official ``preprocess_answer`` (see the module docstring for each step and its quirks)."""
    text = text.lower().replace("\n", " ").replace("\t", " ").strip()
    if text.startswith(SPAN_PREFIX):
        text = text.replace(SPAN_PREFIX, "")
    text = "".join(ch for ch in text if ch not in PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    words = [CONTRACTIONS.get(word, word) for word in (WORD_MAP.get(word, word) for word in text.split())]
    return " ".join(" ".join(words).split())


def reference_parts(reference: str) -> list[str]:
    """A multi_answer reference's '&&' parts, normalised, empty ones dropped."""
    return [part for part in (normalize_answer(each) for each in reference.split("&&")) if part]


def candidate_parts(candidate: str) -> list[str]:
    """A multi_answer candidate's parts: ' and ' and ' & ' become ',', split on ',', normalised, non-empty."""
    for separator in _SEPARATORS:
        candidate = candidate.replace(separator, ",")
    return [part for part in (normalize_answer(each) for each in candidate.split(",")) if part]


def single_answer_match(reference: str, candidate: str) -> bool:
    """Equal after normalisation; a reference that normalises to empty is a ValueError (as officially)."""
    normalized = normalize_answer(reference)
    if not normalized:
        raise ValueError(f"reference answer {reference!r} is empty after normalisation")
    return normalized == normalize_answer(candidate)


def multi_answer_match(reference: str, candidate: str, threshold: float = IOU_THRESHOLD) -> bool:
    """Set IoU of the reference's and the candidate's parts >= ``threshold``."""
    expected = set(reference_parts(reference))
    if not expected:
        raise ValueError(f"multi_answer reference {reference!r} is empty after normalisation")
    given = set(candidate_parts(candidate))
    return len(expected & given) / len(expected | given) >= threshold


def exact_match(reference: str, candidate: str, question_type: str) -> bool:
    """The official exact-match score of one reference alternative."""
    if question_type == "multi_answer":
        return multi_answer_match(reference, candidate)
    return single_answer_match(reference, candidate)


@dataclass
class EvqaQuestion:
    """What scoring needs from one CSV row."""

    question_id: int
    question: str
    question_type: str
    references: list[str]
    """The '|' alternatives of the ``answer`` cell."""

    def exact_match(self, candidate: str) -> int:
        """1 when ``candidate`` matches any alternative exactly (official rules)."""
        return int(any(exact_match(ref, candidate, self.question_type) for ref in self.references))


class AnswerEquivalence(Protocol):
    """A model-based judge (BEM): 1.0/0.0 per (question, reference, candidate) triple, and its label."""

    label: str

    def __call__(self, triples: Sequence[tuple[str, str, str]]) -> list[float]: ...


def load_evqa_references(path: PathLike) -> list[EvqaQuestion]:
    """The questions of a split CSV, each reference alternative checked to normalise to something."""
    questions = []
    for row in iter_evqa_rows(path, SCORE_COLUMNS):
        question_type = row.fields["question_type"]
        references = answer_alternatives(row.fields["answer"])
        for reference in references:
            empty = (not reference_parts(reference) if question_type == "multi_answer"
                     else not normalize_answer(reference))
            if empty:
                raise DataError(f"{row.where(path)}: field 'answer': the reference {reference!r} is empty after "
                                "the official normalisation (the official scorer refuses it too). Fix the answer.")
        questions.append(EvqaQuestion(row.row, row.fields["question"], question_type, references))
    if not questions:
        raise DataError(f"Encyclopedic-VQA split CSV {path} holds no questions; nothing to score.")
    return questions


def _question_id(value: object, path: PathLike, where: str) -> int:
    if isinstance(value, str) and value.isdecimal():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise DataError(f"prediction file {path}, {where}: 'question_id' must be the 0-based row of the split CSV "
                    f"(an integer), got {value!r:.60}.")


def read_evqa_predictions(path: PathLike, questions: Sequence[EvqaQuestion], strict: bool = False) -> dict[int, str]:
    """``{question_id: prediction}`` from a JSONL of ``{"question_id": int, "prediction": str}``.

    Ids that are not rows of the split are ignored with one warning, or refused when ``strict``.
    """
    predictions: dict[int, str] = {}
    for line, record in iter_jsonl_with_lines(path, "prediction file"):
        where = f"line {line}"
        require_keys(record, ["question_id", "prediction"], f"prediction file {path}, {where}")
        question_id = _question_id(record["question_id"], path, where)
        add_unique(predictions, question_id, require_string(record["prediction"], path, where, "prediction"),
                   path, where)
    return known_predictions(predictions, [q.question_id for q in questions], path, "question_id", strict)


def _percent(values: Sequence[float]) -> float | None:
    return 100.0 * sum(values) / len(values) if values else None


def _groups(questions: Sequence[EvqaQuestion], scores: Sequence[float]) -> dict:
    """single_hop, single_hop_templated_automatic, overall and per_question_type of per-question scores."""
    by_type = {kind: [s for q, s in zip(questions, scores) if q.question_type == kind] for kind in QUESTION_TYPES}
    return {
        "single_hop": _percent([s for q, s in zip(questions, scores) if q.question_type in SINGLE_HOP_TYPES]),
        "single_hop_templated_automatic": _percent(
            [s for q, s in zip(questions, scores) if q.question_type in README_SINGLE_HOP_TYPES]),
        "overall": _percent(scores),
        "per_question_type": {kind: _percent(values) for kind, values in by_type.items() if values},
        "per_question": {str(q.question_id): s for q, s in zip(questions, scores)},
    }


def _bem_scores(questions: Sequence[EvqaQuestion], predictions: dict[int, str], em: list[int],
                judge: AnswerEquivalence) -> list[int]:
    """Exact match, then BEM for every answered question exact match got wrong (max over alternatives)."""
    triples, owners = [], []
    for index, (question, correct) in enumerate(zip(questions, em)):
        if correct or question.question_id not in predictions:
            continue
        for reference in question.references:
            # The official BEM call shows a multi_answer reference with its '&&' replaced by ','.
            shown = reference.replace("&&", ",") if question.question_type == "multi_answer" else reference
            triples.append((question.question, shown, predictions[question.question_id]))
            owners.append(index)
    scores = list(em)
    for index, value in zip(owners, judge(triples) if triples else []):
        scores[index] = max(scores[index], int(value))
    return scores


def score_evqa(questions: Sequence[EvqaQuestion], predictions: dict[int, str],
               bem: AnswerEquivalence | None = None) -> dict:
    """Scores in percent (unrounded) and per-question 0/1; BEM-augmented when ``bem`` is given."""
    em = [q.exact_match(predictions[q.question_id]) if q.question_id in predictions else 0 for q in questions]
    counts = {kind: sum(q.question_type == kind for q in questions) for kind in QUESTION_TYPES}
    metric = {
        "name": "Encyclopedic-VQA exact match (evaluation_utils.py without BEM)" if bem is None else
                f"Encyclopedic-VQA accuracy: exact match, else {bem.label}",
        "model_based": bem is not None,
        "single_hop": "question_type != 2_hop (templated, automatic, multi_answer)",
        "single_hop_templated_automatic": "templated and automatic only (the README's single-hop headline)",
        "missing_predictions": "scored 0",
    }
    if bem is None:
        metric["note"] = "BEM not applied (no --bem checkpoint): exact match is a lower bound of the official score"
        output = _groups(questions, em)
    else:
        output = _groups(questions, _bem_scores(questions, predictions, em, bem))
        output["exact_match"] = _groups(questions, em)
    output["counts"] = {"questions": len(questions), **counts}
    output["missing"] = sum(1 for q in questions if q.question_id not in predictions)
    output["metric"] = metric
    return output


def score_evqa_files(data_path: PathLike, predictions_path: PathLike, bem: AnswerEquivalence | None = None,
                     strict: bool = False) -> dict:
    """Read the split CSV and the prediction JSONL and score them (see :func:`score_evqa`)."""
    questions = load_evqa_references(data_path)
    predictions = read_evqa_predictions(predictions_path, questions, strict)
    return score_evqa(questions, predictions, bem)
