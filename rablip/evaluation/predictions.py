"""Reading prediction files for the scorers: one clear DataError per problem, never a traceback.

Every benchmark's scorer turns its prediction file into ``{id: prediction}`` through the helpers
here. Problems a user can fix (malformed JSON, a wrong container, a non-string answer, a duplicate
id) raise :class:`~rablip.errors.DataError` naming the file, the record and what to do.

A prediction for an id the reference data lacks gets the official treatment (the A-OKVQA and
InfoSeek scripts): it is ignored, with one warning naming how many and a few of them, and the
score is computed on the known ids. With ``strict=True`` (``rablip-score --strict``) such a file
is refused with a DataError instead.
A *missing* prediction is not an error: like the official evaluations (A-OKVQA, the WebQA server)
it counts as wrong, and the scorer reports how many were missing.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from rablip.errors import DataError
from rablip.utils.logging import get_logger

MAX_IDS_SHOWN = 5
log = get_logger("rablip.evaluation.predictions")
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def _preview_ids(ids: Iterable[Hashable]) -> str:
    shown = [repr(item) for item in list(ids)[:MAX_IDS_SHOWN]]
    return ", ".join(shown)


def check_prediction_ids(
    predicted_ids: Collection[Hashable], reference_ids: Collection[Hashable], path: str | Path, what: str,
    strict: bool = False,
) -> list[Hashable]:
    """Check the predicted ids against the reference ids; return the reference ids without a prediction.

    Predicted ids that are not reference ids are refused with a DataError when ``strict``; otherwise
    one warning names how many there are and the first few (the caller ignores them, see
    :func:`known_predictions`). ``what`` names the id kind in messages (e.g. ``"question_id"``). The
    returned list keeps the order of ``reference_ids``.
    """
    reference_set = set(reference_ids)
    unknown = [item for item in predicted_ids if item not in reference_set]
    if unknown and strict:
        raise DataError(
            f"prediction file {path}: {len(unknown)} {what}(s) are not in the reference data, e.g. "
            f"{_preview_ids(unknown)}. Score against the annotation file of the split you predicted on "
            "(and check the id type: the reference ids look like "
            f"{_preview_ids(reference_ids)}), or leave strict mode off to ignore them."
        )
    if unknown:
        log.warning(
            "prediction file %s: %d %s(s) are not in the reference data and are ignored, e.g. %s "
            "(the reference ids look like %s); strict mode (rablip-score --strict) refuses such a file.",
            path, len(unknown), what, _preview_ids(unknown), _preview_ids(reference_ids),
        )
    predicted_set = set(predicted_ids)
    return [item for item in reference_ids if item not in predicted_set]


def known_predictions(
    predictions: Mapping[K, V], reference_ids: Collection[Hashable], path: str | Path, what: str,
    strict: bool = False,
) -> dict[K, V]:
    """``predictions`` restricted to the reference ids, in file order (see :func:`check_prediction_ids`)."""
    check_prediction_ids(list(predictions), reference_ids, path, what, strict)
    reference_set = set(reference_ids)
    return {key: value for key, value in predictions.items() if key in reference_set}


def require_string(value: Any, path: str | Path, record: str, key: str) -> str:
    """``value`` if it is a string, else a DataError naming the record and key."""
    if not isinstance(value, str):
        raise DataError(
            f"prediction file {path}, {record}: {key!r} must be a string, got {type(value).__name__} "
            f"{value!r:.60}. Write every answer as a JSON string."
        )
    return value


def require_container(document: Any, expected: type, path: str | Path, shape: str) -> None:
    """Raise DataError if the parsed file is not a ``list``/``dict`` as the benchmark expects."""
    if not isinstance(document, expected):
        raise DataError(
            f"prediction file {path}: expected {shape}, got a JSON {type(document).__name__}. "
            "Write predictions in the benchmark's official results format."
        )


def add_unique(mapping: dict[Hashable, Any], key: Hashable, value: Any, path: str | Path, record: str) -> None:
    """Insert ``key`` into ``mapping``; a second prediction for the same id is a DataError."""
    if key in mapping:
        raise DataError(
            f"prediction file {path}, {record}: a second prediction for id {key!r}. "
            "Keep exactly one prediction per question."
        )
    mapping[key] = value
