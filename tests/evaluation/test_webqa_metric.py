"""WebQA scorer: retrieval F1, keyword QA-Acc per category, the approximation, and the FL hook."""

from __future__ import annotations

import json

import pytest

from rablip.errors import DataError
from rablip.evaluation.bartscore import BartScorer, fluency
from rablip.evaluation.webqa_metric import (
    approximate_accuracy,
    keyword_accuracy,
    load_webqa_references,
    normalize_text,
    read_webqa_predictions,
    retrieval_f1,
    score_webqa,
    word_to_number,
)

PERFECT_F1 = 2 / (2 + 1e-5)  # the official F1 adds 1e-5 to the denominator


def test_normalisation():
    assert normalize_text("The cars are Red.") == "car are red"
    assert normalize_text("The") == "the"  # a single word keeps its article
    assert normalize_text("A") == "a"  # a single character keeps everything
    assert normalize_text("three dogs, 2.5 kg") == "3 dog 2.5 kg"
    assert word_to_number("twenty-one") == "21"
    assert word_to_number("007") == "7"
    assert word_to_number("point") == "point"
    assert word_to_number("tree") == "tree"


def test_keyword_accuracy_by_category():
    assert keyword_accuracy("The car is red and white.", "red white", "color") == PERFECT_F1
    # P = 1, R = 0.5 -> 2 * 0.5 / (1.5 + 1e-5)
    assert keyword_accuracy("red", "red white", "color") == pytest.approx(1.0 / (1.5 + 1e-5), abs=1e-15)
    assert keyword_accuracy("It is round.", "circle", "shape") == 0.0
    assert keyword_accuracy("Yes, it is.", "yes", "YesNo") == PERFECT_F1
    assert keyword_accuracy("There are three dogs", "3", "number") == PERFECT_F1
    assert keyword_accuracy("There are 3 or 4 dogs", "3", "number") == pytest.approx(2 * 0.5 / (1.5 + 1e-5))
    # Other categories: recall of the keywords.
    assert keyword_accuracy("The Eiffel Tower is in Paris", "paris france", "Others") == 0.5
    assert keyword_accuracy("Paris, France", "paris france", "choose") == 1.0


def test_approximation_has_no_epsilon():
    assert approximate_accuracy("Yes it is", "Yes, the house is red.", "YesNo") == 1.0
    assert approximate_accuracy("a red house", "The house is red.", "text") == pytest.approx(2 / 3)


def test_retrieval_f1():
    assert retrieval_f1(["p1", "n1"], ["p1", "42"]) == 0.5
    assert retrieval_f1(["42"], ["42", "p2"]) == pytest.approx(2 / 3)
    assert retrieval_f1([], ["p1"]) == 0.0


def _write_data(tmp_path, with_keywords=True):
    def record(split, qcate, answer, keywords, pos_txt, pos_img):
        rec = {"Q": '"question?"', "A": [f'"{answer}"'], "Qcate": qcate, "split": split, "topic": "t",
               "txt_posFacts": [{"fact": "f", "url": "u", "snippet_id": s, "title": "t"} for s in pos_txt],
               "txt_negFacts": [{"fact": "f", "url": "u", "snippet_id": "neg", "title": "t"}],
               "img_posFacts": [{"image_id": i, "title": "t", "caption": "c", "url": "u", "imgUrl": "u"} for i in pos_img],
               "img_negFacts": []}
        if with_keywords:
            rec["Keywords_A"] = keywords
        return rec

    data = {
        "g1": record("val", "color", "The car is red.", "red", [], [30001]),
        "g2": record("val", "Others", "It was built in 1889 in Paris.", "1889 paris", ["s1"], []),
        "g3": record("val", "YesNo", "Yes.", "yes", ["s2"], [30002]),
        "g0": record("train", "text", "x", "x", ["s0"], []),
    }
    path = tmp_path / "WebQA_train_val.json"
    path.write_text(json.dumps(data))
    return path


