"""Prompt packing: one :class:`~rablip.data.samples.Sample` to one row of LLM token ids (and labels),
its slot images or precomputed features, and the Q-Former instruction of each slot.

A row is ``[question image tokens] [prefix specials] ([ref image tokens] ref line separator)*
prompt [suffix specials]`` with ``num_query_tokens`` image tokens per real image slot; the text comes
from :mod:`rablip.models.prompts`. With ``images_after_prefix`` (the LLaVA family) the prefix specials
open the row: ``[prefix specials] [question image tokens] ...``, each image block still followed by its
reference line. Decoder-only models: the target and EOS follow the prompt, and the
labels are -100 except on them; encoder-decoder models: the labels are the target and EOS alone.

Truncation never cuts an image token or the prompt (which holds the question). When a row is longer
than ``max_input_length``, reference texts are shortened first: every reference line is capped at
the same length (its ``Reference N:`` label always kept), the largest cap that fits; a warning is
logged the first time it happens. A row that does not fit even then raises DataError. The target is
cut to ``max_target_length`` tokens including EOS.

``multi_image="concat"`` (the model's one Q-Former pass per example): a row with any image holds ONE
block of ``num_query_tokens`` image tokens, where the question image's block goes (the row's start),
and none before its reference lines; a row without images holds none.

Template ``release`` (``prompt_template``; :func:`rablip.models.prompts.release_prompt`), answering
samples: a row is ``[question image tokens] ([ref image tokens])* [prefix specials] text [suffix
specials]``, every image block first (as the release prepends the query outputs to T5's input), and
the same text is every slot's Q-Former instruction. The text is truncated on the LEFT so that prefix
+ text + suffix <= ``max_input_length`` (the release's ``max_txt_len``; image tokens come on top), so
the question at its end is kept. The target is the answer as the release's caption processor writes
it (:func:`rablip.models.prompts.release_field`). Selection samples of the ``release`` template are
the release's too: the same row layout and left truncation, the text of
:func:`rablip.models.prompts.release_select_prompt` (references numbered by their item ids), the target
of :func:`rablip.models.prompts.release_select_target`, every slot's Q-Former instruction
:func:`rablip.models.prompts.release_select_instruction` with the first image reference's caption.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from PIL import Image

from rablip.data.samples import Reference, Sample
from rablip.errors import ConfigError, DataError
from rablip.models import prompts

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
# What separates the answer prefix ("Short answer:") from the answer in a decoder-only row.
ANSWER_SEPARATOR = " "


def _special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """The special-token ids the tokenizer puts before and after a text (e.g. ``[<s>]``, ``[</s>]``)."""
    probe = "reference"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    raise ConfigError(
        f"cannot tell which special tokens tokenizer {type(tokenizer).__name__} adds around a text"
    )


def left_truncated(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of ``texts`` with the tokenizer's special tokens, each cut on the LEFT to at most
    ``max_length`` ids (the specials kept), as a tokenizer with ``truncation_side="left"`` does."""
    prefix, suffix = _special_affixes(tokenizer)
    room = max(max_length - len(prefix) - len(suffix), 0)
    rows = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [prefix + (row[len(row) - room :] if room else []) + suffix for row in rows]


def _fit_cap(lengths: list[int], floors: list[int], budget: int) -> int:
    """The largest cap c with sum(max(floor, min(length, c))) <= budget (budget >= sum(floors))."""
    low, high = 0, max(lengths, default=0)
    while low < high:
        middle = (low + high + 1) // 2
        if sum(max(f, min(n, middle)) for n, f in zip(lengths, floors, strict=True)) <= budget:
            low = middle
        else:
            high = middle - 1
    return low


@dataclass
class PackedRow:
    """One packed row: LLM ids, its labels (None without a target), slot images or precomputed
    features (one of the two, or neither, per slot; slot 0 is the question image) and the Q-Former
    instruction of each slot."""

    input_ids: list[int]
    labels: list[int] | None
    images: list[Image.Image | None]
    instructions: list[str]
    features: list[torch.Tensor | None]


