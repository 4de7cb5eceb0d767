"""The benchmarks rablip evaluates on: one module each, and the registry that names them.

=============  =====================  ====================================================================
name           module                 official prediction file
=============  =====================  ====================================================================
okvqa, vqav2   :mod:`.okvqa`          ``predictions.json``: ``[{"question_id": int, "answer": str}]``
aokvqa         :mod:`.aokvqa`         ``predictions.json``: ``{question_id: {"multiple_choice", "direct_answer"}}``
webqa          :mod:`.webqa`          ``predictions.json``: ``{guid: {"sources": [fact ids], "answer": str}}``
infoseek       :mod:`.infoseek`       ``predictions.jsonl``: ``{"data_id": str, "prediction": str}`` per line
evqa           :mod:`.evqa`           ``predictions.jsonl``: ``{"question_id": CSV row, "prediction": str}`` per line
oven           :mod:`.oven`           ``predictions.jsonl``: ``{"data_id": str, "pred_entity_id": QID}`` per line
=============  =====================  ====================================================================

Each module holds a :class:`~rablip.benchmarks.base.Benchmark`: its split loader, prediction writer,
scorer call, headline metric, per-question scores, report question groups and extra retrieval
metrics. Adding a benchmark is one module plus its configs: write the module, add it to
:data:`BENCHMARKS` and to ``rablip.config.schema.DATASETS`` (a test checks that the two agree).
"""

from __future__ import annotations

from rablip.benchmarks import aokvqa, evqa, infoseek, okvqa, oven, webqa
from rablip.benchmarks.base import Answer, Benchmark
from rablip.config.schema import DataConfig, SplitConfig
from rablip.data.records import QAExample
from rablip.errors import ConfigError

BENCHMARKS: dict[str, Benchmark] = {
    "okvqa": okvqa.BENCHMARK,
    "vqav2": okvqa.BENCHMARK,
    "aokvqa": aokvqa.BENCHMARK,
    "webqa": webqa.BENCHMARK,
    "infoseek": infoseek.BENCHMARK,
    "evqa": evqa.BENCHMARK,
    "oven": oven.BENCHMARK,
}
"""``data.dataset`` -> its benchmark (several names may share one: VQAv2 has OK-VQA's format, and the
synthetic world writes OK-VQA files, so it is ``okvqa``)."""

__all__ = ["BENCHMARKS", "Answer", "Benchmark", "get_benchmark", "load_split"]


def get_benchmark(dataset: str) -> Benchmark:
    """The benchmark registered as ``dataset``; a ConfigError naming the choices otherwise."""
    try:
        return BENCHMARKS[dataset]
    except KeyError:
        raise ConfigError(f"data.dataset: unknown benchmark {dataset!r}; choose one of "
                          f"{', '.join(BENCHMARKS)}.") from None


def load_split(data: DataConfig, split: str) -> list[QAExample]:
    """The examples of ``data.<split>`` (train, val, test or replay) read by ``data.dataset``'s loader."""
    files: SplitConfig = getattr(data, split)
    if not files.path:
        raise ConfigError(f"data.{split}.path is empty: set the {data.dataset} file of the {split} split.")
    return get_benchmark(data.dataset).load(files)
