"""VQA accuracy for OK-VQA and VQAv2, equal to the official GT-Vision-Lab/VQA evaluation (2021 version).

Per question (``vqa_accuracy``):

1. newlines and tabs become spaces, then strip: the prediction and all the answers;
2. only when the answers are not all identical, both the answers and the prediction go through
   :func:`process_punctuation` then :func:`process_digit_article` (so ``'Yes'`` against ten
   ``'yes'`` scores 0, while ``'Yes'`` against nine ``'yes'`` and one ``'no'`` scores 1);
3. for each answer, left out in turn, ``min(1, matches among the others / 3)``; the question's
   accuracy is the mean of these values (0, 0.3, 0.6, 0.9 or 1, as the same floats the
   official code computes).

Totals (``score_vqa``): 100 x mean, rounded to 2 decimals, overall, per question type and per
answer type; per-question values are ``round(100 * acc, 2)`` like the official ``evalQA`` table.
Missing predictions count as 0 and are reported (the official ``loadRes`` would refuse the file).
Predictions for ids the annotations lack are ignored with one warning, as the A-OKVQA and InfoSeek
scripts do (``loadRes`` would refuse them; ``strict=True`` does).

The optional lemmatization (BLIP-2/LAVIS practice, off by default, not part of the official metric)
lemmatizes the prediction before step 1 with :mod:`rablip.evaluation.lemmatizer`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rablip.errors import DataError
from rablip.evaluation.lemmatizer import LEMMATIZER_NAME, lemmatize_text
from rablip.evaluation.predictions import add_unique, known_predictions, require_container, require_string
from rablip.utils.io import PathLike, check_type, read_json, record_location, require_keys

# The official contraction table, verbatim (including its oddities: capitalised keys that can never
# match after lower-casing, and "somebody'd" mapping to "somebodyd").
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've",
    "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've",
    "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
    "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've",
    "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've",
    "youll": "you'll", "youre": "you're", "youve": "you've",
}
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = ("a", "an", "the")
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")

# "(?!<=\d)" is a lookahead, not the lookbehind its author meant: the pattern matches any period
# not followed by a digit. Kept as is.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(\,)(\d)")
# The official code calls periodStrip.sub("", text, re.UNICODE): the flag lands in the ``count``
# slot, so at most int(re.UNICODE) == 32 periods are removed.
_PERIOD_STRIP_COUNT = int(re.UNICODE)


def clean_whitespace(text: str) -> str:
    """Step 1: newlines and tabs to spaces, then strip."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
    """The official punctuation rule (conditions are tested on the input text, not the running output)."""
    output = text
    has_digit_comma_digit = _COMMA_BETWEEN_DIGITS.search(text) is not None
    for mark in PUNCTUATION:
        if (mark + " " in text or " " + mark in text) or has_digit_comma_digit:
            output = output.replace(mark, "")
        else:
            output = output.replace(mark, " ")
    return _PERIOD_STRIP.sub("", output, _PERIOD_STRIP_COUNT)


def process_digit_article(text: str) -> str:
    """Lower-case, number words to digits, drop articles, contractions to the apostrophe form."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def normalize_answer(text: str) -> str:
    """One answer as the official metric compares it: whitespace, punctuation, number words, articles."""
    return process_digit_article(process_punctuation(clean_whitespace(text)))


def vqa_accuracy(
    prediction: str, answers: Sequence[str], answer_identities: Sequence[Hashable] | None = None
) -> float:
    """Official per-question VQA accuracy as a fraction in [0, 1].

    ``answer_identities`` reproduces how the official code leaves an answer out: it drops every
    answer *record* equal to the left-out one (``item != gtAnsDatum``). Pass, per answer, the rest
    of its record (e.g. its ``answer_id``); with distinct records, or with None, exactly the one
    answer at that position is left out.
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one reference answer")
    references = [clean_whitespace(answer) for answer in answers]
    candidate = clean_whitespace(prediction)
    if len(set(references)) > 1:
        references = [process_digit_article(process_punctuation(answer)) for answer in references]
        candidate = process_digit_article(process_punctuation(candidate))
    identities = list(range(len(answers))) if answer_identities is None else list(answer_identities)
    per_left_out = []
    for left_out, (reference, identity) in enumerate(zip(references, identities)):
        others = [
            other for position, other in enumerate(references)
            if position != left_out and not (other == reference and identities[position] == identity)
        ]
        matches = sum(1 for other in others if other == candidate)
        per_left_out.append(min(1, float(matches) / 3))
    return float(sum(per_left_out)) / len(per_left_out)


def percent(values: Sequence[float]) -> float:
    """``round(100 * sum / n, 2)`` in the official operation order (multiply, then divide)."""
    return round(100 * float(sum(values)) / len(values), 2)


@dataclass
class VQAQuestion:
    """One annotated question: its type labels and its answers (with record identities)."""

    question_id: int
    question_type: str
    answer_type: str
    answers: list[str]
    answer_identities: list[str] | None
    """The rest of each answer record (JSON); None when all differ, which scores the same as keeping them."""


