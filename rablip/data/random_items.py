"""Random knowledge-base items: ASKG negatives, noise snippets and noisy-retrieval evaluation."""

from __future__ import annotations

import numpy as np

from rablip.data.kb import KBStore

_MAX_DRAWS = 20


class RandomKBItems:
    """Draws ids of random KB items, never one of ``exclude`` nor of an entity (title) in ``exclude_titles``.
    With ``images_only`` only items with an image: RORA-VLM's random snippets in two_stage mode, an
    other entity's image with its entity name and description (the item's title and text)."""

    def __init__(self, kb: KBStore, images_only: bool = False) -> None:
        self.kb = kb
        self.images_only = images_only

    def __call__(self, rng: np.random.Generator, n: int, exclude: set[str], exclude_titles: set[str]) -> list[str]:
        picked: list[str] = []
        for _ in range(_MAX_DRAWS):
            if len(picked) >= n:
                break
            rows = rng.integers(len(self.kb), size=2 * n + 4)
            for item in self.kb.get_many(self.kb.ids_at(rows)):
                if self.images_only and item.modality == "text":
                    continue
                if item.id not in exclude and item.id not in picked and item.title not in exclude_titles:
                    picked.append(item.id)
                    if len(picked) == n:
                        break
        return picked
