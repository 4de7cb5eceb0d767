"""Train small tokenizers from a text corpus and save them as standard Hugging Face tokenizer dirs.

No tokenizer can be downloaded on the CPU path, so tests and the synthetic demo train their own with
the ``tokenizers`` library. The result is saved with ``save_pretrained`` and loads through
``transformers.AutoTokenizer.from_pretrained(out_dir)``, the same path a real checkpoint takes.

Three kinds mirror the real checkpoints rablip uses:

* ``bert``: the Q-Former's tokenizer. Lower-cased WordPiece; ``[PAD]=0, [UNK]=1, [CLS]=2,
  [SEP]=3, [MASK]=4``; ``[CLS] A [SEP]`` (and ``[CLS] A [SEP] B [SEP]`` with token type ids);
  padding on the right.
* ``t5``: Flan-T5-style encoder-decoder LLMs. Cased BPE over a metaspace pre-tokenizer (like
  SentencePiece); ``<pad>=0, </s>=1, <unk>=2``; ``</s>`` appended; padding on the right.
* ``causal``: OPT/LLaMA-style decoder-only LLMs. Byte-level BPE; ``<pad>=0, <s>=1 (bos),
  </s>=2 (eos), <unk>=3``; ``<s>`` prepended; padding on the left (for batched generation).

Both LLM kinds carry ``<image>`` as an additional special token (InstructBLIP's image placeholder in
transformers 5: the processor fills ``num_query_tokens`` of them with projected query outputs). It is
exposed as ``tokenizer.image_token`` / ``tokenizer.image_token_id``, the attributes the
InstructBLIP processor looks for.

Training is deterministic for a fixed corpus: the corpus is de-duplicated in first-seen order and
every kind learns its vocabulary with the ``tokenizers`` BPE trainer, whose output does not depend on
hash order (its WordPiece and Unigram trainers do; see ``_bpe_trainer``).
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

TOKENIZER_KINDS = ("bert", "t5", "causal")
IMAGE_TOKEN = "<image>"
MODEL_MAX_LENGTH = 512

BERT_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
T5_SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>", IMAGE_TOKEN]
CAUSAL_SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", IMAGE_TOKEN]


def _unique_texts(corpus: Iterable[str]) -> list[str]:
    """Keep each non-empty text once, in first-seen order (smaller and order-stable training input)."""
    seen: dict[str, None] = {}
    for text in corpus:
        if not isinstance(text, str):
            raise TypeError(f"tokenizer corpus must hold strings, got {type(text).__name__}: {text!r}")
        text = text.strip()
        if text:
            seen.setdefault(text, None)
    return list(seen)


# Characters every tokenizer knows, so digits and punctuation never become unknown tokens.
_BASE_ALPHABET = sorted(set(string.ascii_letters + string.digits + string.punctuation))
_WORD_START = "\u2581"  # "▁": marks the first piece of a word (SentencePiece convention)


def _bpe_trainer(vocab_size: int, special_tokens: list[str], alphabet: list[str]) -> trainers.BpeTrainer:
    # The BPE trainer is deterministic: the alphabet is sorted by character and merge ties are broken
    # by pair ids, which then follow from the alphabet. (The WordPiece and Unigram trainers are not:
    # they assign ids in hash-map order, so two runs on one corpus can differ.)
    return trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=alphabet,
        show_progress=False,
        min_frequency=1,
    )


def _bert_order(trained: dict[str, int]):
    """Sort key: tokens keep their trained id; added character forms go after all trained tokens."""
    return lambda token: (token not in trained, trained.get(token, 0), token)


def _train_bert(texts: list[str], vocab_size: int) -> Tokenizer:
    """Lower-cased WordPiece, its vocabulary learned by BPE over word-start-marked words.

    This is what the library's own WordPiece trainer does (BPE, then word-start pieces stay bare and
    continuation pieces get ``##``), done with the deterministic BPE trainer.
    """
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    marked_texts = [
        " ".join(_WORD_START + word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
        for text in texts
    ]
    alphabet = sorted({char.lower() for char in _BASE_ALPHABET} | {_WORD_START})
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    bpe.train_from_iterator(marked_texts, trainer=_bpe_trainer(vocab_size, BERT_SPECIAL_TOKENS, alphabet))

    vocab: dict[str, int] = {}
    for piece, _ in sorted(bpe.get_vocab().items(), key=lambda item: item[1]):
        if piece in BERT_SPECIAL_TOKENS:
            token = piece
        elif piece.startswith(_WORD_START):
            token = piece[len(_WORD_START) :]
        else:
            token = "##" + piece
        if token and token not in vocab:
            vocab[token] = len(vocab)
    # A character missing in either position would turn a whole word into [UNK]: add both forms of
    # every character, then drop the last-learned merges until the vocabulary fits again.
    chars = sorted({token.removeprefix("##") for token in vocab if len(token.removeprefix("##")) == 1})
    keep = [*BERT_SPECIAL_TOKENS, *(form for char in chars for form in (char, "##" + char))]
    keep_set = set(keep)
    merged = [token for token in vocab if token not in keep_set]
    tokens = [token for token in vocab if token in keep_set]
    tokens += [token for token in keep if token not in vocab]
    tokens += merged[: max(0, vocab_size - len(tokens))]
    vocab = {token: index for index, token in enumerate(sorted(tokens, key=_bert_order(vocab)))}

    tokenizer = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return tokenizer


def _train_t5(texts: list[str], vocab_size: int) -> Tokenizer:
    """Cased SentencePiece-style BPE over a metaspace pre-tokenizer (T5 itself uses Unigram, whose
    trainer is not deterministic; the contract later stages rely on is the ids and templates)."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace("\n", " ")])
    # Punctuation is split off (unlike T5's SentencePiece), so "1995." holds the answer token "1995"
    # and a small vocabulary is not spent on word + punctuation pairs.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement=_WORD_START, prepend_scheme="always"),
            pre_tokenizers.Punctuation(behavior="isolated"),
        ]
    )
    tokenizer.decoder = decoders.Metaspace(replacement=_WORD_START, prepend_scheme="always")
    alphabet = [*_BASE_ALPHABET, _WORD_START]
    tokenizer.train_from_iterator(texts, trainer=_bpe_trainer(vocab_size, T5_SPECIAL_TOKENS, alphabet))
    eos_id = tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B:1 </s>:1", special_tokens=[("</s>", eos_id)]
    )
    return tokenizer