def load_vqa_annotations(questions_path: PathLike, annotations_path: PathLike) -> list[VQAQuestion]:
    """Read a VQA-format questions file and annotations file; questions in annotation-file order."""
    questions_doc = read_json(questions_path, "questions file")
    annotations_doc = read_json(annotations_path, "annotations file")
    question_ids = _question_ids(questions_doc, questions_path)
    questions = []
    seen: set[int] = set()
    for index, record in enumerate(_list_under(annotations_doc, "annotations", annotations_path, "annotations file")):
        where = record_location("annotations file", annotations_path, index)
        require_keys(record, {"question_id": int, "question_type": str, "answer_type": str, "answers": list}, where)
        question_id = record["question_id"]
        if question_id in seen:
            raise DataError(f"{where}: question_id {question_id} is annotated twice.")
        seen.add(question_id)
        if not record["answers"]:
            raise DataError(f"{where}: 'answers' is empty; every question needs reference answers.")
        answers, identities = [], []
        for position, answer in enumerate(record["answers"]):
            require_keys(answer, {"answer": str}, f"{where}, answers[{position}]")
            answers.append(answer["answer"])
            rest = {key: value for key, value in answer.items() if key != "answer"}
            identities.append(json.dumps(rest, sort_keys=True))
        # Identities change a score only when two records of a question are equal; holding them for
        # every question would keep ten strings per question of a large split in memory for nothing.
        kept = identities if len(set(identities)) < len(identities) else None
        questions.append(VQAQuestion(question_id, record["question_type"], record["answer_type"], answers, kept))
    if seen != question_ids:
        only_annotated = sorted(seen - question_ids)[:5]
        only_asked = sorted(question_ids - seen)[:5]
        raise DataError(
            f"questions file {questions_path} and annotations file {annotations_path} do not cover the "
            f"same questions (annotated but not asked, e.g. {only_annotated}; asked but not annotated, "
            f"e.g. {only_asked}). Pass the two files of the same split."
        )
    return questions


def _list_under(document: object, key: str, path: PathLike, what: str) -> list:
    if not isinstance(document, dict) or not isinstance(document.get(key), list):
        raise DataError(f"{what} {path}: expected a JSON object with a {key!r} list (the official VQA format).")
    return document[key]


def _question_ids(document: object, path: PathLike) -> set[int]:
    ids = set()
    for index, record in enumerate(_list_under(document, "questions", path, "questions file")):
        where = record_location("questions file", path, index)
        require_keys(record, {"question_id": int}, where)
        ids.add(record["question_id"])
    return ids


def read_vqa_predictions(path: PathLike, questions: Sequence[VQAQuestion],
                         strict: bool = False) -> tuple[dict[int, str], list[int]]:
    """Read a results file (list of ``{question_id:int, answer:str}``); return predictions and missing ids.

    Ids the annotations lack are ignored with a warning, or refused when ``strict``
    (:func:`~rablip.evaluation.predictions.check_prediction_ids`).
    """
    document = read_json(path, "prediction file")
    require_container(document, list, path, 'a JSON list of {"question_id": int, "answer": str}')
    predictions: dict[int, str] = {}
    for index, record in enumerate(document):
        where = f"record {index}"
        require_keys(record, ["question_id", "answer"], f"prediction file {path}, {where}")
        check_type(record["question_id"], int, f"prediction file {path}, {where}", "question_id")
        answer = require_string(record["answer"], path, where, "answer")
        add_unique(predictions, record["question_id"], answer, path, where)
    predictions = known_predictions(predictions, [q.question_id for q in questions], path, "question_id", strict)
    return predictions, [q.question_id for q in questions if q.question_id not in predictions]


def score_vqa(
    questions: Sequence[VQAQuestion], predictions: dict[int, str], lemmatize: bool = False
) -> dict:
    """Official VQA totals for ``predictions`` (missing ones score 0), as the CLI prints them."""
    if not questions:
        raise DataError("the annotations hold no questions; nothing to score.")
    overall: list[float] = []
    by_question_type: dict[str, list[float]] = {}
    by_answer_type: dict[str, list[float]] = {}
    per_question: dict[str, float] = {}
    for question in questions:
        if question.question_id in predictions:
            prediction = predictions[question.question_id]
            if lemmatize:
                prediction = lemmatize_text(prediction)
            accuracy = vqa_accuracy(prediction, question.answers, question.answer_identities)
        else:
            accuracy = 0.0
        overall.append(accuracy)
        by_question_type.setdefault(question.question_type, []).append(accuracy)
        by_answer_type.setdefault(question.answer_type, []).append(accuracy)
        per_question[str(question.question_id)] = round(100 * accuracy, 2)
    return {
        "overall": percent(overall),
        "per_question": per_question,
        "per_question_type": {name: percent(values) for name, values in by_question_type.items()},
        "per_answer_type": {name: percent(values) for name, values in by_answer_type.items()},
        "num_questions": len(questions),
        "missing": len(questions) - sum(1 for q in questions if q.question_id in predictions),
        "metric": {
            "name": "VQA accuracy (GT-Vision-Lab/VQA evaluation, 2021 version)",
            "lemmatize": lemmatize,
            "lemmatizer": LEMMATIZER_NAME if lemmatize else None,
            "missing_predictions": "scored 0",
        },
    }


def score_vqa_files(
    questions_path: PathLike, annotations_path: PathLike, predictions_path: PathLike, lemmatize: bool = False,
    strict: bool = False,
) -> dict:
    """Read the three files and score them (see :func:`score_vqa`; ``strict``: refuse unknown ids)."""
    questions = load_vqa_annotations(Path(questions_path), Path(annotations_path))
    predictions, _ = read_vqa_predictions(predictions_path, questions, strict)
    return score_vqa(questions, predictions, lemmatize=lemmatize)
