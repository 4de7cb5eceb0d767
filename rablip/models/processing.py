"""The generator's processor: samples (:mod:`rablip.data.samples`) to the tensor batch the model
consumes (the batch contract), as transformers' ``processing_instructblip`` sits beside its model.

:class:`Collator` tokenizes and packs each sample's prompt (:mod:`rablip.models.prompt_packing`),
preprocesses its images and pads the rows into the batch dict:

* ``pixel_values`` (B, S, 3, H, W), zeros in empty slots; ``image_slot_mask`` (B, S). Slot 0 is the
  question image, slot i the i-th reference's image (text-only references and padding: False).
* ``qformer_input_ids`` / ``qformer_attention_mask`` (B, S, Lq), right-padded: the question, plus
  the item's caption in a slot that holds an item image. Absent for a generator without a Q-Former
  (the LLaVA family: the collator is built without a Q-Former tokenizer).
* ``input_ids`` / ``attention_mask`` (B, L): ``[question image tokens] [prefix specials]
  [ref 1 image tokens] "Reference 1: ..." ... [prompt ending with the answer prefix]``, with
  ``num_query_tokens`` image tokens per real image slot (``multi_image="concat"``: one block of them
  per row with any image, at its start; a LLaVA generator refining its visual tokens, ``model.refine``:
  its ``refine_top_m``, the config's ``num_query_tokens``). Decoder-only models: the target and EOS
  follow the prompt, rows are left-padded, ``labels`` (B, L) is -100 except on target + EOS.
  Encoder-decoder models: the tokenizer's suffix (``</s>``) ends the input, rows are right-padded,
  ``labels`` (B, T) is target + EOS with -100 padding.
* ``question_ids`` / ``question_mask`` (B, Lt), right-padded: each row's question in LLM token ids
  without special tokens, only with ``emit_question_ids`` (a LLaVA generator refining its visual
  tokens scores them against the question's text embedding: :mod:`rablip.models.llava_refine`).
* ``sample_weight`` (float) and ``sample_kind`` (long: 0 QA, 1 ASKG selection) in ``train`` mode.
* ``image_embeds`` (B, S, P, D) float16 and ``image_embeds_mask`` (B, S), only when some reference
  carries precomputed vision features (the frozen-feature cache, :mod:`rablip.training.feature_cache`)
  instead of a decoded image: such a slot is real, its pixels stay zero and the model reads its
  features; elsewhere ``image_embeds`` is zero and the mask False.

Modes: ``train`` (labels), ``generate`` (no labels; decoder-only rows end with the answer prefix so
``generate`` continues there) and ``score`` (one row per multiple-choice option with that option as
the target, plus ``example_index`` and ``choice_index`` to regroup the rows for likelihood ranking).

Truncation (see :mod:`rablip.models.prompt_packing`) never cuts an image token or the prompt; the
Q-Former instruction is cut to ``qformer_max_length`` tokens (the caption goes after the question,
so it is cut first).

``prompt_template="release"`` (config ``prompt.template``): the text of RA-BLIP's release
(:func:`rablip.models.prompts.release_prompt`) is every slot's Q-Former instruction and the LLM
prompt after all the image tokens; both tokenizations are cut on the LEFT (specials kept), the
Q-Former's to ``qformer_max_length`` tokens and the LLM's to ``max_input_length`` text tokens, so the
question at the end survives. ASKG selection samples get the release's selection text, target and
Q-Former instruction (:mod:`rablip.models.prompt_packing`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence

import torch

from rablip.config.schema import Config
from rablip.data.samples import SAMPLE_KINDS, Sample
from rablip.errors import ConfigError, DataError
from rablip.models.processor_files import (
    QFORMER_TOKENIZER_DIR,
    image_size,
    load_image_processor,
    load_tokenizer,
    processor_dir,
)
from rablip.models.prompt_packing import IGNORE_INDEX, PackedRow, PromptPacker, left_truncated

COLLATE_MODES = ("train", "generate", "score")

__all__ = ["COLLATE_MODES", "IGNORE_INDEX", "Collator", "build_collator", "left_truncated"]


def _pad(rows: list[list[int]], value: int, left: bool) -> torch.Tensor:
    length = max((len(row) for row in rows), default=0)
    padded = [
        [value] * (length - len(row)) + row if left else row + [value] * (length - len(row)) for row in rows
    ]
    return torch.tensor(padded, dtype=torch.long).reshape(len(rows), length)


class Collator:
    """Turns samples into the model batch (see the module docstring for every tensor)."""

    def __init__(
        self,
        qformer_tokenizer,
        llm_tokenizer,
        image_processor,
        *,
        images_after_prefix: bool = False,
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
        prompt_template: str = "rablip",
        multi_image: str = "per_slot",
        emit_question_ids: bool = False,
    ) -> None:
        """Settings are plain values (the config's model/data keys); those of the LLM row are
        :class:`PromptPacker`'s. With ``pad_slots_to_max_references`` every batch has
        S = 1 + max_references slots (static shapes); otherwise S = 1 + the most references of any
        row in the batch. ``qformer_tokenizer`` None: no Q-Former tensors (LLaVA).
        ``images_after_prefix``: the prefix specials (``<s>``) open the row, before the question
        image's tokens (LLaVA's layout; InstructBLIP's query outputs come before them).
        ``emit_question_ids``: add ``question_ids`` / ``question_mask`` (module docstring).
        ConfigError on a setting out of range or an unusable tokenizer."""
        if not isinstance(qformer_max_length, int) or qformer_max_length < 2:
            raise ConfigError(f"collate: qformer_max_length must be an integer >= 2, got {qformer_max_length!r}")
        if mode not in COLLATE_MODES:
            raise ConfigError(f"collate: mode must be one of {COLLATE_MODES}, got {mode!r}")
        self.packer = PromptPacker(
            llm_tokenizer, num_query_tokens=num_query_tokens, is_encoder_decoder=is_encoder_decoder,
            max_references=max_references, max_input_length=max_input_length,
            max_target_length=max_target_length, image_token=image_token, answer_from_choices=answer_from_choices,
            prompt_template=prompt_template, multi_image=multi_image, images_after_prefix=images_after_prefix,
        )
        self.qformer_tokenizer = qformer_tokenizer
        self.image_processor = image_processor
        self.qformer_max_length = qformer_max_length
        self.pad_slots_to_max_references = pad_slots_to_max_references
        self.emit_question_ids = emit_question_ids
        self.mode = mode
        qformer_pad = qformer_tokenizer.pad_token_id if qformer_tokenizer is not None else None
        self.qformer_pad_id = qformer_pad if qformer_pad is not None else 0
        self.image_height, self.image_width = image_size(image_processor)

    # The LLM side's settings, as the packer holds them.
    llm_tokenizer = property(lambda self: self.packer.llm_tokenizer)
    num_query_tokens = property(lambda self: self.packer.num_query_tokens)
    is_encoder_decoder = property(lambda self: self.packer.is_encoder_decoder)
    max_references = property(lambda self: self.packer.max_references)
    max_input_length = property(lambda self: self.packer.max_input_length)
    max_target_length = property(lambda self: self.packer.max_target_length)
    image_token_id = property(lambda self: self.packer.image_token_id)
    prefix_ids = property(lambda self: self.packer.prefix_ids)
    suffix_ids = property(lambda self: self.packer.suffix_ids)
    pad_id = property(lambda self: self.packer.pad_id)

    @classmethod
    def from_pretrained(
        cls,
        qformer_tokenizer_dir: str | os.PathLike,
        llm_tokenizer_dir: str | os.PathLike,
        image_processor_dir: str | os.PathLike,
        **kwargs,
    ) -> Collator:
        """Load both tokenizers (``AutoTokenizer``; ``qformer_tokenizer_dir`` None: none) and the image
        processor (:func:`~rablip.models.processor_files.load_image_processor`) from local dirs."""
        return cls(
            load_tokenizer(qformer_tokenizer_dir, "Q-Former tokenizer") if qformer_tokenizer_dir else None,
            load_tokenizer(llm_tokenizer_dir, "LLM tokenizer"),
            load_image_processor(image_processor_dir),
            **kwargs,
        )

    def with_mode(self, mode: str) -> Collator:
        """A copy of this collator (sharing tokenizers) in another mode: train, generate or score."""
        if mode not in COLLATE_MODES:
            raise ConfigError(f"collate: mode must be one of {COLLATE_MODES}, got {mode!r}")
        other = copy.copy(self)
        other.mode = mode
        other.packer = self.packer.fresh()
        return other

    def _rows(self, samples: Sequence[Sample]) -> tuple[list[PackedRow], dict[str, torch.Tensor]]:
        """Packed rows and the mode's extra tensors."""
        pack = self.packer.pack
        if self.mode == "generate":
            return [pack(sample, None) for sample in samples], {}
        if self.mode == "train":
            targets = [self.packer.training_target(sample) for sample in samples]
            for sample, target in zip(samples, targets, strict=True):
                if target is None:
                    raise DataError(
                        f"sample {sample.example_id!r} has no target (no answers in its record); training needs "
                        "one. Use a split with answers, or mode='generate' for inference."
                    )
            extras = {
                "sample_weight": torch.tensor([s.weight for s in samples], dtype=torch.float32),
                "sample_kind": torch.tensor([SAMPLE_KINDS[s.kind] for s in samples], dtype=torch.long),
            }
            return [pack(sample, target) for sample, target in zip(samples, targets, strict=True)], extras
        rows, example_index, choice_index = [], [], []
        for position, sample in enumerate(samples):
            if not sample.choices:
                raise DataError(f"sample {sample.example_id!r} has no choices to score (mode='score').")
            for number, choice in enumerate(sample.choices):
                rows.append(pack(sample, choice))
                example_index.append(position)
                choice_index.append(number)
        extras = {
            "example_index": torch.tensor(example_index, dtype=torch.long),
            "choice_index": torch.tensor(choice_index, dtype=torch.long),
        }
        return rows, extras

    def _pixels(self, rows: list[PackedRow], slots: int) -> tuple[torch.Tensor, torch.Tensor]:
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

    def _features(self, rows: list[PackedRow], slots: int) -> dict[str, torch.Tensor]:
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

    def _qformer(self, rows: list[PackedRow], slots: int) -> tuple[torch.Tensor, torch.Tensor]:
        texts = []
        for row in rows:
            # Padding slots repeat the question instruction; their slot mask is False.
            texts += row.instructions + [row.instructions[0]] * (slots - len(row.instructions))
        if self.packer.prompt_template == "release":
            encoded = left_truncated(self.qformer_tokenizer, texts, self.qformer_max_length)
        else:
            encoded = self.qformer_tokenizer(texts, truncation=True, max_length=self.qformer_max_length)["input_ids"]
        ids = _pad(encoded, self.qformer_pad_id, left=False)
        mask = _pad([[1] * len(e) for e in encoded], 0, left=False)
        return ids.reshape(len(rows), slots, -1), mask.reshape(len(rows), slots, -1)

    def _questions(self, samples: Sequence[Sample], extras: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``question_ids`` / ``question_mask`` of the rows (a score-mode row: its sample's question), cut to
        ``max_input_length`` tokens."""
        owners = extras["example_index"].tolist() if "example_index" in extras else range(len(samples))
        texts = [samples[index].question.replace(self.packer.image_token, " ") for index in owners]
        encoded = self.llm_tokenizer(texts, add_special_tokens=False, truncation=True,
                                     max_length=self.max_input_length)["input_ids"]
        return _pad(encoded, self.pad_id, left=False), _pad([[1] * len(e) for e in encoded], 0, left=False)

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
        left = not self.is_encoder_decoder
        batch = {"pixel_values": pixel_values, "image_slot_mask": slot_mask}
        if self.qformer_tokenizer is not None:
            batch["qformer_input_ids"], batch["qformer_attention_mask"] = self._qformer(rows, slots)
        batch["input_ids"] = _pad([row.input_ids for row in rows], self.pad_id, left)
        batch["attention_mask"] = _pad([[1] * len(row.input_ids) for row in rows], 0, left)
        if rows[0].labels is not None:
            batch["labels"] = _pad([row.labels for row in rows], IGNORE_INDEX, left)
        if self.emit_question_ids:
            batch["question_ids"], batch["question_mask"] = self._questions(samples, extras)
        batch.update(cached)
        batch.update(extras)
        return batch


def build_collator(cfg: Config, model, max_references: int, mode: str = "train") -> Collator:
    """The processor of generator ``model`` (a loaded :class:`~rablip.models.rablip.RABlipForConditionalGeneration`)
    for samples of up to ``max_references`` references, in ``mode``: its tokenizers and image
    processor from the model's base checkpoint, its lengths from ``data.*``, its prompt template from
    ``prompt.template``. A generator without a Q-Former (the LLaVA family, ``qformer`` absent) gets no
    Q-Former tokenizer, and its rows open with the prefix specials; one refining its visual tokens
    (``refine_top_m`` set) gets ``num_query_tokens`` = top_m image tokens per image and the question's
    ids (``emit_question_ids``). ConfigError when the
    model has fewer reference slots (``max_image_slots`` - 1) than ``max_references``."""
    directory = processor_dir(model.config.base_checkpoint or "")
    if 1 + max_references > model.config.max_image_slots:
        raise ConfigError(f"retrieval.k plus noise.random_snippets needs {max_references} references, but the model "
                          f"has {model.config.max_image_slots - 1} reference slots (max_image_slots).")
    has_qformer = hasattr(model, "qformer")
    return Collator.from_pretrained(
        directory / QFORMER_TOKENIZER_DIR if has_qformer else None, directory, directory,
        images_after_prefix=not has_qformer, num_query_tokens=model.config.num_query_tokens,
        is_encoder_decoder=not model.is_decoder_only, max_references=max_references,
        max_input_length=cfg.data.max_input_length, max_target_length=cfg.data.max_target_length,
        qformer_max_length=cfg.data.qformer_max_length, mode=mode, prompt_template=cfg.prompt.template,
        multi_image=model.config.multi_image,
        emit_question_ids=not has_qformer and getattr(model.config, "refine_top_m", None) is not None)
