"""OVEN (open-domain visual entity recognition): split loader, QID predictions and the official accuracy.

Split files: ``oven_{entity,query}_{train,val,test}.jsonl``, records ``{data_id, image_id
("oven_01963180"), question, entity_id (Wikidata QID), entity_text, data_split}``; test records carry
no entity. A configured split reads ``data.<split>.path`` and then each of ``data.<split>.extra_paths``
(the query file beside the entity file: the official score needs both). Images are OVEN images named
by ``image_id``, found as InfoSeek's are (``image_root`` / ``image_pattern``; InfoSeek's images are
a subset of OVEN's).

An example's answer is ``entity_text`` (what the generator learns to write); its report group is
its ``data_split``. Predictions: ``predictions.jsonl``, one ``{"data_id": str, "pred_entity_id": str}``
per line. The generator writes names, so :meth:`OVEN.write_predictions` maps each answer to a QID with
:class:`rablip.evaluation.entity_linking.EntityLinker` (exact normalised title, else BM25 top-1 over
the Wiki6M titles, as the official baseline maps names; the module docstring has the details) over
``data.<split>.entities``, the entity list of the split last loaded (the evaluate stage loads the
split it answers). Scores: :func:`rablip.evaluation.oven_metric.score_oven_files`; headline ``final``;
a question's score is 100 when its mapped QID is the reference entity.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from rablip.benchmarks.base import NO_TYPE, Answer, Benchmark
from rablip.benchmarks.infoseek import DEFAULT_IMAGE_PATTERN, infoseek_image_path
from rablip.config.schema import SplitConfig
from rablip.data.records import QAExample
from rablip.errors import ConfigError, DataError
from rablip.evaluation import oven_metric
from rablip.evaluation.entity_linking import NO_ENTITY, EntityLinker
from rablip.utils.io import atomic_write_text, check_type, iter_jsonl_with_lines, require_keys
from rablip.utils.logging import get_logger

RECORD_KEYS = {"data_id": str, "image_id": str, "question": str, "data_split": str}
_FIELD_KEYS = {"data_id", "question"}
log = get_logger("rablip.benchmarks.oven")


def split_files(split: SplitConfig) -> list[str]:
    """The split's files in reading order: ``path``, then ``extra_paths``."""
    return [split.path, *split.extra_paths]


def load_oven(paths: Sequence[str | os.PathLike], image_root: str | os.PathLike = "",
              image_pattern: str = DEFAULT_IMAGE_PATTERN) -> list[QAExample]:
    """Load OVEN records from ``paths`` in order (a data_id twice, in one file or two, is an error).

    ``answers`` is ``[entity_text]`` when the record has one; ``extra`` keeps ``image_id``,
    ``entity_id``, ``entity_text``, ``data_split`` and any other key.
    """
    what = "OVEN file"
    if "{image_id}" not in image_pattern:
        raise DataError(f"image_pattern {image_pattern!r} must contain '{{image_id}}'.")
    examples: list[QAExample] = []
    first_seen: dict[str, str] = {}
    for path in paths:
        for line, record in iter_jsonl_with_lines(path, what):
            where = f"{what} {path}, line {line}"
            require_keys(record, RECORD_KEYS, where)
            data_id = record["data_id"]
            if data_id in first_seen:
                raise DataError(f"{where}: duplicate data_id {data_id!r} (first at {first_seen[data_id]}).")
            first_seen[data_id] = f"{path}, line {line}"
            for key in ("entity_id", "entity_text"):
                if key in record:
                    check_type(record[key], str, where, key)
            examples.append(QAExample(
                id=data_id,
                image=infoseek_image_path(image_root, record["image_id"], image_pattern),
                question=record["question"],
                answers=[record["entity_text"]] if "entity_text" in record else [],
                extra={key: value for key, value in record.items() if key not in _FIELD_KEYS},
            ))
    return examples


class OVEN(Benchmark):
    """OVEN: edchengg/oven_eval ``oven_eval.py`` (``evaluate_oven_full``)."""

    name = "oven"
    predictions_suffix = ".jsonl"
    main_metric = "final"
    score_help = "OVEN entity accuracy (harmonic mean of the query and entity splits' seen/unseen means)"

    def __init__(self) -> None:
        self._linkers: dict[str, EntityLinker] = {}

    def linker(self, entity_list: str) -> EntityLinker:
        """The (memoising) linker over ``entity_list``; a ConfigError when none is configured."""
        if not entity_list:
            raise ConfigError("data.<split>.entities is empty: OVEN predictions are Wikidata QIDs, so the "
                              "generated names need the entity list to map to (set it to "
                              "Wiki6M_ver_1_0.jsonl.gz or Wiki6M_ver_1_0_title_only.jsonl).")
        if entity_list not in self._linkers:
            self._linkers[entity_list] = EntityLinker(entity_list)
        return self._linkers[entity_list]

    def load(self, split: SplitConfig) -> list[QAExample]:
        return load_oven(split_files(split), split.image_root, split.image_pattern)

    def is_labelled(self, split: SplitConfig, examples: Sequence[QAExample]) -> bool:
        return any("entity_id" in ex.extra for ex in examples)

    def write_predictions(self, path: Path, answers: Sequence[Answer], split: SplitConfig) -> Path:
        qids = self.linker(split.entities).link([answer.text for answer in answers])
        unmapped = sum(qid == NO_ENTITY for qid in qids)
        if unmapped:
            log.warning("OVEN: %d of %d answer(s) share no word with any entity title and are written with an "
                        "empty pred_entity_id (scored wrong)", unmapped, len(answers))
        lines = [json.dumps({"data_id": a.question_id, "pred_entity_id": qid}) for a, qid in zip(answers, qids)]
        atomic_write_text(path, "\n".join(lines) + "\n")
        return path

    def score(self, path: Path, split: SplitConfig, *, lemmatize: bool = False, strict: bool = False) -> dict:
        """The official scores; unknown ids are always an error (``strict`` changes nothing: the official
        script fails on them)."""
        return oven_metric.score_oven_files(split_files(split), [path])

    def question_scores(self, split: SplitConfig, scores: Mapping, answers: Sequence[Answer]) -> dict[str, float]:
        references = oven_metric.load_oven_references(split_files(split))
        qids = self.linker(split.entities).link([answer.text for answer in answers])
        return {a.question_id: 100.0 * oven_metric.question_correct(references[a.question_id], qid)
                for a, qid in zip(answers, qids) if a.question_id in references}

    def question_group(self, example: QAExample) -> str:
        """The record's ``data_split`` (``query_val_seen``, ``entity_val_unseen``, ...)."""
        return example.extra.get("data_split") or NO_TYPE

    def add_score_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--references", required=True, nargs="+",
                            help="oven_query_val.jsonl and oven_entity_val.jsonl (one file or several)")
        parser.add_argument("--predictions", required=True, nargs="+",
                            help='JSONL of {"data_id": str, "pred_entity_id": str} (one file or several)')

    def score_from_args(self, args: argparse.Namespace) -> dict:
        return oven_metric.score_oven_files(args.references, args.predictions)


BENCHMARK = OVEN()
