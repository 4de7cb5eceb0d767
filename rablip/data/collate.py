"""From QA examples and knowledge items to the tensor batch the model consumes (the batch contract).

Two steps. First, :func:`make_qa_sample` / :func:`make_selection_sample` turn one example and its
knowledge items (already chosen and ordered by the caller: retrieval, ASKG mixing and shuffling
belong to training) into a :class:`Sample` with decoded images. Second, :class:`Collator` tokenizes
a list of samples into the batch dict:

* ``pixel_values`` (B, S, 3, H, W), zeros in empty slots; ``image_slot_mask`` (B, S). Slot 0 is the
  question image, slot i the i-th reference's image (text-only references and padding: False).
* ``qformer_input_ids`` / ``qformer_attention_mask`` (B, S, Lq), right-padded: the question, plus
  the item's caption in a slot that holds an item image.
* ``input_ids`` / ``attention_mask`` (B, L): ``[question image tokens] [prefix specials]
  [ref 1 image tokens] "Reference 1: ..." ... [prompt ending with the answer prefix]``, with
  ``num_query_tokens`` image tokens per real image slot. Decoder-only models: the target and EOS
  follow the prompt, rows are left-padded, ``labels`` (B, L) is -100 except on target + EOS.
  Encoder-decoder models: the tokenizer's suffix (``</s>``) ends the input, rows are right-padded,
  ``labels`` (B, T) is target + EOS with -100 padding.
* ``sample_weight`` (float) and ``sample_kind`` (long: 0 QA, 1 ASKG selection) in ``train`` mode.
* ``image_embeds`` (B, S, P, D) float16 and ``image_embeds_mask`` (B, S), only when some reference
  carries precomputed vision features (the frozen-feature cache, :mod:`rablip.training.feature_cache`)
  instead of a decoded image: such a slot is real, its pixels stay zero and the model reads its
  features; elsewhere ``image_embeds`` is zero and the mask False.

Modes: ``train`` (labels), ``generate`` (no labels; decoder-only rows end with the answer prefix so
``generate`` continues there) and ``score`` (one row per multiple-choice option with that option as
the target, plus ``example_index`` and ``choice_index`` to regroup the rows for likelihood ranking).

Truncation never cuts an image token or the prompt (which holds the question). When a row is longer
than ``max_input_length``, reference texts are shortened first: every reference line is capped at
the same length (its ``Reference N:`` label always kept), the largest cap that fits; a warning is
logged the first time it happens. A row that does not fit even then raises DataError. The target
is cut to ``max_target_length`` tokens including EOS; the Q-Former instruction to
``qformer_max_length`` tokens (the caption goes after the question, so it is cut first).
"""

from __future__ import annotations

import copy
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import AutoTokenizer, BlipImageProcessor

from rablip.data import prompts
from rablip.data.images import ImageRef
from rablip.data.records import KBItem, QAExample
from rablip.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

SAMPLE_KINDS = {"qa": 0, "select": 1}
COLLATE_MODES = ("train", "generate", "score")
IGNORE_INDEX = -100
# What separates the answer prefix ("Short answer:") from the answer in a decoder-only row.
ANSWER_SEPARATOR = " "

LoadImage = Callable[[ImageRef, str], "Image.Image | None"]
"""``(image reference, record id) -> RGB image or None``, e.g. ``ImageLoader(root).load``."""
GetItems = Callable[[list[str]], list[KBItem]]
"""``ids -> items`` in the same order, e.g. a KB store's ``get_many``."""


@dataclass
class Reference:
    """One knowledge item in a sample, with its decoded image (None for text items or skipped images),
    or instead the vision encoder's patch features (P, D) of that image, precomputed."""

    item: KBItem
    image: Image.Image | None = None
    features: torch.Tensor | None = None

    @property
    def has_image(self) -> bool:
        """Whether the reference fills an image slot (a decoded image or its precomputed features)."""
        return self.image is not None or self.features is not None


@dataclass
class Sample:
    """One row of a batch before tokenization: question, image, ordered references and target."""

    question: str
    image: Image.Image | None
    references: list[Reference]
    target: str | None
    """The answer (QA), ``Reference N`` (selection), or None at inference."""
    kind: str = "qa"
    """``qa`` or ``select`` (ASKG relevance selection)."""
    weight: float = 1.0
    choices: list[str] | None = None
    example_id: str = ""

    def __post_init__(self) -> None:
        if self.kind not in SAMPLE_KINDS:
            raise ValueError(
                f"sample {self.example_id!r}: kind must be one of {tuple(SAMPLE_KINDS)}, got {self.kind!r}"
            )


