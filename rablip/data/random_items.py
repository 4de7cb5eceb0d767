"""Random knowledge-base items: ASKG negatives, noise snippets and noisy-retrieval evaluation."""

from __future__ import annotations

import numpy as np

from rablip.data.kb import KBStore

_MAX_DRAWS = 20


class RandomKBItems:
    """Draws ids of random KB items, never one of ``exclude`` nor of an entity (title) in ``exclude_titles``."""

    def __init__(self, kb: KBStore) -> None:
        self.kb = kb

    def __call__(self, rng: np.random.Generator, n: int, exclude: set[str], exclude_titles: set[str]) -> list[str]:
        picked: list[str] = []
        for _ in range(_MAX_DRAWS):
            if len(picked) >= n:
                break
            rows = rng.integers(len(self.kb), size=2 * n + 4)
            for item in self.kb.get_many(self.kb.ids_at(rows)):
                if item.id not in exclude and item.id not in picked and item.title not in exclude_titles:
                    picked.append(item.id)
                    if len(picked) == n:
                        break
        return picked
