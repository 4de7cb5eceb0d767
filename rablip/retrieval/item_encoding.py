"""Item batches whose identical images are decoded, preprocessed and vision-encoded once.

Knowledge bases repeat images (WIT lists one image under several sections, WebQA reuses images
across questions' facts, a re-ranker sees the same candidate for many queries). An item embedding
depends on its image only through the frozen vision encoder's patch features and the uninstructed
Q-Former, so items with the same image can share one vision forward: within a batch, images are
keyed by the sha256 of their encoded bytes, or by their resolved path for files, decoded once, and
their patch features are gathered back to every row that uses them (the encoder's
``item_sequence(batch, image_embeds=...)``). Duplicates are not tracked across batches: that would
mean keeping patch features (megabytes per image for ViT-g) alive for the whole store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from rablip.data.records import KBItem
from rablip.models import prompts
from rablip.models.retrieval_processing import RetrievalBatcher

ImageRef = Path | bytes | None
LoadImage = Callable[[object, str | None], Image.Image | None]


def image_key(ref: Path | bytes | str) -> str:
    """Identity of an image reference: sha256 of encoded bytes, or the resolved path of a file."""
    if isinstance(ref, bytes):
        return "sha256:" + hashlib.sha256(ref).hexdigest()
    return "path:" + str(Path(ref).resolve())


@dataclass
class SharedImageBatch:
    """An item batch plus the unique images it uses."""

    batch: dict[str, torch.Tensor]
    """``pixel_values`` (N,3,H,W), ``image_mask``, ``qformer_input_ids``, ``qformer_attention_mask``."""
    unique_pixels: torch.Tensor
    """(U,3,H,W) one row per distinct image."""
    image_rows: torch.Tensor
    """(number of rows with an image,) index into ``unique_pixels`` of each image row, in row order."""
    kept: list[int]
    """Positions of the given items in the batch (items whose image failed to load are left out)."""


def shared_image_batch(batcher: RetrievalBatcher, items: Sequence[KBItem], refs: Sequence[ImageRef],
                       load_image: LoadImage) -> SharedImageBatch:
    """Tokenize the items' captions and load each distinct image once.

    ``refs[i]`` is item i's resolved image (a path or bytes; None for text items). An image that
    ``load_image`` returns None for (the ``skip`` policy) drops its item from the batch.
    """
    unique: dict[str, int] = {}
    unique_images: list[Image.Image] = []
    failed: set[str] = set()
    kept, row_keys = [], []
    for position, (item, ref) in enumerate(zip(items, refs, strict=True)):
        key = None if ref is None else image_key(ref)
        if key is not None and key not in unique and key not in failed:
            image = load_image(ref, item.id)
            if image is None:
                failed.add(key)
            else:
                unique[key] = len(unique_images)
                unique_images.append(image)
        if key in failed:
            continue
        kept.append(position)
        row_keys.append(key)
    kept_items = [items[i] for i in kept]
    if kept_items:
        ids, mask = batcher.texts([prompts.item_caption(item.title, item.text) for item in kept_items])
    else:
        ids, mask = torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 1, dtype=torch.long)
    unique_pixels = batcher.pixels(unique_images)[0] if unique_images else torch.zeros(0, 3, batcher.height,
                                                                                           batcher.width)
    image_mask = torch.tensor([key is not None for key in row_keys], dtype=torch.bool)
    image_rows = torch.tensor([unique[key] for key in row_keys if key is not None], dtype=torch.long)
    pixel_values = torch.zeros(len(kept), 3, batcher.height, batcher.width)
    if image_rows.numel():
        pixel_values[image_mask] = unique_pixels[image_rows]
    batch = {"pixel_values": pixel_values, "image_mask": image_mask,
             "qformer_input_ids": ids, "qformer_attention_mask": mask}
    return SharedImageBatch(batch, unique_pixels, image_rows, kept)


def item_sequence_shared(encoder: torch.nn.Module, shared: SharedImageBatch, device: torch.device):
    """The encoder's fusion input for the batch, running the vision encoder once per distinct image."""
    batch = {name: value.to(device) for name, value in shared.batch.items()}
    image_embeds = None
    if shared.image_rows.numel():
        unique_features = encoder.image_embeds(shared.unique_pixels.to(device))
        image_embeds = unique_features[shared.image_rows.to(device)]
    return encoder.item_sequence(batch, image_embeds=image_embeds)


def embed_items_shared(encoder: torch.nn.Module, shared: SharedImageBatch, device: torch.device) -> torch.Tensor:
    """(N kept, D) unit-norm item embeddings (float32, on ``device``)."""
    return encoder.fusion.embed(item_sequence_shared(encoder, shared, device)).float()