def pick_answer(example: QAExample) -> str | None:
    """The training target of an example: its most frequent answer (first seen wins a tie),
    else the correct multiple-choice option, else None (no answer known)."""
    if example.answers:
        return Counter(example.answers).most_common(1)[0][0]
    if example.choices is not None and example.correct_choice_idx is not None:
        return example.choices[example.correct_choice_idx]
    return None


def item_has_image(item: KBItem) -> bool:
    """Whether a knowledge item's image goes into an image slot (it has one and is not a text item)."""
    return item.modality != "text" and item.image is not None


def _load_references(
    items: Sequence[KBItem], load_item_image: LoadImage, item_features: Sequence[torch.Tensor | None] | None = None
) -> list[Reference]:
    """References of ``items``; an item with features in ``item_features`` (aligned with ``items``) keeps
    them and its image is not decoded."""
    if item_features is not None and len(item_features) != len(items):
        raise ValueError(f"{len(item_features)} feature entries for {len(items)} items")
    references = []
    for position, item in enumerate(items):
        has_image = item_has_image(item)
        features = item_features[position] if item_features is not None and has_image else None
        if features is not None:
            references.append(Reference(item, None, features))
        else:
            references.append(Reference(item, load_item_image(item.image, item.id) if has_image else None))
    return references


def _question_image(example: QAExample, load_image: LoadImage) -> Image.Image | None:
    return load_image(example.image, example.id) if example.image is not None else None


def make_qa_sample(
    example: QAExample,
    items: Sequence[KBItem],
    load_image: LoadImage,
    *,
    load_item_image: LoadImage | None = None,
    target: str | None = None,
    item_features: Sequence[torch.Tensor | None] | None = None,
) -> Sample:
    """A QA sample: ``items`` become references 1..k in the given order; the target is ``target``
    or :func:`pick_answer`. ``load_item_image`` (default ``load_image``) decodes item images, so
    question images and KB images can live under different roots. ``item_features`` (aligned with
    ``items``, e.g. from the feature cache) gives precomputed vision features that replace an item's
    image; None entries (and no list at all) mean: decode the image."""
    return Sample(
        question=example.question,
        image=_question_image(example, load_image),
        references=_load_references(items, load_item_image or load_image, item_features),
        target=target if target is not None else pick_answer(example),
        kind="qa",
        weight=1.0,
        choices=list(example.choices) if example.choices is not None else None,
        example_id=example.id,
    )


def make_selection_sample(
    example: QAExample,
    items: Sequence[KBItem],
    relevant_index: int,
    weight: float,
    load_image: LoadImage,
    *,
    load_item_image: LoadImage | None = None,
    item_features: Sequence[torch.Tensor | None] | None = None,
) -> Sample:
    """An ASKG relevance-selection sample: the target names ``items[relevant_index]`` as
    ``Reference N`` (N = relevant_index + 1); ``weight`` scales its loss (e.g. 0.1).
    ``item_features`` as in :func:`make_qa_sample`."""
    if not 0 <= relevant_index < len(items):
        raise ValueError(
            f"example {example.id!r}: relevant_index {relevant_index} does not index its {len(items)} items"
        )
    return Sample(
        question=example.question,
        image=_question_image(example, load_image),
        references=_load_references(items, load_item_image or load_image, item_features),
        target=prompts.select_target(relevant_index + 1),
        kind="select",
        weight=float(weight),
        example_id=example.id,
    )


def build_qa_samples(
    examples: Sequence[QAExample],
    item_ids_per_example: Sequence[Sequence[str]],
    get_items: GetItems,
    load_image: LoadImage,
    *,
    load_item_image: LoadImage | None = None,
) -> list[Sample]:
    """QA samples for ``examples``, fetching each example's items by id (in the given order)."""
    if len(examples) != len(item_ids_per_example):
        raise ValueError(f"{len(examples)} examples but {len(item_ids_per_example)} item-id lists")
    samples = []
    for example, item_ids in zip(examples, item_ids_per_example, strict=True):
        items = get_items(list(item_ids))
        if [item.id for item in items] != list(item_ids):
            raise DataError(
                f"example {example.id!r}: the knowledge-base lookup returned items "
                f"{[item.id for item in items]} for ids {list(item_ids)}; it must return one item per id, "
                "in order. Check that the retrieval results and the KB store come from the same build."
            )
        samples.append(make_qa_sample(example, items, load_image, load_item_image=load_item_image))
    return samples