def test_scores_over_split_with_missing(tmp_path):
    path = _write_data(tmp_path)
    with pytest.raises(DataError, match="several splits"):
        load_webqa_references(path)
    questions = load_webqa_references(path, split="val")
    (tmp_path / "p.json").write_text(json.dumps({
        "g1": {"sources": [30001], "answer": "It is red."},             # F1 1, acc PERFECT_F1
        "g2": {"sources": ["s1", "neg"], "answer": "In 1889."},          # F1 2/3, recall 0.5
    }))
    predictions = read_webqa_predictions(tmp_path / "p.json", questions)
    scores = score_webqa(questions, predictions)
    assert scores["retrieval_f1"] == round((1 + 2 / 3 + 0) / 3, 4)
    assert scores["qa_acc"] == round((PERFECT_F1 + 0.5 + 0) / 3, 4)
    assert scores["qa_acc_approx"] is None
    assert scores["qa_fl"] is None and scores["qa"] is None
    assert scores["missing"] == 1
    assert "absent" in scores["metric"]["fl"]


def test_without_keywords_uses_the_approximation(tmp_path):
    path = _write_data(tmp_path, with_keywords=False)
    questions = load_webqa_references(path, split="val")
    scores = score_webqa(questions, {"g3": (["s2"], "yes")})
    assert scores["qa_acc"] is None
    assert scores["qa_acc_approx"] == round(1 / 3, 4)


def test_fluency_hook_feeds_qa(tmp_path):
    path = _write_data(tmp_path)
    questions = load_webqa_references(path, split="val")
    predictions = {"g1": (["30001"], "It is red."), "g2": (["s1"], "In 1889."), "g3": ([], "yes")}
    scores = score_webqa(questions, predictions, fluency_fn=lambda answer, refs: 0.5)
    assert scores["qa_fl"] == 0.5
    assert scores["qa"] == round(0.5 * scores["qa_acc"], 4)


def test_prediction_file_errors(tmp_path):
    questions = load_webqa_references(_write_data(tmp_path), split="val")
    cases = {
        "[]": "expected a JSON object",
        json.dumps({"g1": {"sources": "30001", "answer": "red"}}): "'sources' should be a list",
        json.dumps({"g1": {"sources": [], "answer": ["red"]}}): "'answer' must be a string",
        json.dumps({"g1": {"sources": [1.5], "answer": "red"}}): r"sources\[0\] must be a fact id",
        json.dumps({"g0": {"sources": [], "answer": "x"}}): "not in the reference data",
    }
    for text, message in cases.items():
        (tmp_path / "p.json").write_text(text)
        with pytest.raises(DataError, match=message):
            read_webqa_predictions(tmp_path / "p.json", questions, strict=True)


def test_bart_scorer_needs_a_checkpoint(tmp_path):
    with pytest.raises(DataError, match="--bart-checkpoint"):
        BartScorer(None)
    with pytest.raises(DataError, match="no config.json"):
        BartScorer(tmp_path)


@pytest.fixture(scope="module")
def tiny_bart(tmp_path_factory):
    """A 1-layer random BART with a word-level tokenizer, saved in transformers format."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BartConfig, BartForConditionalGeneration, PreTrainedTokenizerFast

    words = "<pad> <s> </s> <unk> The car is red and white blue".split()
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")
    config = BartConfig(vocab_size=len(words), d_model=16, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                        decoder_ffn_dim=32, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                        eos_token_id=2, decoder_start_token_id=2)
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("bart")
    BartForConditionalGeneration(config).save_pretrained(directory)
    fast.save_pretrained(directory)
    return BartScorer(directory, batch_size=2)


def test_bart_fluency(tiny_bart):
    # Padding must not change a pair's score: alone vs next to a longer pair in one batch.
    alone = tiny_bart.score(["The car is red"], ["red"])[0]
    batched = tiny_bart.score(["The car is red", "white"], ["red", "The car is red and white"])[0]
    assert alone == pytest.approx(batched, abs=1e-5)
    # The candidate equal to a reference (after punctuation removal) has ratio 1 -> FL 1.
    assert fluency("The car is red.", ["The car is red"], tiny_bart) == pytest.approx(1.0, abs=1e-6)
    value = fluency("blue", ["The car is red", "white"], tiny_bart)
    ratios = [2.718281828459045 ** (c - n) for c, n in zip(
        tiny_bart.score(["The car is red", "white"], ["blue", "blue"]),
        tiny_bart.score(["The car is red", "white"], ["The car is red", "white"]))]
    assert value == pytest.approx(min(1.0, max(ratios)))