class PromptPacker:
    """Packs samples into rows for one LLM tokenizer and one set of length limits."""

    def __init__(
        self,
        llm_tokenizer,
        *,
        num_query_tokens: int,
        is_encoder_decoder: bool,
        max_references: int,
        max_input_length: int,
        max_target_length: int,
        image_token: str = "<image>",
        answer_from_choices: bool = False,
        prompt_template: str = "rablip",
        multi_image: str = "per_slot",
        images_after_prefix: bool = False,
    ) -> None:
        """``max_input_length`` bounds the LLM input without the target (a decoder-only row can reach
        max_input_length + max_target_length tokens); ``max_target_length`` counts EOS.
        ``max_references``: later references of a QA sample are dropped (a warning is logged).
        ``answer_from_choices``: list a sample's options in the QA prompt (``rablip`` template).
        ``prompt_template``: ``rablip`` or ``release`` (module docstring). ``images_after_prefix``: the
        prefix specials open the row, before the first image block (LLaVA). ConfigError when a setting
        is out of range or the tokenizer lacks ``image_token`` or an EOS token."""
        if prompt_template not in prompts.PROMPT_TEMPLATES:
            raise ConfigError(f"prompt.template must be one of {prompts.PROMPT_TEMPLATES}, got {prompt_template!r}")
        for name, value, least in (
            ("num_query_tokens", num_query_tokens, 1),
            ("max_references", max_references, 0),
            ("max_input_length", max_input_length, 1),
            ("max_target_length", max_target_length, 1),
        ):
            if not isinstance(value, int) or value < least:
                raise ConfigError(f"collate: {name} must be an integer >= {least}, got {value!r}")
        self.llm_tokenizer = llm_tokenizer
        self.num_query_tokens = num_query_tokens
        self.is_encoder_decoder = is_encoder_decoder
        self.max_references = max_references
        self.max_input_length = max_input_length
        self.max_target_length = max_target_length
        self.image_token = image_token
        self.answer_from_choices = answer_from_choices
        self.prompt_template = prompt_template
        self.multi_image = multi_image
        self.images_after_prefix = images_after_prefix
        self.image_token_id = self._lookup_image_token()
        self.prefix_ids, self.suffix_ids = _special_affixes(llm_tokenizer)
        if not is_encoder_decoder:
            self.suffix_ids = []  # a decoder-only prompt must end with the answer prefix
        self.eos_id = llm_tokenizer.eos_token_id
        if self.eos_id is None:
            raise ConfigError("collate: the LLM tokenizer has no eos_token; targets must end with EOS")
        self.pad_id = llm_tokenizer.pad_token_id if llm_tokenizer.pad_token_id is not None else self.eos_id
        self._warned: set[str] = set()

    def fresh(self) -> PromptPacker:
        """A copy (sharing the tokenizer) that has not warned yet."""
        other = copy.copy(self)
        other._warned = set()
        return other

    def _lookup_image_token(self) -> int:
        token_id = self.llm_tokenizer.convert_tokens_to_ids(self.image_token)
        encoded = self.llm_tokenizer(self.image_token, add_special_tokens=False)["input_ids"]
        if token_id is None or token_id == self.llm_tokenizer.unk_token_id or encoded != [token_id]:
            raise ConfigError(
                f"the LLM tokenizer has no special token {self.image_token!r}; add it with "
                "tokenizer.add_special_tokens({'additional_special_tokens': ['<image>']}) and save the tokenizer "
                "(rablip.synthetic.tokenizer_training adds it), or set image_token to the one it has."
            )
        return token_id

    def image_tokens(self, images: int) -> list[int]:
        """The image-token placeholders of a row's ``images`` images: ``num_query_tokens`` per image
        (``multi_image="per_slot"``), or one block of them for all (``"concat"``: one Q-Former pass per
        example), none without images."""
        blocks = min(images, 1) if self.multi_image == "concat" else images
        return [self.image_token_id] * (self.num_query_tokens * blocks)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)

    def _clean(self, text: str) -> str:
        # An image-token string inside record text would add image positions the model cannot fill.
        return text.replace(self.image_token, " ")

    def _tokens(self, text: str) -> list[int]:
        return self.llm_tokenizer(text, add_special_tokens=False)["input_ids"]

    def training_target(self, sample: Sample) -> str | None:
        """The text a sample trains on: its answer, or for a selection sample the target naming its
        relevant reference (``Reference N``; the ``release`` template: ``... Reference [<item id>]``);
        None when an answering sample has none."""
        if sample.kind != "select":
            return sample.target
        if self.prompt_template == "release":
            relevant = sample.references[sample.relevant - 1]
            return prompts.release_select_target(self._clean(relevant.item.id), not relevant.has_image)
        return prompts.select_target(sample.relevant)

    def _references(self, sample: Sample) -> list[Reference]:
        references = sample.references
        if len(references) <= self.max_references:
            return references
        if sample.kind == "select":
            raise DataError(
                f"selection sample {sample.example_id!r} lists {len(references)} references, more than "
                f"max_references={self.max_references}; its target could name a dropped reference."
            )
        self._warn_once(
            "references",
            f"sample {sample.example_id!r} has {len(references)} references; keeping the first "
            f"max_references={self.max_references} (and likewise for later samples).",
        )
        return references[: self.max_references]

    def _target_ids(self, prompt_text: str, prompt_ids: list[int], target: str) -> list[int]:
        target = self._clean(target)
        if self.is_encoder_decoder:
            ids = self._tokens(target)
        else:
            # Tokenize the answer as a continuation of the prompt, as generation would produce it.
            joined = self._tokens(prompt_text + ANSWER_SEPARATOR + target)
            continues = joined[: len(prompt_ids)] == prompt_ids and len(joined) > len(prompt_ids)
            ids = joined[len(prompt_ids) :] if continues else self._tokens(ANSWER_SEPARATOR + target)
        return ids[: self.max_target_length - 1] + [self.eos_id]

    def _reference_parts(self, sample: Sample, references: list[Reference], question: str):
        """Per reference: its line's token ids, the label length truncation keeps, its image-token
        block (empty without an image); and the Q-Former instruction of every slot."""
        image_block = [self.image_token_id] * self.num_query_tokens
        lines, floors, blocks, instructions = [], [], [], [prompts.qformer_instruction(question)]
        for number, reference in enumerate(references, start=1):
            has_image = reference.has_image
            title, text = self._clean(reference.item.title), self._clean(reference.item.text)
            instructions.append(
                prompts.qformer_instruction(question, prompts.item_caption(title, text) if has_image else "")
            )
            if sample.kind == "select":
                line = prompts.select_reference_line(number, has_image, title, text)
            else:
                line = prompts.qa_reference_line(number, title, text)
            lines.append(self._tokens(line))
            floors.append(len(self._tokens(prompts.reference_label(number))))
            blocks.append(image_block if has_image else [])
        return lines, floors, blocks, instructions

    def _fit_lines(
        self, sample: Sample, lines: list[list[int]], floors: list[int], fixed: int
    ) -> list[list[int]]:
        """Reference lines capped to one common length so that ``fixed`` + lines <= max_input_length."""
        budget = self.max_input_length - fixed
        if sum(len(line) for line in lines) <= budget:
            return lines
        if sum(floors) > budget:
            raise DataError(
                f"sample {sample.example_id!r} needs {fixed + sum(floors)} LLM tokens for its image tokens, "
                f"reference labels and question prompt alone, more than max_input_length={self.max_input_length}. "
                "Raise max_input_length, or lower max_references or num_query_tokens."
            )
        self._warn_once(
            "truncate",
            f"sample {sample.example_id!r}: reference texts were truncated to fit max_input_length="
            f"{self.max_input_length} (the question and image tokens are kept; later rows likewise).",
        )
        cap = _fit_cap([len(line) for line in lines], floors, budget)
        return [line[: max(floor, cap)] for line, floor in zip(lines, floors, strict=True)]

    def pack(self, sample: Sample, target: str | None) -> PackedRow:
        """One row: ``[question image] [prefix] ([ref image] ref line sep)* prompt [suffix]``, plus
        ``target`` (labels; None: no labels)."""
        if self.prompt_template == "release":
            return self._pack_release_selection(sample, target) if sample.kind == "select" else (
                self._pack_release(sample, target))
        references = self._references(sample)
        question = self._clean(sample.question)
        lines, floors, blocks, instructions = self._reference_parts(sample, references, question)
        choices = (
            [self._clean(c) for c in sample.choices] if self.answer_from_choices and sample.choices else None
        )
        prompt_text = (
            prompts.select_prompt(question)
            if sample.kind == "select"
            else prompts.qa_prompt(question, choices)
        )
        prompt_ids = self._tokens(prompt_text)
        question_block = [self.image_token_id] * self.num_query_tokens if sample.image is not None else []
        if self.multi_image == "concat":  # one block for all the row's images, where the question's goes
            question_block = self.image_tokens(int(sample.image is not None) + sum(bool(b) for b in blocks))
            blocks = [[] for _ in blocks]
        separator_ids = self._tokens(prompts.REFERENCE_SEPARATOR)
        fixed = len(question_block) + len(self.prefix_ids) + len(prompt_ids) + len(self.suffix_ids)
        fixed += sum(len(block) + len(separator_ids) for block in blocks)
        lines = self._fit_lines(sample, lines, floors, fixed)
        input_ids = self.prefix_ids + question_block if self.images_after_prefix else question_block + self.prefix_ids
        for block, line in zip(blocks, lines, strict=True):
            input_ids += block + line + separator_ids
        input_ids += prompt_ids + self.suffix_ids
        target_ids = self._target_ids(prompt_text, prompt_ids, target) if target is not None else None
        return self._row(sample, references, input_ids, target_ids, instructions)

    def _row(self, sample: Sample, references: list[Reference], input_ids: list[int],
             target_ids: list[int] | None, instructions: list[str]) -> PackedRow:
        """The packed row: an encoder-decoder LLM's labels are the target; a decoder-only one's input
        continues with the target, labelled there only."""
        labels = None
        if target_ids is not None:
            if self.is_encoder_decoder:
                labels = target_ids
            else:
                labels = [IGNORE_INDEX] * len(input_ids) + target_ids
                input_ids = input_ids + target_ids
        images = [sample.image] + [None if r.features is not None else r.image for r in references]
        return PackedRow(input_ids, labels, images, instructions, [None] + [r.features for r in references])

    def release_text(self, sample: Sample, references: list[Reference]) -> str:
        """The release template's text of a sample: Q-Former instruction and LLM prompt alike."""
        captions = [self._clean(r.item.text or r.item.title) for r in references if r.has_image]
        facts = [(self._clean(r.item.title), self._clean(r.item.text)) for r in references if not r.has_image]
        return prompts.release_prompt(self._clean(sample.question), captions, facts)

    def _pack_release(self, sample: Sample, target: str | None) -> PackedRow:
        """One answering row of the ``release`` template (module docstring)."""
        references = self._references(sample)
        text = self.release_text(sample, references)
        if target is not None:
            # The release trains on the processed answer; a decoder-only row adds its own separator.
            target = prompts.release_field(target)
            target = target if self.is_encoder_decoder else target.lstrip(" ")
        return self._release_row(sample, references, text, target, [text] * (1 + len(references)))

    def _pack_release_selection(self, sample: Sample, target: str | None) -> PackedRow:
        """One ASKG selection row of the ``release`` template (module docstring); ``target`` is
        :meth:`training_target`'s, used as given (the release does not process it)."""
        references = self._references(sample)
        question = self._clean(sample.question)
        lines = [
            prompts.release_select_reference(self._clean(r.item.id), r.has_image, self._clean(r.item.title),
                                             self._clean(r.item.text))
            for r in references
        ]
        text = prompts.release_select_prompt(question, lines)
        images = [r for r in references if r.has_image]
        caption = self._clean(images[0].item.text or images[0].item.title) if images else ""
        instruction = prompts.release_select_instruction(question, caption)
        return self._release_row(sample, references, text, target, [instruction] * (1 + len(references)))

    def _release_row(self, sample: Sample, references: list[Reference], text: str, target: str | None,
                     instructions: list[str]) -> PackedRow:
        """A ``release`` row: every image block, then ``text`` cut on the left to fit, then ``target``."""
        text_ids = self._tokens(text)
        budget = self.max_input_length - len(self.prefix_ids) - len(self.suffix_ids)
        if len(text_ids) > budget:
            self._warn_once(
                "truncate",
                f"sample {sample.example_id!r}: the prompt was cut on the left to fit max_input_length="
                f"{self.max_input_length} (its end is kept; later rows likewise).",
            )
            text_ids = text_ids[len(text_ids) - budget :] if budget > 0 else []
        slots = int(sample.image is not None) + sum(r.has_image for r in references)
        images = self.image_tokens(slots)
        opening = self.prefix_ids + images if self.images_after_prefix else images + self.prefix_ids
        input_ids = opening + text_ids + self.suffix_ids
        target_ids = self._target_ids(text, self._tokens(text), target) if target is not None else None
        return self._row(sample, references, input_ids, target_ids, instructions)
