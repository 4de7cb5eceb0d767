"""Tokenizers trained with rablip.synthetic.tokenizer_training load like real checkpoints and behave like them."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from rablip.synthetic.tokenizer_training import IMAGE_TOKEN, train_tokenizer

CORPUS = [
    "What does this creature eat?",
    "The zorblat is a large striped red star. It eats berries and lives in the swamp.",
    "Entry for the kavimo: a small dotted blue circle. Habitat: forest. First recorded: 1923.",
    "Question: Where does this animal come from? Short answer: orrin coast",
    "Reference 1: image with caption: A photo of the zorblat, a large striped red star.",
] * 20


def _files(directory) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


@pytest.mark.parametrize("kind", ["bert", "t5", "causal"])
def test_round_trip_through_auto_tokenizer_and_determinism(tmp_path, kind):
    returned = train_tokenizer(CORPUS, tmp_path / "a", kind=kind, vocab_size=400)
    again = train_tokenizer(list(CORPUS), tmp_path / "b", kind=kind, vocab_size=400)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(_files(tmp_path / "a"))

    loaded = AutoTokenizer.from_pretrained(str(tmp_path / "a"))
    text = "The zorblat eats berries."
    assert loaded(text)["input_ids"] == returned(text)["input_ids"] == again(text)["input_ids"]
    assert len(loaded) <= 400
    decoded = loaded.decode(loaded(text)["input_ids"], skip_special_tokens=True)
    assert decoded == (text.lower() if kind == "bert" else text)
    assert loaded.unk_token_id not in loaded(text)["input_ids"]


def test_bert_special_tokens_and_templates(tmp_path):
    tok = train_tokenizer(CORPUS, tmp_path, kind="bert", vocab_size=400)
    ids = {name: tok.convert_tokens_to_ids(name) for name in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]}
    assert ids == {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    assert (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (0, 2, 3, 4)
    assert tok.padding_side == "right"
    single = tok("What does THIS creature eat?")["input_ids"]
    assert single[0] == 2 and single[-1] == 3
    assert tok("WHAT")["input_ids"] == tok("what")["input_ids"]  # lower-cased
    pair = tok("what", "eat")
    assert pair["input_ids"].count(3) == 2 and pair["token_type_ids"][-1] == 1
    batch = tok(["what", "what does this creature eat"], padding=True)
    assert batch["input_ids"][0][-1] == 0 and batch["attention_mask"][0][-1] == 0
    assert "##" in " ".join(tok.convert_ids_to_tokens(tok("zorblatkavimo")["input_ids"]))


def test_t5_special_tokens_eos_and_image_token(tmp_path):
    tok = train_tokenizer(CORPUS, tmp_path, kind="t5", vocab_size=400)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.padding_side == "right"
    ids = tok("berries")["input_ids"]
    assert ids[-1] == 1 and ids.count(1) == 1
    assert tok.image_token == IMAGE_TOKEN
    assert tok.image_token_id == tok.convert_tokens_to_ids(IMAGE_TOKEN)
    image_ids = tok(IMAGE_TOKEN * 3, add_special_tokens=False)["input_ids"]
    assert image_ids == [tok.image_token_id] * 3
    batch = tok(["berries", "what does this creature eat"], padding=True)
    assert batch["input_ids"][0][-1] == 0


def test_causal_bos_left_padding_and_image_token(tmp_path):
    tok = train_tokenizer(CORPUS, tmp_path, kind="causal", vocab_size=400)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.padding_side == "left"
    ids = tok("berries")["input_ids"]
    assert ids[0] == 1 and 2 not in ids
    batch = tok(["berries", "what does this creature eat"], padding=True)
    assert batch["input_ids"][0][0] == 0 and batch["input_ids"][0][-1] != 0
    with_images = tok(f"{IMAGE_TOKEN}{IMAGE_TOKEN} Question: what?")["input_ids"]
    assert with_images[:3] == [1, tok.image_token_id, tok.image_token_id]
    # Byte-level: characters never seen in training still encode without <unk>.
    assert tok.unk_token_id not in tok("naïve ∑")["input_ids"]


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        train_tokenizer(CORPUS, tmp_path, kind="wordpiece")
    with pytest.raises(ValueError, match="empty"):
        train_tokenizer(["", "  "], tmp_path, kind="bert")
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(CORPUS, tmp_path, kind="causal", vocab_size=100)


def test_world_tokenizers_learn_the_rablip_template_words_and_not_the_releases():
    """The synthetic configs use the rablip template: its words are in the tokenizer corpus; the
    release template's are not, so adding that template left the tiny tokenizers (and the demo) as
    they were."""
    from rablip.models import prompts
    from rablip.synthetic.world_tokenizers import prompt_texts

    corpus = " ".join(prompt_texts())
    assert "Short answer:" in corpus and "Relevant reference:" in corpus and "image with caption:" in corpus
    release_words = {"caption of image", "is that", "Title:", "Fact:"}
    assert {word for word in release_words if word in prompts.RELEASE_IMAGE_CAPTION + prompts.RELEASE_TEXT_FACT} == \
        release_words, "the release templates hold these words"
    assert not any(word in corpus for word in release_words)