def _train_causal(texts: list[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE (GPT-2/OPT style): every string encodes, nothing is unknown."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tokenizer.train_from_iterator(texts, trainer=_bpe_trainer(vocab_size, CAUSAL_SPECIAL_TOKENS, alphabet))
    bos_id = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B:1", special_tokens=[("<s>", bos_id)]
    )
    return tokenizer


def _wrap(tokenizer: Tokenizer, kind: str) -> PreTrainedTokenizerFast:
    """Wrap a trained tokenizer in the transformers class, with the kind's special tokens and padding."""
    if kind == "bert":
        return PreTrainedTokenizerFast(
            tokenizer_object=tokenizer,
            pad_token="[PAD]",
            unk_token="[UNK]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
            padding_side="right",
            model_input_names=["input_ids", "token_type_ids", "attention_mask"],
            model_max_length=MODEL_MAX_LENGTH,
        )
    if kind == "t5":
        return PreTrainedTokenizerFast(
            tokenizer_object=tokenizer,
            pad_token="<pad>",
            eos_token="</s>",
            unk_token="<unk>",
            padding_side="right",
            model_max_length=MODEL_MAX_LENGTH,
            extra_special_tokens={"image_token": IMAGE_TOKEN},
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side="left",
        model_max_length=MODEL_MAX_LENGTH,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )


_TRAINERS = {"bert": _train_bert, "t5": _train_t5, "causal": _train_causal}
# Byte-level BPE starts from all 256 bytes; the others need room for specials and characters.
_MIN_VOCAB = {"bert": 64, "t5": 64, "causal": 256 + len(CAUSAL_SPECIAL_TOKENS)}


def train_tokenizer(
    corpus: Iterable[str], out_dir: str | Path, *, kind: str, vocab_size: int = 1000
) -> PreTrainedTokenizerFast:
    """Train a ``kind`` tokenizer (``bert``, ``t5`` or ``causal``) on ``corpus`` and save it to ``out_dir``.

    Returns the tokenizer as loaded back from ``out_dir`` with ``AutoTokenizer.from_pretrained``, so
    callers use exactly what later stages will load. ``vocab_size`` is an upper bound: a small corpus
    yields fewer tokens. The same corpus (in the same order) gives byte-identical files.
    """
    if kind not in _TRAINERS:
        raise ValueError(f"tokenizer kind must be one of {TOKENIZER_KINDS}, got {kind!r}")
    texts = _unique_texts(corpus)
    if not texts:
        raise ValueError(f"cannot train a {kind!r} tokenizer on an empty corpus")
    minimum = _MIN_VOCAB[kind]
    if vocab_size < minimum:
        raise ValueError(f"a {kind!r} tokenizer needs vocab_size >= {minimum}, got {vocab_size}")
    tokenizer = _TRAINERS[kind](texts, vocab_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _wrap(tokenizer, kind).save_pretrained(str(out_dir))
    return AutoTokenizer.from_pretrained(str(out_dir))
