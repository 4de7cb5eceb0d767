"""The fusion encoder's processor: tensor batches of knowledge items and (image, question) queries.

The layout is what :class:`rablip.models.fusion.MultimodalRetrievalEncoder` reads: ``pixel_values``
(N,3,H,W), ``image_mask`` (N,) and the Q-Former tokenizer's ``qformer_input_ids`` /
``qformer_attention_mask`` (N,T) of the item text or the question (an all-zero mask row: no text).
The tokenizer and image processor are those of the generator's base checkpoint (the ones
pre-training used), found by :func:`rablip.models.processor_files.processor_dir`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from PIL import Image
from transformers import BlipImageProcessor

from rablip.data.records import KBItem
from rablip.models import prompts
from rablip.models.processor_files import (
    QFORMER_TOKENIZER_DIR,
    image_size,
    load_image_processor,
    load_tokenizer,
    processor_dir,
)


class RetrievalBatcher:
    """Tokenizes texts with the Q-Former tokenizer and preprocesses images for the encoder."""

    def __init__(self, qformer_tokenizer, image_processor: BlipImageProcessor, max_length: int = 64) -> None:
        """``max_length``: texts are cut to this many Q-Former tokens. ConfigError when the image
        processor's size has no height and width."""
        self.tokenizer = qformer_tokenizer
        self.image_processor = image_processor
        self.max_length = max_length
        self.height, self.width = image_size(image_processor)

    @classmethod
    def from_pretrained(cls, qformer_tokenizer_dir: str | os.PathLike, image_processor_dir: str | os.PathLike,
                        max_length: int = 64) -> RetrievalBatcher:
        """Load the Q-Former tokenizer and the ``BlipImageProcessor`` from local dirs."""
        return cls(load_tokenizer(qformer_tokenizer_dir, "Q-Former tokenizer"),
                   load_image_processor(image_processor_dir), max_length)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, max_length: int = 64) -> RetrievalBatcher:
        """The processors of generator checkpoint ``checkpoint`` (or of its base checkpoint, for a
        trainable-only one); ConfigError when it has none."""
        directory = processor_dir(checkpoint)
        return cls.from_pretrained(directory / QFORMER_TOKENIZER_DIR, directory, max_length)

    def pixels(self, images: Sequence[Image.Image | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """``pixel_values`` (N,3,H,W), zeros where the image is None, and the (N,) image mask."""
        values = torch.zeros(len(images), 3, self.height, self.width)
        real = [i for i, image in enumerate(images) if image is not None]
        if real:
            processed = self.image_processor([images[i] for i in real], return_tensors="pt")["pixel_values"]
            values[real] = processed
        mask = torch.zeros(len(images), dtype=torch.bool)
        mask[real] = True
        return values, mask

    def texts(self, texts: Sequence[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and mask (N,T); a None or empty text gets an all-zero mask row."""
        encoded = self.tokenizer([t or "" for t in texts], padding="longest", truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
        mask = encoded["attention_mask"].clone()
        for row, text in enumerate(texts):
            if not text:
                mask[row] = 0
        return encoded["input_ids"], mask

    def items(self, items: Sequence[KBItem], images: Sequence[Image.Image | None]) -> dict[str, torch.Tensor]:
        """An item batch: each item's image (None for text items) and its caption/text with title."""
        pixel_values, image_mask = self.pixels(images)
        ids, mask = self.texts([prompts.item_caption(item.title, item.text) for item in items])
        return {"pixel_values": pixel_values, "image_mask": image_mask,
                "qformer_input_ids": ids, "qformer_attention_mask": mask}

    def queries(self, images: Sequence[Image.Image | None], questions: Sequence[str]) -> dict[str, torch.Tensor]:
        """A query batch: the question image and the question (also the Q-Former instruction)."""
        pixel_values, image_mask = self.pixels(images)
        ids, mask = self.texts(list(questions))
        return {"pixel_values": pixel_values, "image_mask": image_mask,
                "qformer_input_ids": ids, "qformer_attention_mask": mask}
