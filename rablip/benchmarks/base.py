"""What a benchmark module provides: the :class:`Benchmark` interface and the model's :class:`Answer` record.

A benchmark turns its split files into examples, the model's answers into its official prediction
file, and that file into scores with the official-equivalent scorer of :mod:`rablip.evaluation`.
The evaluation stage and ``rablip-score`` only talk to this interface; nothing above this layer
branches on the dataset name.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rablip.config.schema import SplitConfig
from rablip.data.records import QAExample
from rablip.evaluation.retrieval_metrics import Retrieved, evaluate_retrieval

NO_TYPE = "(no type)"
"""The report's question group of an example without a question type."""


@dataclass
class Answer:
    """What the model answered for one question."""

    question_id: str
    text: str
    """The generated (direct) answer."""
    choice: str | None = None
    """The multiple-choice option with the highest likelihood (A-OKVQA), else None."""
    references: list[tuple[str, float | None]] = field(default_factory=list)
    """The references it was given, in prompt order: (item id, retrieval score or None)."""


class Benchmark:
    """One benchmark's split loader, prediction file, scorer call, headline metric and report groups.

    Subclasses set :attr:`name`, :attr:`predictions_suffix`, :attr:`main_metric` and
    :attr:`score_help`, and implement :meth:`load`, :meth:`write_predictions`, :meth:`is_labelled`,
    :meth:`score`, :meth:`question_scores`, :meth:`add_score_arguments` and :meth:`score_from_args`.
    The other methods have defaults that a benchmark overrides where its rules differ.
    """

    name: str = ""
    """The registry key (``data.dataset``) and ``rablip-score`` subcommand."""
    predictions_suffix: str = ".json"
    """Suffix of the official prediction file."""
    main_metric: str = ""
    """Key of the headline number in :meth:`score`'s result."""
    score_help: str = ""
    """One line for ``rablip-score``'s help."""

    # --- data -------------------------------------------------------------------------------------

    def load(self, split: SplitConfig) -> list[QAExample]:
        """The examples of one configured split, in file order (``split.path`` is set)."""
        raise NotImplementedError

    def is_labelled(self, split: SplitConfig, examples: Sequence[QAExample]) -> bool:
        """Whether the split's files carry what the official scorer needs (else: written, not scored)."""
        raise NotImplementedError

    # --- predictions --------------------------------------------------------------------------------

    def predictions_file(self, run_dir: Path, stem: str = "predictions") -> Path:
        """Where a run writes its prediction file: ``run_dir / (stem + predictions_suffix)``."""
        return Path(run_dir) / f"{stem}{self.predictions_suffix}"

    def write_predictions(self, path: Path, answers: Sequence[Answer], split: SplitConfig) -> Path:
        """Write ``answers`` to the questions of ``split`` atomically in the official format; returns ``path``."""
        raise NotImplementedError

    # --- scores -------------------------------------------------------------------------------------

    def score(self, path: Path, split: SplitConfig, *, lemmatize: bool = False, strict: bool = False) -> dict:
        """The official-equivalent scores of the prediction file at ``path`` against the split's files.

        Predictions for ids the split lacks are ignored with one warning, or refused with a DataError
        when ``strict``. ``lemmatize`` is the VQA option (other benchmarks ignore it).
        """
        raise NotImplementedError

    def main_score(self, scores: Mapping) -> float:
        """The headline number of ``scores`` in percent."""
        return float(scores[self.main_metric])

    def question_scores(self, split: SplitConfig, scores: Mapping, answers: Sequence[Answer]) -> dict[str, float]:
        """Question id -> that question's score in percent, by the benchmark's official rule."""
        raise NotImplementedError

    def question_group(self, example: QAExample) -> str:
        """The report's question group of ``example``: its question type as the data give it."""
        return example.question_type or NO_TYPE

    def retrieval_metrics(self, results: Mapping[str, Retrieved], examples: Sequence[QAExample],
                          ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
        """recall@k, precision@k and MRR of ranked ``results`` over the labelled examples, plus the
        benchmark's own retrieval metrics (see :func:`rablip.evaluation.retrieval_metrics.evaluate_retrieval`)."""
        return evaluate_retrieval(results, examples, ks)

    # --- rablip-score ---------------------------------------------------------------------------------

    def add_score_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the subcommand's file arguments (``--predictions`` among them)."""
        raise NotImplementedError

    def score_from_args(self, args: argparse.Namespace) -> dict:
        """Score the files named on the command line (``args.strict`` is set)."""
        raise NotImplementedError
