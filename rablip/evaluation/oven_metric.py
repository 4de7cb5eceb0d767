"""OVEN accuracy, equal to the official ``oven_eval.py`` (edchengg/oven_eval, ``evaluate_oven_full``).

Reference records (``oven_{entity,query}_{split}.jsonl``): ``{data_id, entity_id, data_split, ...}``.
Prediction records (JSONL): ``{"data_id": str, "pred_entity_id": str}`` (a Wikidata QID).

The official rules, each reproduced:

- A prediction scores 1 when its ``pred_entity_id`` equals the reference ``entity_id`` exactly (no
  normalisation at all: ``"q31"`` is not ``"Q31"``).
- The denominator is the predictions given: a reference question without a prediction is not
  counted at all, and a data_id predicted twice is counted twice (the official loop runs over the
  predictions). Both are reported in a warning, never silently.
- A prediction for a data_id the references lack is an error (the official script fails on it).
- Accuracies are grouped by the reference's ``data_split``: per split, ``round(sum / n * 100, 2)``;
  a split whose name contains ``_seen`` is the *seen* group, else one containing ``_unseen`` the
  *unseen* group, and any other split (``query_train``, ...) is dropped. When two splits of a task
  fall in one group, the one whose first prediction comes later overwrites the other (the official
  dictionary assignment), and a warning says so.
- ``query_score = HM(query seen, query unseen)`` and ``entity_score = HM(entity seen, entity unseen)``
  of those rounded accuracies; ``final = HM(query_score, entity_score)`` of the *unrounded* task
  scores; each HM replaces a 0 by 1e-12. ``final``, ``query_score`` and ``entity_score`` are then
  rounded to 2 decimals; the four group accuracies are already.

One difference in shape, none in numbers: the official function takes the query and the entity
files separately; here any number of reference and prediction files are read together, and a
reference's task is the start of its ``data_split`` (``query_...`` or ``entity_...``, as in the
release; a record whose split starts with neither belongs to no task and is dropped like the
splits above). A group without predictions (the official script fails with a KeyError) is a
DataError saying which one.

Also refused with a DataError naming the file and line: a prediction without ``data_id`` or
``pred_entity_id`` (the official script checks the latter before scoring) or with a non-string one,
and a reference file without ``entity_id`` (a test split) or with a data_id twice (the official
script would keep the last).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rablip.errors import DataError
from rablip.utils.io import PathLike, iter_jsonl_with_lines, require_keys
from rablip.utils.logging import get_logger

TASKS = ("query", "entity")
GROUPS = ("seen", "unseen")
OUTPUT_KEYS = ("final", "query_score", "entity_score", "query_seen", "query_unseen", "entity_seen", "entity_unseen")
"""The keys of :func:`score_oven`'s result, in order."""
ZERO = 1e-12
"""What the official harmonic mean puts in place of a 0."""

log = get_logger("rablip.evaluation.oven_metric")


@dataclass(frozen=True)
class OvenReference:
    """What scoring needs from one reference record."""

    data_id: str
    entity_id: str
    data_split: str


def task_of(data_split: str) -> str | None:
    """``query`` or ``entity`` from the start of ``data_split`` (``query_val_seen`` -> ``query``), else None."""
    for task in TASKS:
        if data_split.startswith(task):
            return task
    return None


def group_of(data_split: str) -> str | None:
    """``seen`` when the split name contains ``_seen``, else ``unseen`` when it contains ``_unseen``, else None."""
    if "_seen" in data_split:
        return "seen"
    if "_unseen" in data_split:
        return "unseen"
    return None


def harmonic_mean(*values: float) -> float:
    """``n / sum(1 / v)`` with every 0 replaced by 1e-12 (the official ``harmonic_mean``)."""
    safe = [value if value != 0 else ZERO for value in values]
    return len(safe) / sum(1.0 / value for value in safe)


def split_accuracy(results: Sequence[int]) -> float:
    """``round(sum / n * 100, 2)``, in the official order of operations."""
    return round(sum(results) / len(results) * 100, 2)


def load_oven_references(paths: Iterable[PathLike]) -> dict[str, OvenReference]:
    """``data_id -> reference`` from one or more OVEN reference files, in file order."""
    references: dict[str, OvenReference] = {}
    first_seen: dict[str, str] = {}
    for path in paths:
        what = "OVEN reference file"
        for line, record in iter_jsonl_with_lines(path, what):
            where = f"{what} {path}, line {line}"
            require_keys(record, {"data_id": str, "data_split": str}, where)
            if "entity_id" not in record:
                raise DataError(f"{where}: no 'entity_id' (a test-split file?). Score against a val split "
                                "(oven_entity_val.jsonl, oven_query_val.jsonl).")
            require_keys(record, {"entity_id": str}, where)
            data_id = record["data_id"]
            if data_id in references:
                raise DataError(f"{where}: data_id {data_id!r} appears twice (first at {first_seen[data_id]}). "
                                "Pass each reference file once.")
            first_seen[data_id] = f"{path}, line {line}"
            references[data_id] = OvenReference(data_id, record["entity_id"], record["data_split"])
    if not references:
        raise DataError("the OVEN reference files hold no questions; nothing to score.")
    return references


