"""Encyclopedic-VQA: split loader, JSONL predictions and the official accuracy (headline: single-hop).

Split files: ``{train,val,test}.csv`` (:mod:`rablip.data.evqa`); a question's id is its 0-based data row.
The example's image is the first of its ``dataset_image_ids`` (the release pairs each row with up to five
images; ``extra["images"]`` lists them all), resolved through ``data.<split>.inat_root`` +
``inat_annotations`` (iNaturalist 2021) or ``landmarks_root`` (Google Landmarks v2). ``answers`` are the
'|' alternatives of ``answer``; ``relevant_ids`` are the knowledge-base items of the evidence sections
(:mod:`rablip.data.evqa_kb` ids) where the row names them.

Predictions: ``predictions.jsonl``, one ``{"question_id": row, "prediction": str}`` per line. Scores:
:func:`rablip.evaluation.evqa_metric.score_evqa_files`: exact match, or BEM-augmented with
``rablip-score evqa --bem DIR``; headline ``single_hop`` (question_type != 2_hop).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from rablip.benchmarks.base import Answer, Benchmark
from rablip.config.schema import SplitConfig
from rablip.data.evqa import answer_alternatives, iter_evqa_rows, question_image_paths
from rablip.data.evqa_kb import page_url, section_item_id
from rablip.data.records import QAExample
from rablip.evaluation import evqa_metric
from rablip.evaluation.retrieval_metrics import Retrieved, evaluate_retrieval, recall_at_k
from rablip.utils.io import atomic_write_text

LOAD_COLUMNS = ("question", "dataset_image_ids", "dataset_name", "question_type")
_FIELD_COLUMNS = {"question", "answer", "question_type"}


def _evidence_ids(fields: Mapping[str, str]) -> list[str] | None:
    """Item ids of the evidence sections ('|'-separated urls and section ids of 2_hop rows paired up)."""
    urls = [each for each in fields.get("wikipedia_url", "").split("|") if each]
    sections = [each.strip() for each in fields.get("evidence_section_id", "").split("|") if each.strip()]
    ids = [section_item_id(url, int(float(section))) for url, section in zip(urls, sections)
           if section.replace(".", "", 1).isdecimal()]
    return ids or None


def load_evqa(csv_path: str | os.PathLike, inat_root: str = "", inat_annotations: Sequence[str] = (),
              landmarks_root: str = "") -> list[QAExample]:
    """Load an Encyclopedic-VQA split in file order (see the module docstring); every image must exist."""
    rows = list(iter_evqa_rows(csv_path, LOAD_COLUMNS))
    images = question_image_paths(rows, csv_path, inat_root, inat_annotations, landmarks_root)
    examples = []
    for row, files in zip(rows, images):
        answer = row.fields.get("answer", "")
        extra = {key: value for key, value in row.fields.items() if key not in _FIELD_COLUMNS}
        extra["images"] = files
        examples.append(QAExample(id=str(row.row), image=files[0], question=row.fields["question"],
                                  answers=answer_alternatives(answer) if answer else [],
                                  question_type=row.fields["question_type"],
                                  relevant_ids=_evidence_ids(row.fields), extra=extra))
    return examples


class EncyclopedicVQA(Benchmark):
    """Encyclopedic-VQA: google-research ``encyclopedic_vqa/evaluation_utils.py``."""

    name = "evqa"
    predictions_suffix = ".jsonl"
    main_metric = "single_hop"
    score_help = ("Encyclopedic-VQA accuracy on single-hop questions (exact match; with --bem, BEM-augmented "
                  "and marked model-based)")

    def load(self, split: SplitConfig) -> list[QAExample]:
        return load_evqa(split.path, split.inat_root, split.inat_annotations, split.landmarks_root)

    def is_labelled(self, split: SplitConfig, examples: Sequence[QAExample]) -> bool:
        return any(ex.answers for ex in examples)

    def write_predictions(self, path: Path, answers: Sequence[Answer], split: SplitConfig) -> Path:
        lines = [json.dumps({"question_id": int(a.question_id), "prediction": a.text}) for a in answers]
        atomic_write_text(path, "".join(line + "\n" for line in lines))
        return path

    def score(self, path: Path, split: SplitConfig, *, lemmatize: bool = False, strict: bool = False) -> dict:
        return evqa_metric.score_evqa_files(split.path, path, strict=strict)

    def main_score(self, scores: Mapping) -> float:
        """``single_hop``; a split without single-hop questions (all 2_hop) falls back to ``overall``."""
        value = scores["single_hop"]
        return float(scores["overall"] if value is None else value)

    def question_scores(self, split: SplitConfig, scores: Mapping, answers: Sequence[Answer]) -> dict[str, float]:
        return {question_id: 100.0 * value for question_id, value in scores["per_question"].items()}

    def retrieval_metrics(self, results: Mapping[str, Retrieved], examples: Sequence[QAExample],
                          ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
        """Section-level metrics over ``relevant_ids``, plus ``evqa_page_recall@k``: the page of the entity
        in the image (the row's first ``wikipedia_url``) among the pages of the top k items."""
        scores = evaluate_retrieval(results, examples, ks)
        labelled = [ex for ex in examples if ex.extra.get("wikipedia_url")]
        for k in ks if labelled else ():
            hits = [recall_at_k([page_url(item) for item, _ in results.get(ex.id, [])],
                                {ex.extra["wikipedia_url"].split("|")[0]}, k) for ex in labelled]
            scores[f"evqa_page_recall@{k}"] = 100.0 * sum(hits) / len(hits)
        return scores

    def add_score_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--data", required=True, help="the split CSV (val.csv, test.csv)")
        parser.add_argument("--predictions", required=True,
                            help='JSONL of {"question_id": 0-based CSV row, "prediction": str}')
        parser.add_argument("--bem", metavar="DIR",
                            help="transformers checkpoint directory of a BEM answer-equivalence model: adds the "
                                 "official model-based judgement where exact match fails (default: exact match only)")
        parser.add_argument("--device", help="device for the BEM model (default: cuda when available, else cpu)")

    def score_from_args(self, args: argparse.Namespace) -> dict:
        questions = evqa_metric.load_evqa_references(args.data)
        predictions = evqa_metric.read_evqa_predictions(args.predictions, questions, args.strict)
        bem = None
        if args.bem is not None:
            from rablip.evaluation.bem import BemScorer

            bem = BemScorer(args.bem, device=args.device)
        return evqa_metric.score_evqa(questions, predictions, bem)


BENCHMARK = EncyclopedicVQA()
