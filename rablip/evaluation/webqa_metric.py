"""WebQA scores: retrieval F1, QA-Acc (official keyword metric), optional QA-FL and QA.

Retrieval F1 (per question, averaged over all questions, missing = 0): precision and recall of the
submitted ``sources`` against the positive facts (``txt_posFacts`` by ``snippet_id``,
``img_posFacts`` by ``image_id``; ids compared as strings), F1 = 2PR / (P + R), 0 without overlap.

QA-Acc follows ``compute_vqa_metrics`` of the official script (WebQnA/WebQA_Baseline
``vlp/eval_1022.py``): both the answer and ``Keywords_A`` are normalised (lower-case; punctuation
except decimal points removed; articles dropped for multi-word texts; number words to digits;
lemmatised), then for ``color`` / ``shape`` / ``YesNo`` the bags of words are intersected with the
category vocabulary and for ``number`` reduced to integer tokens, and the accuracy is the keyword
F1 ``2PR / (P + R + 1e-5)`` (the 1e-5 is the official code's); for the other categories it is the
recall of the keywords. Scores are fractions in [0, 1] rounded to 4 decimals, as the WebQA server.

Two approximations, because the official dependencies are not installed: spaCy's lemmatizer is
replaced by :mod:`rablip.evaluation.lemmatizer`, and ``word2number`` by :func:`word_to_number`
(single tokens made of number words). The output's ``metric`` block says so.
When the data lack ``Keywords_A`` (the public val split), ``qa_acc`` is None and ``qa_acc_approx``
gives the approximation the WebQA authors publish (``eval_webqa.md``) against the first answer.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rablip.errors import DataError
from rablip.evaluation.lemmatizer import LEMMATIZER_NAME, lemmatize_word
from rablip.evaluation.predictions import known_predictions, require_container, require_string
from rablip.utils.io import PathLike, check_type, read_json, require_keys

COLOR_SET = frozenset(
    "orangebrown spot yellow blue rainbow ivory brown gray teal bluewhite orangepurple black white gold "
    "redorange pink blonde tan turquoise grey beige golden orange bronze maroon purple bluere red rust "
    "violet transparent yes silver chrome green aqua".split()
)
SHAPE_SET = frozenset(
    "globular octogon ring hoop octagon concave flat wavy shamrock cross cylinder cylindrical pentagon "
    "point pyramidal crescent rectangular hook tube cone bell spiral ball convex square arch h cuboid step "
    "rectangle dot oval circle star crosse crest octagonal cube triangle semicircle domeshape obelisk "
    "corkscrew curve circular xs slope pyramid round bow straight triangular heart fork teardrop fold curl "
    "spherical diamond keyhole conical dome sphere bellshaped rounded hexagon flower globe torus".split()
)
YESNO_SET = frozenset({"yes", "no"})
NUMBER_DOMAIN = "NUMBER"
DOMAINS: dict[str, frozenset[str] | str] = {
    "color": COLOR_SET, "shape": SHAPE_SET, "YesNo": YESNO_SET, "number": NUMBER_DOMAIN,
}
F1_CATEGORIES = frozenset(DOMAINS)

_UNITS = {
    word: value for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen".split()
    )
}
_TENS = {word: 10 * (i + 2) for i, word in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000, "billion": 1_000_000_000}
_NUMBER_WORDS = {**_UNITS, **_TENS, **_SCALES}
_PUNCTUATION_BUT_PERIOD = set(string.punctuation) - {"."}
_PERIOD_NOT_DECIMAL = re.compile(r"\.(?!\d)")
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def word_to_number(token: str) -> str:
    """``word2number.w2n.word_to_num`` for one token, as text; the token itself when it is no number.

    Digits give their integer (``'007' -> '7'``); otherwise the token's number words (split on
    hyphens; other words ignored, as w2n does) are combined; a repeated scale word or ``point``
    (decimals) leaves the token unchanged.
    """
    if token == "point":
        return token
    text = token.replace("-", " ").lower()
    if text.isdigit():
        try:
            return str(int(text))
        except ValueError:
            return token
    words = [word for word in text.split() if word in _NUMBER_WORDS or word == "point"]
    if not words or "point" in words or any(words.count(scale) > 1 for scale in ("thousand", "million", "billion")):
        return token
    total, current = 0, 0
    for word in words:
        value = _NUMBER_WORDS[word]
        if value == 100:
            current = max(current, 1) * 100
        elif value >= 1000:
            total += max(current, 1) * value
            current = 0
        else:
            current += value
    return str(total + current)


def normalize_text(text: str, lemmatize: Callable[[str], str] = lemmatize_word) -> str:
    """The official ``normalize_text`` (single characters keep punctuation, single words keep articles)."""
    def numbers(value: str) -> str:
        return " ".join(word_to_number(word) for word in value.split())

    def remove_punctuation(value: str) -> str:
        kept = "".join(ch for ch in value if ch not in _PUNCTUATION_BUT_PERIOD)
        return _PERIOD_NOT_DECIMAL.sub("", kept)

    def lemmas(value: str) -> str:
        return " ".join(lemmatize(word) for word in value.split())

    lowered = text.lower()
    if len(text.strip()) == 1:
        return numbers(lowered)
    if len(text.strip().split()) == 1:
        return lemmas(numbers(remove_punctuation(lowered)))
    return lemmas(numbers(_ARTICLES.sub(" ", remove_punctuation(lowered))))


def _integers(words: Sequence[str]) -> list[str]:
    """The official ``detectNum``: tokens Python's ``int`` accepts, as canonical integers."""
    result = []
    for word in words:
        try:
            result.append(str(int(word)))
        except ValueError:
            pass
    return result


