"""rablip.benchmarks: the registry, load_split, and each benchmark's predictions -> scores round trip."""

from __future__ import annotations

import json

import pytest

from rablip.benchmarks import BENCHMARKS, Answer, get_benchmark, load_split
from rablip.benchmarks.base import NO_TYPE
from rablip.config.schema import DATASETS, DataConfig, SplitConfig
from rablip.data.records import QAExample
from rablip.errors import ConfigError
from tests.benchmarks import test_aokvqa, test_infoseek, test_okvqa, test_webqa


def test_schema_choices_are_the_registry_keys():
    # config sits below benchmarks, so data.dataset's choices are a literal that must follow the registry.
    assert set(DATASETS) - {"synthetic"} == set(BENCHMARKS) - {"synthetic"}
    assert len(set(DATASETS)) == len(DATASETS)


def test_each_benchmark_is_registered_under_its_name():
    for key, benchmark in BENCHMARKS.items():
        assert BENCHMARKS[benchmark.name] is benchmark, key
        assert benchmark.main_metric and benchmark.score_help and benchmark.predictions_suffix.startswith(".")
    assert BENCHMARKS["vqav2"] is BENCHMARKS["okvqa"]
    with pytest.raises(ConfigError, match="unknown benchmark 'nope'.*okvqa"):
        get_benchmark("nope")


def test_load_split_reads_the_configured_files(tmp_path):
    questions, annotations = test_okvqa._write(tmp_path)
    data = DataConfig(dataset="okvqa", val=SplitConfig(path=str(questions), annotations=str(annotations)))
    assert [ex.id for ex in load_split(data, "val")] == ["2971475", "420"]
    with pytest.raises(ConfigError, match="data.test.path is empty"):
        load_split(data, "test")


def _round_trip(name, split, answers, tmp_path):
    benchmark = BENCHMARKS[name]
    examples = benchmark.load(split)
    path = benchmark.write_predictions(benchmark.predictions_file(tmp_path), answers, split)
    assert path == tmp_path / f"predictions{benchmark.predictions_suffix}"
    assert benchmark.is_labelled(split, examples)
    scores = benchmark.score(path, split)
    return benchmark, examples, path, scores


def test_okvqa_round_trip(tmp_path):
    questions, annotations = test_okvqa._write(tmp_path)
    split = SplitConfig(path=str(questions), annotations=str(annotations))
    answers = [Answer("2971475", "motocross"), Answer("420", "rain")]
    benchmark, examples, path, scores = _round_trip("okvqa", split, answers, tmp_path)
    assert json.loads(path.read_text()) == [{"question_id": 2971475, "answer": "motocross"},
                                            {"question_id": 420, "answer": "rain"}]
    assert benchmark.main_score(scores) == 50.0
    assert benchmark.question_scores(split, scores, answers) == {"2971475": 100.0, "420": 0.0}
    assert [benchmark.question_group(ex) for ex in examples] == ["one", "ten"]
    assert not benchmark.is_labelled(SplitConfig(path=str(questions)), examples)


def test_question_group_is_the_question_type_as_written():
    benchmark = BENCHMARKS["okvqa"]
    seen = QAExample("1", None, "?", question_type="knowledge/seen", extra={"seen_entity": False})
    assert benchmark.question_group(seen) == "knowledge/seen"
    assert benchmark.question_group(QAExample("2", None, "?")) == NO_TYPE


def test_aokvqa_round_trip(tmp_path):
    path = test_aokvqa._write(tmp_path, [test_aokvqa._record()])
    split = SplitConfig(path=str(path))
    answers = [Answer("22MexNkBPpdZGX6sxbxVBH", "cab", choice="cab")]
    benchmark, _, written, scores = _round_trip("aokvqa", split, answers, tmp_path)
    assert json.loads(written.read_text()) == {"22MexNkBPpdZGX6sxbxVBH": {"direct_answer": "cab",
                                                                          "multiple_choice": "cab"}}
    assert scores["mc"] == 100.0 and benchmark.main_score(scores) == pytest.approx(200 / 3)
    assert benchmark.question_scores(split, scores, answers) == {"22MexNkBPpdZGX6sxbxVBH": pytest.approx(200 / 3)}


def test_infoseek_round_trip(tmp_path):
    path = test_infoseek._write_jsonl(tmp_path / "infoseek_val.jsonl", test_infoseek.RECORDS)
    split = SplitConfig(path=str(path))
    answers = [Answer("val_00000000", "USA"), Answer("val_00000001", "about 330 metres")]
    benchmark, _, written, scores = _round_trip("infoseek", split, answers, tmp_path)
    assert [json.loads(line) for line in written.read_text().splitlines()] == [
        {"data_id": "val_00000000", "prediction": "USA"}, {"data_id": "val_00000001", "prediction": "about 330 metres"}]
    assert benchmark.main_score(scores) == scores["score"]
    assert benchmark.question_scores(split, scores, answers)["val_00000000"] == 100.0


def test_webqa_round_trip_writes_the_top_references_as_sources(tmp_path):
    path = test_webqa._write_json(tmp_path, test_webqa._train_val())
    split = SplitConfig(path=str(path), split="val")
    answers = [Answer("guid-2", "Sultan Ahmed I built it", references=[("t-pos-2", 0.9), ("t-neg-1", 0.5), ("x", 0.1)])]
    benchmark, _, written, scores = _round_trip("webqa", split, answers, tmp_path)
    assert json.loads(written.read_text()) == {"guid-2": {"sources": ["t-pos-2", "t-neg-1"],
                                                          "answer": "Sultan Ahmed I built it"}}
    assert scores["qa_acc"] == 1.0 and benchmark.main_score(scores) == 100.0
    assert scores["retrieval_f1"] == round(2 / 3, 4)
    assert benchmark.question_scores(split, scores, answers) == {"guid-2": 100.0}


def test_retrieval_metrics_and_webqa_f1():
    examples = [QAExample("q1", None, "?", relevant_ids=["a"]), QAExample("q2", None, "?", relevant_ids=["b", "c"]),
                QAExample("q3", None, "?")]
    results = {"q1": [("a", 0.9), ("x", 0.5)], "q2": [("x", 0.9), ("c", 0.8), ("b", 0.1)]}
    scores = BENCHMARKS["webqa"].retrieval_metrics(results, examples, ks=(1, 2))
    assert scores["recall@1"] == 50.0 and scores["recall@2"] == 100.0
    assert scores["precision@2"] == pytest.approx(50.0)
    assert scores["mrr"] == pytest.approx((1.0 + 0.5) / 2)
    # q1: chosen {a, x} vs {a}: P 1/2, R 1 -> 2/3; q2: chosen {x, c} vs {b, c}: P 1/2, R 1/2 -> 1/2.
    assert scores["webqa_retrieval_f1"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert scores["questions"] == 2 and scores["questions_without_results"] == 0
    assert "webqa_retrieval_f1" not in BENCHMARKS["okvqa"].retrieval_metrics(results, examples)
    assert BENCHMARKS["webqa"].retrieval_metrics(results, [QAExample("q3", None, "?")]) == {}
