"""Supervised warm-up of a freshly built vision encoder: classify what each image shows.

Used when the synthetic demo builds its tiny generator, so that its from-scratch vision encoder tells
shapes, colours, patterns and sizes apart before it is frozen (see :mod:`rablip.synthetic.viewing`).
One linear head per attribute reads the mean of the encoder's tokens; the heads are thrown away.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from PIL import Image

from rablip.synthetic.warmup import run_warm_up


class AttributeHeads(torch.nn.Module):
    """A vision encoder with one linear classifier per attribute on its mean-pooled tokens.

    With ``scenes`` the heads come in three blocks (:func:`rablip.synthetic.viewing.scene_label`): the first
    reads the mean of every token, the second that of the tokens of the image's left half, the third of its
    right half (tokens on a square grid, row by row), so that a token describes the creature it covers."""

    def __init__(self, vision_model: torch.nn.Module, width: int, class_counts: Sequence[int], scenes: bool = False):
        super().__init__()
        self.vision_model = vision_model
        self.scenes = scenes
        self.heads = torch.nn.ModuleList(torch.nn.Linear(width, count) for count in class_counts)

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        tokens = self.vision_model(pixel_values=pixel_values).last_hidden_state
        if not self.scenes:
            pooled = tokens.mean(dim=1)
            return [head(pooled) for head in self.heads]
        side = math.isqrt(tokens.shape[1])
        if side * side != tokens.shape[1]:
            raise ValueError(f"scene warm-up needs tokens on a square grid, got {tokens.shape[1]}")
        grid = tokens.reshape(tokens.shape[0], side, side, -1)
        half = max(1, side // 2)
        pooled = [tokens.mean(dim=1), grid[:, :, :half].mean(dim=(1, 2)), grid[:, :, side - half:].mean(dim=(1, 2))]
        block = len(self.heads) // 3
        return [head(pooled[i // block]) for i, head in enumerate(self.heads)]


def attribute_loss(logits: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Sum over attributes of the cross-entropy; ``labels`` is (N, attributes), -100 where a label is absent
    (a head with no label in the batch adds nothing)."""
    return sum(torch.nn.functional.cross_entropy(head, labels[:, i], ignore_index=-100)
               for i, head in enumerate(logits) if bool((labels[:, i] != -100).any()))


def warm_up_vision_model(vision_model: torch.nn.Module, image_processor, width: int, class_counts: Sequence[int],
                         batches: Iterator[tuple[list[Image.Image], list[list[int]]]], steps: int,
                         lr: float = 2e-3, warmup_steps: int = 50, seed: int = 0,
                         show_progress: bool = True, scenes: bool = False) -> list[float]:
    """Train ``vision_model`` in place for ``steps`` steps on labelled image batches; returns the losses.

    ``width`` is the width of the encoder's tokens, ``class_counts`` the number of values of each
    attribute (the label columns); ``scenes``: the labels come in three blocks (:class:`AttributeHeads`)."""
    torch.manual_seed(seed)
    model = AttributeHeads(vision_model, width, class_counts, scenes)

    def step_loss(_: int) -> torch.Tensor:
        images, labels = next(batches)
        pixel_values = image_processor(images=images, return_tensors="pt")["pixel_values"]
        return attribute_loss(model(pixel_values), torch.tensor(labels))

    return run_warm_up(model, step_loss, steps, lr=lr, warmup_steps=warmup_steps,
                       desc="vision viewing warm-up", show_progress=show_progress)
