"""Modality groups: one embedding shard set and one index per group, searched alone or merged.

Retrieval modes need to search subsets of the knowledge base by modality (``image``: image items
only; ``two_stage``: image items, then text items only). Rather than over-fetching from one index
and filtering (which misses items when the wanted modality is rare, and cannot be exact with a
compressed index), the knowledge base is partitioned into two groups that are encoded and indexed
separately:

- ``image``: items with an image (modality ``image`` or ``image+text``);
- ``text``: text-only items (modality ``text``).

A search over the whole knowledge base (``ra_blip`` mode) searches both group indexes with the same
query and merges the two top-k lists by score: the embeddings live in one space and the metric is
inner product, so the merge of two exact top-k lists is the exact top-k of the union. Nothing is
stored twice, and exact re-ranking works per group (each index records its own embeddings).

Layout (``retrieval.index_dir``)::

    image/                 index directory of the image group (rablip.retrieval.index)
    text/                  index directory of the text group (absent when the KB has no text items)
    retrieval_index.json   written last: encoder fingerprint, item count and the sha256 of each
                           group's manifest.json; its own sha256 keys retrieval caches
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from rablip.errors import RablipError
from rablip.retrieval.index import Index
from rablip.retrieval.index_manifest import MANIFEST_NAME, sha256_of_file
from rablip.utils.io import read_json

GROUPS = ("image", "text")
GROUP_MODALITIES = {"image": ("image", "image+text"), "text": ("text",)}
LAYOUT_NAME = "retrieval_index.json"
LAYOUT_FORMAT = "rablip-retrieval-indexes"
LAYOUT_VERSION = 1

Hits = list[list[tuple[str, float]]]


def group_of(modality: str) -> str:
    """The group (``image`` or ``text``) of an item modality."""
    return "text" if modality == "text" else "image"


def layout_record(index_dir: str | os.PathLike, encoder_fingerprint: str, counts: dict[str, int],
                  embeddings_dir: str | os.PathLike, request: dict[str, Any] | None = None,
                  shards_sha256: dict[str, str] | None = None) -> dict[str, Any]:
    """The ``retrieval_index.json`` content for the group indexes present under ``index_dir``.

    ``request`` (the index type and parameters asked for) and ``shards_sha256`` (of each group's
    ``shards.json``) record what the indexes were built from.
    """
    index_dir = Path(index_dir)
    shards_sha256 = shards_sha256 or {}
    groups: dict[str, Any] = {}
    for group in GROUPS:
        manifest = index_dir / group / MANIFEST_NAME
        groups[group] = {"count": counts.get(group, 0),
                         "manifest_sha256": sha256_of_file(manifest) if counts.get(group) else None,
                         "shards_sha256": shards_sha256.get(group)}
    return {"format": LAYOUT_FORMAT, "version": LAYOUT_VERSION, "encoder_fingerprint": encoder_fingerprint,
            "count": sum(counts.values()), "embeddings_dir": str(Path(embeddings_dir).absolute()),
            "request": request, "groups": groups}


def read_layout(index_dir: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``retrieval_index.json``; a missing or foreign file says how to build one."""
    path = Path(index_dir) / LAYOUT_NAME
    if not path.is_file():
        raise RablipError(f"{index_dir} holds no {LAYOUT_NAME}: the knowledge base was not encoded into it (or the "
                          "encoding did not finish). Run python scripts/encode_kb.py --config <config>.")
    layout = read_json(path, "retrieval index layout")
    if not isinstance(layout, dict) or layout.get("format") != LAYOUT_FORMAT or layout.get("version") != LAYOUT_VERSION:
        raise RablipError(f"{path} is not a rablip retrieval index layout (format {LAYOUT_FORMAT!r} "
                          f"v{LAYOUT_VERSION}); re-run scripts/encode_kb.py.")
    return layout


def layout_checksum(index_dir: str | os.PathLike) -> str:
    """sha256 of ``retrieval_index.json`` (which holds the sha256 of every group manifest)."""
    read_layout(index_dir)
    return hashlib.sha256((Path(index_dir) / LAYOUT_NAME).read_bytes()).hexdigest()


class GroupIndexes:
    """The loaded group indexes of one ``retrieval.index_dir``."""

    def __init__(self, directory: Path, layout: dict[str, Any], indexes: dict[str, Index]) -> None:
        self.directory = directory
        self.layout = layout
        self.indexes = indexes
        """Group name -> loaded index (groups without items are absent)."""

    @classmethod
    def load(cls, index_dir: str | os.PathLike, *, expected_fingerprint: str | None = None,
             allow_foreign: bool = False, use_gpu: bool = True) -> GroupIndexes:
        """Load every non-empty group index, each verified against its manifest and the fingerprint."""
        directory = Path(index_dir)
        layout = read_layout(directory)
        indexes = {}
        for group in GROUPS:
            entry = layout["groups"].get(group) or {}
            if not entry.get("count"):
                continue
            manifest = directory / group / MANIFEST_NAME
            if not allow_foreign and manifest.is_file() and sha256_of_file(manifest) != entry.get("manifest_sha256"):
                raise RablipError(f"{manifest} changed after {directory / LAYOUT_NAME} was written (sha256 differs); "
                                  "re-run scripts/encode_kb.py to rebuild the indexes.")
            indexes[group] = Index.load(directory / group, expected_fingerprint=expected_fingerprint,
                                        allow_foreign=allow_foreign, use_gpu=use_gpu)
        return cls(directory, layout, indexes)

    def require(self, group: str, why: str) -> Index:
        """The index of ``group``; an error naming ``why`` (the mode) when the KB has no such items."""
        if group not in self.indexes:
            raise RablipError(f"{why} searches the {group} items ({', '.join(GROUP_MODALITIES[group])}) but the "
                              f"knowledge base indexed in {self.directory} has none. Choose another retrieval.mode.")
        return self.indexes[group]

    def search(self, groups: tuple[str, ...], queries: np.ndarray, k: int, **search_kwargs: Any) -> Hits:
        """Top-``k`` (item id, score) per query over the union of ``groups``, best first.

        Each group index is searched with the same queries; the per-group lists are merged by score
        (stable: on equal scores the earlier group comes first). ``search_kwargs`` go to
        :meth:`Index.search` (nprobe, rerank_exact, rerank_factor).
        """
        present = [group for group in groups if group in self.indexes]
        if not present:
            raise RablipError(f"no index of the groups {groups} in {self.directory}; re-run scripts/encode_kb.py.")
        merged: Hits = [[] for _ in range(queries.shape[0])]
        for group in present:
            index = self.indexes[group]
            scores, rows = index.search(queries, min(k, index.count), **search_kwargs)
            for hits, row_ids, row_scores in zip(merged, index.ids_for(rows), scores.tolist(), strict=True):
                hits.extend((item_id, float(score)) for item_id, score in zip(row_ids, row_scores) if item_id)
        if len(present) > 1:
            merged = [sorted(hits, key=lambda hit: -hit[1]) for hits in merged]
        return [hits[:k] for hits in merged]

    def close(self) -> None:
        for index in self.indexes.values():
            index.close()
