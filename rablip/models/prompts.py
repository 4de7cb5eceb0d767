"""Every prompt template rablip uses, as plain format strings with one small function each.

The LLM reads ``[question image] [reference 1] ... [reference k] [prompt]`` (packed into token ids
by :mod:`rablip.models.prompt_packing`); this module writes the text parts: one line per reference
(``qa`` style for answering, ``select`` style for ASKG's relevance selection), the final prompt (the
QA prompt or the selection prompt, both ending with the answer prefix so generation continues from
it), the selection target (``Reference N``) and the Q-Former instruction of each image slot (the
fusion encoder's item texts use :func:`item_caption` too). No tokenization happens here.

Two templates (config key ``prompt.template``, :data:`PROMPT_TEMPLATES`): ``rablip``, the layout
above, and ``release``, RA-BLIP's released one (:func:`release_prompt`): one text that is both the
Q-Former instruction and the LLM prompt, ``captions | facts | question``, its fields cleaned by
:func:`clean_caption`. ASKG selection samples of the ``release`` template use the release's selection
text (:func:`release_select_prompt`, :func:`release_select_target`, :func:`release_select_instruction`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

PROMPT_TEMPLATES = ("rablip", "release")

# The InstructBLIP VQA prompt; "Short answer:" is the answer prefix that generation continues.
QA_PROMPT = "Question: {question} Short answer:"
QA_PROMPT_WITH_CHOICES = "Question: {question} Options: {choices}. Short answer:"
CHOICE_SEPARATOR = ", "

# One retrieved reference inside the LLM input (QA samples). The image tokens of an item with an
# image come right before its line.
REFERENCE_LINE = "Reference {number}: {body}"
TITLED_TEXT = "{title}: {text}"
UNTITLED_IMAGE_BODY = "image"
REFERENCE_SEPARATOR = "\n"

# ASKG relevance selection: each reference described by modality, then the selection prompt.
SELECT_IMAGE_BODY = "image with caption: {caption}"
SELECT_TEXT_BODY = "text: {text}"
SELECT_PROMPT = (
    "Question: {question} Which of the references above is relevant to the question, that is, "
    "helps answer it? Answer with its reference number. Relevant reference:"
)
SELECT_TARGET = "Reference {number}"

# Q-Former instructions: the question first, so that truncating the tail cuts the caption first.
QFORMER_QUESTION = "Question: {question}"
QFORMER_ITEM = "Question: {question} Image caption: {caption}"


def _clean(text: str) -> str:
    """Collapse runs of whitespace, so record text cannot break the line layout of a prompt."""
    return " ".join(text.split())


def item_caption(title: str, text: str) -> str:
    """An item's description as one string: ``title: text``, or whichever of the two is present."""
    title, text = _clean(title), _clean(text)
    if title and text:
        return TITLED_TEXT.format(title=title, text=text)
    return title or text


def qa_reference_line(number: int, title: str, text: str) -> str:
    """``Reference 1: <title>: <text>`` for a QA sample; ``Reference 1: image`` when an item has no text."""
    body = item_caption(title, text) or UNTITLED_IMAGE_BODY
    return REFERENCE_LINE.format(number=number, body=body)


def reference_label(number: int) -> str:
    """The start of a reference line, ``Reference N:``, which truncation never cuts."""
    return REFERENCE_LINE.format(number=number, body="").rstrip()


def select_reference_line(number: int, has_image: bool, title: str, text: str) -> str:
    """``Reference 2: image with caption: ...`` or ``Reference 2: text: ...`` for an ASKG sample."""
    caption = item_caption(title, text)
    body = SELECT_IMAGE_BODY.format(caption=caption) if has_image else SELECT_TEXT_BODY.format(text=caption)
    return REFERENCE_LINE.format(number=number, body=body.rstrip())


def qa_prompt(question: str, choices: Sequence[str] | None = None) -> str:
    """The QA prompt ending with the answer prefix; lists the options when ``choices`` is given."""
    if choices:
        listed = CHOICE_SEPARATOR.join(_clean(choice) for choice in choices)
        return QA_PROMPT_WITH_CHOICES.format(question=_clean(question), choices=listed)
    return QA_PROMPT.format(question=_clean(question))


def select_prompt(question: str) -> str:
    """ASKG's relevance-selection prompt, placed after the numbered references."""
    return SELECT_PROMPT.format(question=_clean(question))


def select_target(number: int) -> str:
    """The target of a relevance-selection sample: ``Reference N`` (1-based, as listed)."""
    if number < 1:
        raise ValueError(f"reference numbers start at 1, got {number}")
    return SELECT_TARGET.format(number=number)


def qformer_instruction(question: str, caption: str = "") -> str:
    """The Q-Former instruction of one image slot: the question, plus the item's caption if any."""
    caption = _clean(caption)
    if caption:
        return QFORMER_ITEM.format(question=_clean(question), caption=caption)
    return QFORMER_QUESTION.format(question=_clean(question))