def collate(
    examples: Sequence[QAExample],
    item_ids_per_example: Sequence[Sequence[str]],
    *,
    get_items: GetItems,
    load_image: LoadImage,
    collator: Collator,
    load_item_image: LoadImage | None = None,
) -> dict[str, torch.Tensor]:
    """Examples plus retrieved item ids straight to a batch (QA samples only) with ``collator``."""
    samples = build_qa_samples(
        examples, item_ids_per_example, get_items, load_image, load_item_image=load_item_image
    )
    return collator(samples)


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


def _image_size(image_processor) -> tuple[int, int]:
    size = image_processor.size
    height = size.get("height") if isinstance(size, dict) else getattr(size, "height", None)
    width = size.get("width") if isinstance(size, dict) else getattr(size, "width", None)
    if not height or not width:
        raise ConfigError(
            f"the image processor's size {size} has no height/width; save it with "
            "size={'height': H, 'width': W} (BlipImageProcessor does)."
        )
    return int(height), int(width)


def _pad(rows: list[list[int]], value: int, left: bool) -> torch.Tensor:
    length = max((len(row) for row in rows), default=0)
    padded = [
        [value] * (length - len(row)) + row if left else row + [value] * (length - len(row)) for row in rows
    ]
    return torch.tensor(padded, dtype=torch.long).reshape(len(rows), length)


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
class _Row:
    """One tokenized row: LLM ids, its labels (None without a target), slot images or precomputed
    features (one of the two, or neither, per slot) and instructions."""

    input_ids: list[int]
    labels: list[int] | None
    images: list[Image.Image | None]
    instructions: list[str]
    features: list[torch.Tensor | None]


