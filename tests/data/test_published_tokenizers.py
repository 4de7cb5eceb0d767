"""Tokenizers built at published sizes load through AutoTokenizer with the real checkpoints' ids and templates."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from rablip.synthetic.published_tokenizers import (
    IMAGE_TOKEN,
    PUBLISHED_TOKENIZER_FACTS,
    PUBLISHED_TOKENIZER_KINDS,
    write_published_tokenizer,
)

TEXT = "What is unusual about this image? It was taken in 1995, at 3:45pm (approx. 20% off) -- see #7 & {x}!"
CLASSES = {"flan_t5": "T5Tokenizer", "bert_qformer": "BertTokenizer", "bert_blip2": "BertTokenizer",
           "vicuna_instructblip": "LlamaTokenizer", "llava15": "LlamaTokenizer", "opt": "GPT2Tokenizer"}


def _files(directory) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every kind built once into its own directory and loaded back with AutoTokenizer."""
    root = tmp_path_factory.mktemp("published")
    return {kind: (write_published_tokenizer(kind, root / kind), AutoTokenizer.from_pretrained(str(root / kind)))
            for kind in PUBLISHED_TOKENIZER_KINDS}


@pytest.mark.parametrize("kind", PUBLISHED_TOKENIZER_KINDS)
def test_sizes_special_ids_and_templates(built, kind):
    _, tok = built[kind]
    facts = PUBLISHED_TOKENIZER_FACTS[kind]
    assert type(tok).__name__ == CLASSES[kind]
    assert len(tok) == facts["len"]
    found = {name: getattr(tok, name) for name in ("pad_token_id", "bos_token_id", "eos_token_id", "unk_token_id")}
    assert found == {name: facts[name] for name in found}
    ids = tok(TEXT)["input_ids"]
    assert (ids[0] == facts["first_id"]) if facts["first_id"] is not None else ids[0] not in tok.all_special_ids
    assert (ids[-1] == facts["last_id"]) if facts["last_id"] is not None else ids[-1] not in tok.all_special_ids
    specials = [i for i in ids if i in tok.all_special_ids]
    assert specials == [i for i in (facts["first_id"], facts["last_id"]) if i is not None]  # no <unk> inside


@pytest.mark.parametrize("kind", PUBLISHED_TOKENIZER_KINDS)
def test_round_trip_and_image_token(built, kind):
    _, tok = built[kind]
    decoded = tok.decode(tok(TEXT)["input_ids"], skip_special_tokens=True)
    if kind.startswith("bert"):  # lower-cased, punctuation split off by the pre-tokenizer
        assert decoded.replace(" ", "") == TEXT.lower().replace(" ", "")
    else:
        assert decoded == TEXT
    image_id = PUBLISHED_TOKENIZER_FACTS[kind]["image_token_id"]
    if image_id is None:
        assert IMAGE_TOKEN not in tok.get_vocab()
        return
    assert tok.image_token == IMAGE_TOKEN and tok.image_token_id == image_id
    ids = tok(f"Question: {IMAGE_TOKEN} what is it?")["input_ids"]
    assert ids.count(image_id) == 1
    assert tok(IMAGE_TOKEN, add_special_tokens=False)["input_ids"] == [image_id]
    assert IMAGE_TOKEN not in tok.decode(ids, skip_special_tokens=True)


def test_layouts_match_the_real_vocabularies(built):
    t5 = built["flan_t5"][1]
    assert t5.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_99>"]) == [32099, 32000]
    assert t5.padding_side == "right" and t5.model_max_length == 512
    assert t5("a b")["input_ids"].count(1) == 1  # </s> once, at the end

    for kind in ("bert_qformer", "bert_blip2"):
        bert = built[kind][1]
        assert bert.convert_tokens_to_ids(["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "!"]) == [
            0, 1, 100, 101, 102, 103, 999]
        assert bert("WHAT")["input_ids"] == bert("what")["input_ids"]
        assert any(token.startswith("##") for token in bert.tokenize("zorblatkavimo"))
        assert bert("what", "eat")["token_type_ids"][-1] == 1
    assert built["bert_qformer"][1].bos_token == "[DEC]" and built["bert_blip2"][1].bos_token is None

    for kind in ("vicuna_instructblip", "llava15"):
        llama = built[kind][1]
        assert llama.convert_tokens_to_ids(["<unk>", "<s>", "</s>", "<0x00>", "<0xFF>"]) == [0, 1, 2, 3, 258]
        assert llama("a\nb", add_special_tokens=False)["input_ids"].count(llama.convert_tokens_to_ids("<0x0A>")) == 1
    vicuna = built["vicuna_instructblip"][1]
    assert vicuna.convert_tokens_to_ids(["[PAD]", "<image>", "<video>"]) == [32000, 32001, 32002]
    assert vicuna.pad_token == "[PAD]" and vicuna.video_token == "<video>"
    assert built["llava15"][1].pad_token == "<pad>"

    opt = built["opt"][1]
    assert opt.convert_tokens_to_ids(["<s>", "<pad>", "</s>", "<unk>"]) == [0, 1, 2, 3]
    assert opt.bos_token == opt.eos_token == "</s>"
    batch = opt(["hi", "hello there you"], padding=True)["input_ids"]
    assert batch[0][-1] == 1  # padded on the right with <pad>


@pytest.mark.parametrize("kind", PUBLISHED_TOKENIZER_KINDS)
def test_builds_are_byte_identical(built, tmp_path, kind):
    first_dir, _ = built[kind]
    again = write_published_tokenizer(kind, tmp_path / "again")
    assert again == tmp_path / "again"
    assert _files(first_dir) == _files(again)


def test_unknown_kind_is_refused(tmp_path):
    with pytest.raises(ValueError, match="must be one of"):
        write_published_tokenizer("gpt4", tmp_path)
