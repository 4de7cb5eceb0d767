"""``rablip-score evqa``: the output format, and the optional BEM path with a tiny random BERT classifier.

The real BEM checkpoint cannot be downloaded here; the BEM code path is tested with a randomly initialised
2-layer BERT sequence classifier saved in the test, whose classifier head is set so that its verdict is
known (always equivalent / never equivalent). That checks the wiring, the labelling and the input layout,
not BEM's judgements.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

from rablip.benchmarks.cli import main
from rablip.errors import DataError
from rablip.evaluation.bem import BemScorer
from tests.evaluation.test_evqa_metric import PREDICTIONS, ROWS, write_csv, write_predictions

WRONG = {"question_id": 4, "prediction": "grey fox"}
WORDS = ["what", "is", "this", "red", "fox", "oak", "paris", "city", "of", "10", "1850", "in", "granite", "q", "##0"]


def tiny_bem(directory, equivalent: bool | None, type_vocab_size: int = 2):
    """A random 2-layer BERT classifier with its tokenizer; ``equivalent`` fixes its verdict (None: random)."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizer(str(vocab), do_lower_case=True).save_pretrained(directory)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=5 + len(WORDS), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, type_vocab_size=type_vocab_size,
                        num_labels=2)
    model = BertForSequenceClassification(config)
    if equivalent is not None:
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.copy_(torch.tensor([0.0, 5.0] if equivalent else [5.0, 0.0]))
    model.save_pretrained(directory)
    return directory, model


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture
def files(tmp_path):
    return (["--data", str(write_csv(tmp_path / "val.csv", ROWS)),
             "--predictions", str(write_predictions(tmp_path / "p.jsonl", [*PREDICTIONS, WRONG]))])


def test_exact_match_output_printed_and_written(files, tmp_path, capsys):
    out_path = tmp_path / "out" / "scores.json"
    code, out, _ = _run(["evqa", *files, "--output", str(out_path)], capsys)
    assert code == 0
    written = json.loads(out_path.read_text())
    assert json.loads(out) == written
    assert {"single_hop", "overall", "per_question_type", "per_question"} <= set(written)
    # Rows 0-2 right, row 4 wrong, rows 3 (the 2_hop one) and 5 without a prediction.
    assert written["per_question"] == {"0": 1, "1": 1, "2": 1, "3": 0, "4": 0, "5": 0}
    assert written["missing"] == 2
    assert written["single_hop"] == 60.0 and written["overall"] == 50.0
    assert written["metric"]["model_based"] is False and "BEM not applied" in written["metric"]["note"]


def test_bem_path_is_labelled_model_based(files, tmp_path, capsys):
    always, _ = tiny_bem(tmp_path / "always", equivalent=True)
    code, out, _ = _run(["evqa", *files, "--bem", str(always), "--device", "cpu"], capsys)
    scores = json.loads(out)
    assert code == 0 and scores["metric"]["model_based"] is True and "BEM (model-based" in scores["metric"]["name"]
    # Every answered question becomes right; the missing ones stay 0; exact match is reported beside.
    assert scores["per_question"] == {"0": 1, "1": 1, "2": 1, "3": 0, "4": 1, "5": 0}
    assert scores["single_hop"] == 80.0 and scores["exact_match"]["single_hop"] == 60.0
    assert scores["exact_match"]["per_question"] == {"0": 1, "1": 1, "2": 1, "3": 0, "4": 0, "5": 0}
    never, _ = tiny_bem(tmp_path / "never", equivalent=False)
    code, out, _ = _run(["evqa", *files, "--bem", str(never), "--device", "cpu"], capsys)
    scores = json.loads(out)
    assert scores["per_question"] == scores["exact_match"]["per_question"]
    assert scores["single_hop"] == scores["exact_match"]["single_hop"] == 60.0


def test_bem_input_layout_and_the_third_segment(tmp_path):
    directory, model = tiny_bem(tmp_path / "two", equivalent=None, type_vocab_size=2)
    scorer = BemScorer(directory, device="cpu")
    ids, types = scorer.encode("what is this", "red fox", "oak")
    vocab = scorer.tokenizer.convert_ids_to_tokens(ids)
    assert vocab == ["[CLS]", "oak", "[SEP]", "red", "fox", "[SEP]", "what", "is", "this", "[SEP]"]
    assert types == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    # Segment 2 has no row in a 2-row table: it adds a zero vector, the same as a 3-row table with a zero row 2.
    three = BertForSequenceClassification(BertConfig(**{**model.config.to_dict(), "type_vocab_size": 3}))
    state = model.state_dict()
    table = state["bert.embeddings.token_type_embeddings.weight"]
    state["bert.embeddings.token_type_embeddings.weight"] = torch.cat([table, torch.zeros(1, table.shape[1])])
    three.load_state_dict(state)
    three.save_pretrained(tmp_path / "three")
    scorer.tokenizer.save_pretrained(tmp_path / "three")
    triples = [("what is this", "red fox", "oak"), ("q", "paris", "city of paris")]
    expected = BemScorer(tmp_path / "three", device="cpu").probabilities(triples)
    assert scorer.probabilities(triples) == pytest.approx(expected, abs=1e-6)
    assert scorer(triples) == [float(p >= 0.5) for p in expected]


def test_bem_checkpoint_problems_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="is not a directory"):
        BemScorer(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="cannot be loaded as a transformers sequence classifier"):
        BemScorer(tmp_path / "empty")
    directory, _ = tiny_bem(tmp_path / "ok", equivalent=True)
    with pytest.raises(DataError, match="exceeds 512"):
        BemScorer(directory, device="cpu").encode("q", "oak", "oak " * 600)