class Collator:
    """Turns samples into the model batch (see the module docstring for every tensor)."""

    def __init__(
        self,
        qformer_tokenizer,
        llm_tokenizer,
        image_processor,
        *,
        num_query_tokens: int,
        is_encoder_decoder: bool,
        max_references: int,
        max_input_length: int,
        max_target_length: int,
        qformer_max_length: int,
        image_token: str = "<image>",
        answer_from_choices: bool = False,
        pad_slots_to_max_references: bool = False,
        mode: str = "train",
    ) -> None:
        """Settings are plain values (the config's model/data keys).

        ``max_input_length`` bounds the LLM input without the target (a decoder-only row can reach
        max_input_length + max_target_length tokens); ``max_target_length`` counts EOS.
        ``max_references``: later references of a QA sample are dropped (a warning is logged).
        ``answer_from_choices``: list a sample's options in the QA prompt. With
        ``pad_slots_to_max_references`` every batch has S = 1 + max_references slots (static shapes);
        otherwise S = 1 + the most references of any row in the batch."""
        for name, value, least in (
            ("num_query_tokens", num_query_tokens, 1),
            ("max_references", max_references, 0),
            ("max_input_length", max_input_length, 1),
            ("max_target_length", max_target_length, 1),
            ("qformer_max_length", qformer_max_length, 2),
        ):
            if not isinstance(value, int) or value < least:
                raise ConfigError(f"collate: {name} must be an integer >= {least}, got {value!r}")
        if mode not in COLLATE_MODES:
            raise ConfigError(f"collate: mode must be one of {COLLATE_MODES}, got {mode!r}")
        self.qformer_tokenizer = qformer_tokenizer
        self.llm_tokenizer = llm_tokenizer
        self.image_processor = image_processor
        self.num_query_tokens = num_query_tokens
        self.is_encoder_decoder = is_encoder_decoder
        self.max_references = max_references
        self.max_input_length = max_input_length
        self.max_target_length = max_target_length
        self.qformer_max_length = qformer_max_length
        self.image_token = image_token
        self.answer_from_choices = answer_from_choices
        self.pad_slots_to_max_references = pad_slots_to_max_references
        self.mode = mode
        self.image_token_id = self._lookup_image_token()
        self.prefix_ids, self.suffix_ids = _special_affixes(llm_tokenizer)
        if not is_encoder_decoder:
            self.suffix_ids = []  # a decoder-only prompt must end with the answer prefix
        self.eos_id = llm_tokenizer.eos_token_id
        if self.eos_id is None:
            raise ConfigError("collate: the LLM tokenizer has no eos_token; targets must end with EOS")
        self.pad_id = llm_tokenizer.pad_token_id if llm_tokenizer.pad_token_id is not None else self.eos_id
        qformer_pad = qformer_tokenizer.pad_token_id
        self.qformer_pad_id = qformer_pad if qformer_pad is not None else 0
        self.image_height, self.image_width = _image_size(image_processor)
        self._warned: set[str] = set()

    @classmethod
    def from_pretrained(
        cls,
        qformer_tokenizer_dir: str | os.PathLike,
        llm_tokenizer_dir: str | os.PathLike,
        image_processor_dir: str | os.PathLike,
        **kwargs,
    ) -> Collator:
        """Load both tokenizers (``AutoTokenizer``) and the ``BlipImageProcessor`` from local dirs."""
        loaded = []
        for what, directory, loader in (
            ("Q-Former tokenizer", qformer_tokenizer_dir, AutoTokenizer.from_pretrained),
            ("LLM tokenizer", llm_tokenizer_dir, AutoTokenizer.from_pretrained),
            ("image processor", image_processor_dir, BlipImageProcessor.from_pretrained),
        ):
            if not os.path.isdir(directory):
                raise ConfigError(
                    f"{what} directory {directory} does not exist; point the config at a saved dir."
                )
            try:
                loaded.append(loader(os.fspath(directory)))
            except (OSError, ValueError) as err:
                raise ConfigError(f"cannot load the {what} from {directory}: {err}") from err
        return cls(*loaded, **kwargs)

    def with_mode(self, mode: str) -> Collator:
        """A copy of this collator (sharing tokenizers) in another mode: train, generate or score."""
        if mode not in COLLATE_MODES:
            raise ConfigError(f"collate: mode must be one of {COLLATE_MODES}, got {mode!r}")
        other = copy.copy(self)
        other.mode = mode
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

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)

    def _clean(self, text: str) -> str:
        # An image-token string inside record text would add image positions the model cannot fill.
        return text.replace(self.image_token, " ")

    def _tokens(self, text: str) -> list[int]:
        return self.llm_tokenizer(text, add_special_tokens=False)["input_ids"]

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

    def _encode(self, sample: Sample, target: str | None) -> _Row:
        """One row: ``[question image] [prefix] ([ref image] ref line sep)* prompt [suffix]`` (+ target)."""
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
        separator_ids = self._tokens(prompts.REFERENCE_SEPARATOR)
        fixed = len(question_block) + len(self.prefix_ids) + len(prompt_ids) + len(self.suffix_ids)
        fixed += sum(len(block) + len(separator_ids) for block in blocks)
        lines = self._fit_lines(sample, lines, floors, fixed)
        input_ids = question_block + self.prefix_ids
        for block, line in zip(blocks, lines, strict=True):
            input_ids += block + line + separator_ids
        input_ids += prompt_ids + self.suffix_ids
        labels = None
        if target is not None:
            target_ids = self._target_ids(prompt_text, prompt_ids, target)
            if self.is_encoder_decoder:
                labels = target_ids
            else:
                labels = [IGNORE_INDEX] * len(input_ids) + target_ids
                input_ids = input_ids + target_ids
        images = [sample.image] + [None if r.features is not None else r.image for r in references]
        return _Row(input_ids, labels, images, instructions, [None] + [r.features for r in references])

    def _rows(self, samples: Sequence[Sample]) -> tuple[list[_Row], dict[str, torch.Tensor]]:
        """Tokenized rows and the mode's extra tensors."""
        if self.mode == "generate":
            return [self._encode(sample, None) for sample in samples], {}
        if self.mode == "train":
            for sample in samples:
                if sample.target is None:
                    raise DataError(
                        f"sample {sample.example_id!r} has no target (no answers in its record); training needs "
                        "one. Use a split with answers, or mode='generate' for inference."
                    )
            extras = {
                "sample_weight": torch.tensor([s.weight for s in samples], dtype=torch.float32),
                "sample_kind": torch.tensor([SAMPLE_KINDS[s.kind] for s in samples], dtype=torch.long),
            }
            return [self._encode(sample, sample.target) for sample in samples], extras
        rows, example_index, choice_index = [], [], []
        for position, sample in enumerate(samples):
            if not sample.choices:
                raise DataError(f"sample {sample.example_id!r} has no choices to score (mode='score').")
            for number, choice in enumerate(sample.choices):
                rows.append(self._encode(sample, choice))
                example_index.append(position)
                choice_index.append(number)
        extras = {
            "example_index": torch.tensor(example_index, dtype=torch.long),
            "choice_index": torch.tensor(choice_index, dtype=torch.long),
        }
        return rows, extras

    def _pixels(self, rows: list[_Row], slots: int) -> tuple[torch.Tensor, torch.Tensor]:
        pixel_values = torch.zeros(len(rows), slots, 3, self.image_height, self.image_width)
        slot_mask = torch.zeros(len(rows), slots, dtype=torch.bool)
        places = [
            (r, s) for r, row in enumerate(rows) for s, image in enumerate(row.images) if image is not None
        ]
        if places:
            images = [rows[r].images[s] for r, s in places]
            processed = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
            for (r, s), pixels in zip(places, processed, strict=True):
                pixel_values[r, s] = pixels
                slot_mask[r, s] = True
        return pixel_values, slot_mask

    def _features(self, rows: list[_Row], slots: int) -> dict[str, torch.Tensor]:
        """``image_embeds`` / ``image_embeds_mask`` of the slots with precomputed features ({} when none)."""
        places = [(r, s) for r, row in enumerate(rows) for s, features in enumerate(row.features) if features is not None]
        if not places:
            return {}
        shapes = {tuple(rows[r].features[s].shape) for r, s in places}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise DataError(f"precomputed image features must all be (patches, width) of one shape, got {sorted(shapes)}")
        embeds = torch.zeros(len(rows), slots, *next(iter(shapes)), dtype=torch.float16)
        mask = torch.zeros(len(rows), slots, dtype=torch.bool)
        for r, s in places:
            embeds[r, s] = rows[r].features[s]
            mask[r, s] = True
        return {"image_embeds": embeds, "image_embeds_mask": mask}

    def _qformer(self, rows: list[_Row], slots: int) -> tuple[torch.Tensor, torch.Tensor]:
        texts = []
        for row in rows:
            # Padding slots repeat the question instruction; their slot mask is False.
            texts += row.instructions + [row.instructions[0]] * (slots - len(row.instructions))
        encoded = self.qformer_tokenizer(texts, truncation=True, max_length=self.qformer_max_length)[
            "input_ids"
        ]
        ids = _pad(encoded, self.qformer_pad_id, left=False)
        mask = _pad([[1] * len(e) for e in encoded], 0, left=False)
        return ids.reshape(len(rows), slots, -1), mask.reshape(len(rows), slots, -1)

    def __call__(self, samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
        """The batch dict of the model contract for ``samples`` in this collator's mode."""
        if not samples:
            raise ValueError("collate: empty list of samples")
        rows, extras = self._rows(samples)
        most = max(len(row.images) for row in rows)
        slots = 1 + self.max_references if self.pad_slots_to_max_references else most
        pixel_values, slot_mask = self._pixels(rows, slots)
        cached = self._features(rows, slots)
        if cached:
            slot_mask = slot_mask | cached["image_embeds_mask"]
        qformer_ids, qformer_mask = self._qformer(rows, slots)
        left = not self.is_encoder_decoder
        batch = {
            "pixel_values": pixel_values,
            "image_slot_mask": slot_mask,
            "qformer_input_ids": qformer_ids,
            "qformer_attention_mask": qformer_mask,
            "input_ids": _pad([row.input_ids for row in rows], self.pad_id, left),
            "attention_mask": _pad([[1] * len(row.input_ids) for row in rows], 0, left),
        }
        if rows[0].labels is not None:
            batch["labels"] = _pad([row.labels for row in rows], IGNORE_INDEX, left)
        batch.update(cached)
        batch.update(extras)
        return batch