def read_oven_predictions(paths: Iterable[PathLike], references: dict[str, OvenReference]) -> list[tuple[str, str]]:
    """``(data_id, pred_entity_id)`` of every prediction record, in file order, duplicates kept."""
    predictions: list[tuple[str, str]] = []
    for path in paths:
        what = "OVEN prediction file"
        for line, record in iter_jsonl_with_lines(path, what):
            where = f"{what} {path}, line {line}"
            require_keys(record, {"data_id": str, "pred_entity_id": str}, where)
            data_id = record["data_id"]
            if data_id not in references:
                raise DataError(f"{where}: data_id {data_id!r} is not in the reference files (the official "
                                "script fails on it too). Score against the files of the split you predicted on.")
            predictions.append((data_id, record["pred_entity_id"]))
    return predictions


def task_results(references: dict[str, OvenReference],
                 predictions: Sequence[tuple[str, str]]) -> dict[str, dict[str, list[int]]]:
    """task -> data_split -> the 0/1 score of each prediction, splits in the order of their first prediction."""
    by_task: dict[str, dict[str, list[int]]] = {task: {} for task in TASKS}
    for data_id, predicted in predictions:
        reference = references[data_id]
        task = task_of(reference.data_split)
        if task is not None:
            by_task[task].setdefault(reference.data_split, []).append(int(reference.entity_id == predicted))
    return by_task


def group_accuracies(task: str, splits: dict[str, list[int]]) -> dict[str, float]:
    """``{"seen": acc, "unseen": acc}`` of one task by the official rule (later splits overwrite)."""
    result: dict[str, float] = {}
    owner: dict[str, str] = {}
    for split, results in splits.items():
        group = group_of(split)
        if group is None:
            continue
        if group in owner:
            log.warning("OVEN %s task: splits %r and %r both count as %s; the official script keeps the later "
                        "(%r), and so does rablip", task, owner[group], split, group, split)
        result[group], owner[group] = split_accuracy(results), split
    for group in GROUPS:
        if group not in result:
            raise DataError(f"no predictions in the OVEN {task} {group} group (a data_split starting with "
                            f"'{task}' and containing '_{group}'); the final score needs all four groups: "
                            "predict on both oven_query_<split>.jsonl and oven_entity_<split>.jsonl.")
    return result


def _report_coverage(references: dict[str, OvenReference], predictions: Sequence[tuple[str, str]]) -> None:
    """Warn about what the official denominator hides: unpredicted, repeated and dropped questions."""
    counts = Counter(data_id for data_id, _ in predictions)
    missing = len(references) - len(counts)
    repeated = sum(count - 1 for count in counts.values())
    splits = (references[data_id].data_split for data_id, _ in predictions)
    dropped = Counter(split for split in splits if task_of(split) is None or group_of(split) is None)
    if missing:
        log.warning("OVEN: %d reference question(s) have no prediction and are not counted (the official "
                    "denominator is the predictions given)", missing)
    if repeated:
        log.warning("OVEN: %d prediction(s) repeat a data_id and are counted again, as the official script does",
                    repeated)
    if dropped:
        log.warning("OVEN: predictions in splits outside the seen/unseen groups are not scored: %s", dict(dropped))


def score_oven(references: dict[str, OvenReference], predictions: Sequence[tuple[str, str]]) -> dict[str, float]:
    """The seven official numbers (see :data:`OUTPUT_KEYS`), in percent."""
    _report_coverage(references, predictions)
    by_task = task_results(references, predictions)
    groups = {task: group_accuracies(task, by_task[task]) for task in TASKS}
    query_score = harmonic_mean(groups["query"]["seen"], groups["query"]["unseen"])
    entity_score = harmonic_mean(groups["entity"]["seen"], groups["entity"]["unseen"])
    final = harmonic_mean(query_score, entity_score)
    return {
        "final": round(final, 2),
        "query_score": round(query_score, 2),
        "entity_score": round(entity_score, 2),
        **{f"{task}_{group}": groups[task][group] for task in TASKS for group in GROUPS},
    }


def score_oven_files(reference_paths: Iterable[PathLike], prediction_paths: Iterable[PathLike]) -> dict[str, float]:
    """Read the reference and prediction files and score them (see :func:`score_oven`)."""
    references = load_oven_references(reference_paths)
    return score_oven(references, read_oven_predictions(prediction_paths, references))


def question_correct(reference: OvenReference, predicted: str) -> int:
    """1 when ``predicted`` is the reference QID exactly."""
    return int(reference.entity_id == predicted)