def _bags(answer: str, keywords: str, category: str) -> tuple[list[str], list[str]]:
    candidate = normalize_text(answer).split()
    reference = normalize_text(keywords).split()
    domain = DOMAINS.get(category)
    if domain == NUMBER_DOMAIN:
        return _integers(candidate), _integers(reference)
    if domain is not None:
        return list(domain.intersection(candidate)), list(domain.intersection(reference))
    return candidate, reference


def keyword_accuracy(answer: str, keywords: str, category: str) -> float:
    """Official QA-Acc of one answer: keyword F1 (with the official +1e-5) or keyword recall."""
    candidate, reference = _bags(answer, keywords, category)
    common = sum((Counter(reference) & Counter(candidate)).values())
    if common == 0:
        return 0.0
    precision = common / len(candidate)
    recall = common / len(reference)
    if category in F1_CATEGORIES:
        return 2 * precision * recall / (precision + recall + 1e-5)
    return recall


def approximate_accuracy(answer: str, reference_answer: str, category: str) -> float:
    """The published val-split approximation (``eval_webqa.md``): plain F1 or recall against an answer."""
    candidate, reference = _bags(answer, reference_answer, category)
    common = sum((Counter(reference) & Counter(candidate)).values())
    if common == 0:
        return 0.0
    precision = common / len(candidate)
    recall = common / len(reference)
    if category in F1_CATEGORIES:
        return 2 * precision * recall / (precision + recall)
    return recall


def retrieval_f1(selected: Sequence[str], positives: Sequence[str]) -> float:
    """F1 of the selected source ids against the positive fact ids (sets; 0 without overlap)."""
    chosen, relevant = set(selected), set(positives)
    hits = len(chosen & relevant)
    if hits == 0:
        return 0.0
    precision, recall = hits / len(chosen), hits / len(relevant)
    return 2 * precision * recall / (precision + recall)


@dataclass
class WebQAQuestion:
    """What scoring needs from one WebQA record."""

    guid: str
    category: str
    answers: list[str]
    keywords: str | None
    positive_ids: list[str] | None


def _keywords(record: dict, where: str) -> str | None:
    value = record.get("Keywords_A")
    if value is None:
        return None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return " ".join(value)
    check_type(value, str, where, "Keywords_A")
    return value


def _positive_ids(record: dict, where: str) -> list[str]:
    """Positive fact ids as strings: text facts by ``snippet_id``, image facts by ``image_id``."""
    ids = []
    for key, id_key in (("txt_posFacts", "snippet_id"), ("img_posFacts", "image_id")):
        facts = record.get(key, [])
        check_type(facts, list, where, key)
        for position, fact in enumerate(facts):
            require_keys(fact, [id_key], f"{where}, {key}[{position}]")
            ids.append(str(fact[id_key]))
    return ids