# RA-BLIP's release (iLearn-Lab/TMM25-RA-BLIP, datasets.py, WebqaDataset): the instruction is
# " | ".join of the non-empty parts [image captions, text facts, question].
RELEASE_IMAGE_CAPTION = "caption of image {number} is that {caption}"
RELEASE_TEXT_FACT = "Title:{title}, Fact:{fact}"
RELEASE_ITEM_SEPARATOR = ";"
RELEASE_PART_SEPARATOR = " | "
RELEASE_MAX_WORDS = 256
_RELEASE_REMOVED = re.compile(r"[\"*#:;~]")
_RELEASE_SPACES = re.compile(r"\s{2,}")


def clean_caption(text: str, max_words: int = RELEASE_MAX_WORDS) -> str:
    """BLIP's caption cleaning as the release applies it (case kept): each of ``"*#:;~`` becomes a
    space, every run of two or more whitespace characters one space, the ends are stripped of
    spaces (and a trailing newline), and only the first ``max_words`` space-separated words stay."""
    text = _RELEASE_SPACES.sub(" ", _RELEASE_REMOVED.sub(" ", text)).rstrip("\n").strip(" ")
    words = text.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else text


def release_field(text: str) -> str:
    """A field as the release's caption processor returns it: a space, then :func:`clean_caption`
    (its ``" ".join([prompt, caption])`` with an empty prompt); the question, titles, facts and
    answers go through it."""
    return " " + clean_caption(text)


def release_prompt(question: str, image_captions: Sequence[str], facts: Sequence[tuple[str, str]]) -> str:
    """The release's Q-Former instruction and LLM prompt, one string: ``"caption of image 1 is that
    <caption>;... | Title: <title>, Fact: <fact>;... | <question>"``, the empty parts left out.
    ``image_captions``: one per reference with an image, in order, numbered from 1 and used as given
    (the release does not clean captions); ``facts``: (title, fact) per text reference, cleaned."""
    captions = RELEASE_ITEM_SEPARATOR.join(
        RELEASE_IMAGE_CAPTION.format(number=number, caption=caption)
        for number, caption in enumerate(image_captions, start=1)
    )
    texts = RELEASE_ITEM_SEPARATOR.join(
        RELEASE_TEXT_FACT.format(title=release_field(title), fact=release_field(fact)) for title, fact in facts
    )
    return RELEASE_PART_SEPARATOR.join(part for part in (captions, texts, release_field(question)) if part)


# RA-BLIP's release (datasets.py, WebqaEnhancedTrainDataset): the ASKG selection sample. The LLM reads
# the instruction, the question, then each reference numbered by its source id; the Q-Former reads
# the image reference's caption and the question. The strings are the release's, newlines included.
RELEASE_SELECT_INSTRUCTION = (
    "We would like to request your feedback on this question is relevant to which of the following "
    "references. Relevance refers to the degree to which the reference can answer the question. \n"
    "The input format is Question: content, Reference [number]: content \n"
    "The Output format is: Related content is [number]\n"
)
RELEASE_SELECT_QUESTION = 'Question: "{question}"\nThe references are as follows: \n'
RELEASE_SELECT_IMAGE = 'Reference [{source_id}]: The reference content is in image format, the image caption is "{caption}"\n'
RELEASE_SELECT_TEXT = 'Reference [{source_id}]: The reference content is in text format, the text content is "{text}"\n'
RELEASE_SELECT_TARGET = "The relevant reference is Reference [{source_id}]"
RELEASE_SELECT_TEXT_TARGET_END = "."
RELEASE_SELECT_QFORMER = "caption of image is {caption} | question is {question}"


def release_select_reference(source_id: str, has_image: bool, title: str, text: str) -> str:
    """One reference of the release's selection text, numbered by its source id (the KB item id): an
    image with its caption (``text``, else ``title``, used as given, as the release does) or a text in
    the release's fact form ``Title: <title>, Fact: <fact>`` (cleaned); each line ends with a newline."""
    if has_image:
        return RELEASE_SELECT_IMAGE.format(source_id=source_id, caption=text or title)
    fact = RELEASE_TEXT_FACT.format(title=release_field(title), fact=release_field(text))
    return RELEASE_SELECT_TEXT.format(source_id=source_id, text=fact)


def release_select_prompt(question: str, references: Sequence[str]) -> str:
    """The release's selection text for the LLM: the instruction, ``Question: " <question>"`` (cleaned,
    as the release's caption processor writes it) and the references of
    :func:`release_select_reference`, in order."""
    return RELEASE_SELECT_INSTRUCTION + RELEASE_SELECT_QUESTION.format(question=release_field(question)) + "".join(
        references
    )


def release_select_target(source_id: str, is_text: bool) -> str:
    """The release's selection target, ``The relevant reference is Reference [<source id>]``; the release
    ends it with a period when the relevant reference is a text (its text branch), and we do too."""
    target = RELEASE_SELECT_TARGET.format(source_id=source_id)
    return target + RELEASE_SELECT_TEXT_TARGET_END if is_text else target


def release_select_instruction(question: str, caption: str) -> str:
    """The release's Q-Former instruction of a selection sample: ``caption of image is <caption> |
    question is  <question>`` (the question cleaned, with the processor's leading space); ``caption`` is
    that of the sample's image reference, used as given."""
    return RELEASE_SELECT_QFORMER.format(caption=caption, question=release_field(question))
