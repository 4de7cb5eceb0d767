"""Retrieval results for a whole split, written once and read back (static retrieval).

One JSON object per line: ``{"id": question id, "items": [{"id": item id, "score": float}, ...]}``
with items best first. Training from such a file is what ``retrieval.source: static`` means; a live
index's results are cached in the same format. A knowledge snippet (``retrieval.mode: two_stage``,
:mod:`rablip.retrieval.snippets`) is written as its anchor item with the ids of its attached text
items, ``{"id": anchor id, "score": float, "texts": [text item id, ...]}``;
:func:`read_retrieval_texts` reads them back and :func:`read_retrieval` ignores them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from rablip.errors import DataError
from rablip.utils.io import atomic_write_text, iter_jsonl_with_lines

Retrieved = list[tuple[str, float]]
Texts = dict[str, dict[str, list[str]]]
"""Question id -> snippet anchor id -> attached text item ids (two_stage results only)."""


def _entry(item_id: str, score: float, texts: Mapping[str, Sequence[str]] | None) -> dict:
    entry = {"id": item_id, "score": float(score)}
    if texts is not None:
        entry["texts"] = list(texts.get(item_id, ()))
    return entry


def write_retrieval(path: str | Path, results: Iterable[tuple[str, Sequence[tuple[str, float]]]],
                    texts: Mapping[str, Mapping[str, Sequence[str]]] | None = None) -> Path:
    """Write ``(question id, [(item id, score), ...])`` pairs atomically; a question in ``texts``
    (snippets) gets every item's ``texts`` list (empty when it has none)."""
    texts = texts or {}
    lines = [json.dumps({"id": qid, "items": [_entry(i, s, texts.get(qid)) for i, s in items]})
             for qid, items in results]
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))
    return Path(path)


def read_retrieval(path: str | Path) -> dict[str, Retrieved]:
    """Question id -> retrieved (item id, score) list, best first."""
    results: dict[str, Retrieved] = {}
    for line, record in iter_jsonl_with_lines(path, "retrieval results file"):
        where = f"{path}, line {line}"
        if not isinstance(record, dict) or not isinstance(record.get("id"), str) or not isinstance(record.get("items"), list):
            raise DataError(f"{where}: expected {{\"id\": str, \"items\": [...]}}; rewrite the file with rablip.")
        if record["id"] in results:
            raise DataError(f"{where}: question id {record['id']!r} appears twice.")
        try:
            results[record["id"]] = [(str(i["id"]), float(i["score"])) for i in record["items"]]
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{where}: every item needs an \"id\" and a numeric \"score\".") from None
    return results


def read_retrieval_texts(path: str | Path) -> Texts:
    """Question id -> snippet anchor id -> attached text ids, for the items that carry ``texts``
    (questions without any are left out). Read after :func:`read_retrieval` has checked the file."""
    found: Texts = {}
    for line, record in iter_jsonl_with_lines(path, "retrieval results file"):
        for entry in record.get("items", []) if isinstance(record, dict) else []:
            if not isinstance(entry, dict) or "texts" not in entry:
                continue
            attached = entry["texts"]
            if not isinstance(attached, list) or not all(isinstance(i, str) for i in attached):
                raise DataError(f"{path}, line {line}: \"texts\" of item {entry.get('id')!r} must be a list of "
                                "item ids; rewrite the file with rablip.")
            found.setdefault(str(record["id"]), {})[str(entry["id"])] = attached
    return found
