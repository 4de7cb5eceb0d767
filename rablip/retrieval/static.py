"""Retrieval results for a whole split, written once and read back (static retrieval).

One JSON object per line: ``{"id": question id, "items": [{"id": item id, "score": float}, ...]}``
with items best first. Training from such a file is what ``retrieval.source: static`` means; a live
index's results are cached in the same format.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from rablip.errors import DataError
from rablip.utils.io import atomic_write_text, iter_jsonl_with_lines

Retrieved = list[tuple[str, float]]


def write_retrieval(path: str | Path, results: Iterable[tuple[str, Sequence[tuple[str, float]]]]) -> Path:
    """Write ``(question id, [(item id, score), ...])`` pairs atomically."""
    lines = [json.dumps({"id": qid, "items": [{"id": i, "score": float(s)} for i, s in items]})
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