def load_webqa_references(path: PathLike, split: str | None = None) -> list[WebQAQuestion]:
    """Read ``WebQA_train_val.json``-style records (of ``split`` when given), in file order."""
    document = read_json(path, "WebQA file")
    if not isinstance(document, dict):
        raise DataError(f"WebQA file {path}: expected a JSON object keyed by Guid, got {type(document).__name__}.")
    splits = {record.get("split") for record in document.values() if isinstance(record, dict)}
    if split is None and len(splits - {None}) > 1:
        raise DataError(
            f"WebQA file {path} holds several splits ({', '.join(sorted(s for s in splits if s))}); "
            "pass --split (e.g. --split val) to say which one the predictions are for."
        )
    questions = []
    for guid, record in document.items():
        where = f"WebQA file {path}, record {guid!r}"
        require_keys(record, {"Q": str}, where)
        if split is not None and record.get("split") != split:
            continue
        answers = record.get("A", [])
        check_type(answers, list, where, "A")
        for position, answer in enumerate(answers):
            check_type(answer, str, where, f"A[{position}]")
        labelled = "txt_posFacts" in record or "img_posFacts" in record
        positives = _positive_ids(record, where) if labelled else None
        category = record.get("Qcate", "text")
        check_type(category, str, where, "Qcate")
        questions.append(WebQAQuestion(guid, category, answers, _keywords(record, where), positives))
    if not questions:
        raise DataError(f"WebQA file {path}: no records{'' if split is None else f' of split {split!r}'} to score.")
    return questions


def read_webqa_predictions(path: PathLike, questions: Sequence[WebQAQuestion],
                           strict: bool = False) -> dict[str, tuple[list[str], str]]:
    """Read ``{guid: {"sources": [ids], "answer": str}}``; ids become strings.

    Guids the data lack are ignored with a warning, or refused when ``strict``
    (:func:`~rablip.evaluation.predictions.check_prediction_ids`).
    """
    document = read_json(path, "prediction file")
    require_container(document, dict, path, 'a JSON object {guid: {"sources": [...], "answer": str}}')
    predictions = {}
    for guid, entry in document.items():
        record = f"guid {guid!r}"
        require_keys(entry, {"sources": list, "answer": None}, f"prediction file {path}, {record}")
        answer = require_string(entry["answer"], path, record, "answer")
        for position, source in enumerate(entry["sources"]):
            if isinstance(source, bool) or not isinstance(source, (str, int)):
                raise DataError(
                    f"prediction file {path}, {record}: sources[{position}] must be a fact id (string or "
                    f"integer), got {type(source).__name__}."
                )
        predictions[guid] = ([str(source) for source in entry["sources"]], answer)
    return known_predictions(predictions, [q.guid for q in questions], path, "guid", strict)


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 4)


def score_webqa(
    questions: Sequence[WebQAQuestion],
    predictions: dict[str, tuple[list[str], str]],
    fluency_fn: Callable[[str, list[str]], float] | None = None,
) -> dict:
    """Retrieval F1, QA-Acc (or its approximation), and QA-FL / QA when ``fluency_fn`` is given."""
    has_keywords = all(q.keywords is not None for q in questions)
    has_positives = all(q.positive_ids is not None for q in questions)
    f1_values, acc_values, fl_values, qa_values = [], [], [], []
    for question in questions:
        sources, answer = predictions.get(question.guid, (None, None))
        if answer is None:
            f1, acc, fl = 0.0, 0.0, 0.0
        else:
            f1 = retrieval_f1(sources, question.positive_ids) if has_positives else 0.0
            if has_keywords:
                acc = keyword_accuracy(answer, question.keywords, question.category)
            else:
                reference = question.answers[0] if question.answers else ""
                acc = approximate_accuracy(answer, reference, question.category)
            fl = fluency_fn(answer, question.answers) if fluency_fn is not None else 0.0
        f1_values.append(f1)
        acc_values.append(acc)
        fl_values.append(fl)
        qa_values.append(fl * acc)
    accuracy = _mean(acc_values)
    return {
        "retrieval_f1": _mean(f1_values) if has_positives else None,
        "qa_acc": accuracy if has_keywords else None,
        "qa_acc_approx": None if has_keywords else accuracy,
        "qa_fl": _mean(fl_values) if fluency_fn is not None else None,
        "qa": _mean(qa_values) if fluency_fn is not None else None,
        "num_questions": len(questions),
        "missing": sum(1 for q in questions if q.guid not in predictions),
        "metric": {
            "name": "WebQA retrieval F1 and QA (WebQA_Baseline eval_1022.py), fractions in [0, 1]",
            "lemmatizer": LEMMATIZER_NAME + " (official: spaCy en_core_web_sm)",
            "number_words": "rablip word_to_number (official: word2number)",
            "qa_acc_source": "Keywords_A" if has_keywords else "approximation against A[0] (no Keywords_A)",
            "qa_uses": "qa_acc" if has_keywords else "qa_acc_approx",
            "fl": "BARTScore" if fluency_fn is not None else "absent: pass --bart-checkpoint DIR",
            "missing_predictions": "scored 0",
        },
    }
