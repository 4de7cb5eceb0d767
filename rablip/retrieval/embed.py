"""Embed knowledge items and questions with the retrieval encoder, in batches."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from rablip.data.records import KBItem, QAExample
from rablip.models.retrieval_processing import RetrievalBatcher

LoadImage = Callable[[object, str | None], Image.Image | None]


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


@torch.no_grad()
def embed_items(encoder: torch.nn.Module, batcher: RetrievalBatcher, items: Sequence[KBItem],
                load_image: LoadImage) -> np.ndarray:
    """(N, D) float32 unit-norm embeddings of one batch of items (text items need no image)."""
    device = _device_of(encoder)
    images = [load_image(item.image, item.id) if item.modality != "text" else None for item in items]
    batch = {k: v.to(device) for k, v in batcher.items(items, images).items()}
    return encoder.encode_items(batch).float().cpu().numpy()


@torch.no_grad()
def embed_questions(encoder: torch.nn.Module, batcher: RetrievalBatcher, examples: Sequence[QAExample],
                    load_image: LoadImage, batch_size: int = 64) -> np.ndarray:
    """(Q, D) float32 unit-norm query embeddings (question image + question)."""
    device = _device_of(encoder)
    out = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        images = [load_image(ex.image, ex.id) if ex.image is not None else None for ex in chunk]
        batch = {k: v.to(device) for k, v in batcher.queries(images, [ex.question for ex in chunk]).items()}
        out.append(encoder.encode_queries(batch).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def embed_item_batches(encoder: torch.nn.Module, batcher: RetrievalBatcher, batches: Iterable[Sequence[KBItem]],
                       load_image: LoadImage) -> tuple[list[str], np.ndarray]:
    """All items of ``batches`` (e.g. ``KBStore.iter_batches``) embedded in memory: (ids, (N, D))."""
    ids: list[str] = []
    parts = []
    for items in batches:
        ids.extend(item.id for item in items)
        parts.append(embed_items(encoder, batcher, items, load_image))
    return ids, np.concatenate(parts)
