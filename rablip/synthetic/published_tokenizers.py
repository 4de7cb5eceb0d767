"""Build tokenizers at the published sizes and special-token ids of real checkpoints, without downloads.

Random-weight checkpoints at the real sizes need tokenizers whose ``len`` and special ids match the
published ones (embedding rows, ``image_token_index``, ``pad_token_id`` ...), but no tokenizer can be
downloaded on the CPU path. This module constructs them directly, in well under a second each: the
vocabulary content is synthetic (letter pieces), while the size, the special tokens and their ids, the
bos/eos templates, the model type, normalisation and pre-tokenisation follow the real tokenizer. Each
is saved with ``save_pretrained`` by the same transformers class the real checkpoint names, so
``transformers.AutoTokenizer.from_pretrained(out_dir)`` loads it like the real one.

Kinds (``PUBLISHED_TOKENIZER_FACTS`` holds the ids the tests check):

* ``flan_t5``: ``T5Tokenizer`` (Unigram over ``▁`` metaspace, like SentencePiece): ``<pad>=0, </s>=1,
  <unk>=2``, 32000 pieces, ``<extra_id_0>`` .. ``<extra_id_99>`` at 32099 .. 32000, ``<image>=32100``
  (InstructBLIP-Flan-T5's image_token_index); ``</s>`` appended, no bos; padding right.
* ``bert_qformer`` / ``bert_blip2``: ``BertTokenizer``, lower-cased WordPiece laid out like
  bert-base-uncased (30522: ``[PAD]=0, [unused0..]=1.., [UNK]=100, [CLS]=101, [SEP]=102,
  [MASK]=103``); the InstructBLIP Q-Former one adds ``[DEC]=30522`` as bos (30523).
* ``vicuna_instructblip``: ``LlamaTokenizer`` (byte-fallback BPE, ``▁`` convention, 32000:
  ``<unk>=0, <s>=1, </s>=2``, ``<0x00>`` .. ``<0xFF>`` at 3 .. 258); ``<s>`` prepended, no eos;
  ``[PAD]=32000`` (pad), ``<image>=32001``, ``<video>=32002``.
* ``llava15``: the same LLaMA base with ``<image>=32000`` and ``<pad>=32001`` (pad).
* ``opt``: ``GPT2Tokenizer`` (byte-level BPE, 50265: ``<s>=0, <pad>=1, </s>=2, <unk>=3``); like OPT's
  files, bos, eos and unk are all ``</s>`` (2) and ``</s>`` is prepended; ``<image>=50265``.

Pieces are grown by length from the base characters (every printable ASCII character is a base
piece, so English text never becomes unknown), word-start forms first, and every BPE merge joins a
piece's prefix with its last character, so the merges are consistent with the vocabulary. Nothing is
trained or hashed: two builds give byte-identical files.
"""

from __future__ import annotations

import itertools
import string
from collections.abc import Iterator
from pathlib import Path

from tokenizers import AddedToken
from transformers import BertTokenizer, GPT2Tokenizer, LlamaTokenizer, PreTrainedTokenizerFast, T5Tokenizer

PUBLISHED_TOKENIZER_KINDS = ("flan_t5", "bert_qformer", "bert_blip2", "vicuna_instructblip", "llava15", "opt")
IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"

# Expected facts per kind: ``len(tokenizer)``, special ids, and the ids every single-text encoding
# starts (``first_id``) and ends (``last_id``) with; None where the tokenizer has no such token.
PUBLISHED_TOKENIZER_FACTS: dict[str, dict[str, int | None]] = {
    "flan_t5": {"len": 32101, "image_token_id": 32100, "pad_token_id": 0, "bos_token_id": None,
                "eos_token_id": 1, "unk_token_id": 2, "first_id": None, "last_id": 1},
    "bert_qformer": {"len": 30523, "image_token_id": None, "pad_token_id": 0, "bos_token_id": 30522,
                     "eos_token_id": None, "unk_token_id": 100, "first_id": 101, "last_id": 102},
    "bert_blip2": {"len": 30522, "image_token_id": None, "pad_token_id": 0, "bos_token_id": None,
                   "eos_token_id": None, "unk_token_id": 100, "first_id": 101, "last_id": 102},
    "vicuna_instructblip": {"len": 32003, "image_token_id": 32001, "pad_token_id": 32000, "bos_token_id": 1,
                            "eos_token_id": 2, "unk_token_id": 0, "first_id": 1, "last_id": None},
    "llava15": {"len": 32002, "image_token_id": 32000, "pad_token_id": 32001, "bos_token_id": 1,
                "eos_token_id": 2, "unk_token_id": 0, "first_id": 1, "last_id": None},
    "opt": {"len": 50266, "image_token_id": 50265, "pad_token_id": 1, "bos_token_id": 2,
            "eos_token_id": 2, "unk_token_id": 2, "first_id": 2, "last_id": None},
}

T5_PIECES, T5_EXTRA_IDS = 32000, 100
BERT_SIZE, BERT_UNUSED = 30522, 994
LLAMA_SIZE = 32000
OPT_SIZE = 50265
MODEL_MAX_LENGTH = 512  # T5 and BERT; the LLaMA and OPT files leave it unset

_METASPACE = "\u2581"  # "▁": SentencePiece's word-start mark (T5, LLaMA)
_PRINTABLE = [char for char in string.printable if char.isprintable() and char != " "]  # 94 characters


def _grown_pieces(word_start: str, continuation: str, count: int, capitals: bool = False) -> list[str]:
    """The first ``count`` pieces grown from lower-case letters, shortest first.

    For ``n`` = 1, 2, ... letters: word-start pieces ``word_start + s`` (with ``n == 1`` also the
    capitals when ``capitals``; none when ``word_start`` is empty: those are base characters), then,
    from two letters on, inside-word pieces ``continuation + s``.
    Each level is complete before the next starts, so every piece's prefix without its last letter
    is itself a piece (or a base character): the merge ``(prefix, last letter)`` is always valid.
    """

    def letters(length: int) -> Iterator[str]:
        yield from ("".join(chars) for chars in itertools.product(string.ascii_lowercase, repeat=length))
        if length == 1 and capitals:
            yield from string.ascii_uppercase

    def generate() -> Iterator[str]:
        for length in itertools.count(1):
            if word_start or length > 1:  # bare single letters are base characters
                yield from (word_start + s for s in letters(length))
            if length > 1:
                yield from (continuation + s for s in letters(length))

    return list(itertools.islice(generate(), count))


def _merges(pieces: list[str]) -> list[tuple[str, str]]:
    """BPE merges in piece order: each piece is its prefix joined with its last character."""
    return [(piece[:-1], piece[-1]) for piece in pieces]


def _special(content: str) -> AddedToken:
    return AddedToken(content, special=True, normalized=False)


def _build_flan_t5() -> PreTrainedTokenizerFast:
    """Unigram like Flan-T5's SentencePiece model; the pieces' scores make longer pieces win."""
    base = ["<pad>", "</s>", "<unk>", _METASPACE, *_PRINTABLE]
    pieces = _grown_pieces(_METASPACE, "", T5_PIECES - len(base), capitals=True)
    vocab = [(token, 0.0) for token in base[:3]]
    vocab += [(token, -10.0) for token in base[3:]]
    vocab += [(piece, -round(2.0 + index / 10000, 4)) for index, piece in enumerate(pieces)]
    # As in transformers' T5 converter: the sentinels are the last model pieces, <extra_id_0> highest.
    vocab += [(f"<extra_id_{i}>", 0.0) for i in range(T5_EXTRA_IDS - 1, -1, -1)]
    return T5Tokenizer(
        vocab=vocab,
        extra_ids=T5_EXTRA_IDS,
        additional_special_tokens=[f"<extra_id_{i}>" for i in range(T5_EXTRA_IDS)],
        extra_special_tokens={"image_token": _special(IMAGE_TOKEN)},
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="right",
        truncation_side="left",  # InstructBLIP's conversion loads Flan-T5 with truncation_side="left"
    )


def _bert_vocab() -> dict[str, int]:
    """bert-base-uncased's layout: specials among ``[unused*]`` up to 998, characters, words, ``##`` chars."""
    unused = iter(f"[unused{i}]" for i in range(BERT_UNUSED))
    tokens = ["[PAD]", *itertools.islice(unused, 99), "[UNK]", "[CLS]", "[SEP]", "[MASK]", *unused]
    chars = sorted({char.lower() for char in _PRINTABLE})
    pieces = _grown_pieces("", "##", BERT_SIZE - len(tokens) - 2 * len(chars))
    tokens += [*chars, *pieces, *("##" + char for char in chars)]
    return {token: index for index, token in enumerate(tokens)}


def _build_bert(with_dec: bool) -> PreTrainedTokenizerFast:
    """bert-base-uncased; the InstructBLIP Q-Former adds ``[DEC]`` as bos (and truncates on the left)."""
    extra: dict[str, object] = {"bos_token": _special("[DEC]"), "truncation_side": "left"} if with_dec else {}
    return BertTokenizer(
        vocab=_bert_vocab(),
        do_lower_case=True,
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="right",
        **extra,
    )


def _llama_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """LLaMA's layout: ``<unk>, <s>, </s>``, 256 byte tokens, merged pieces, single characters last."""
    head = ["<unk>", "<s>", "</s>", *(f"<0x{byte:02X}>" for byte in range(256))]
    chars = [_METASPACE, *_PRINTABLE]
    pieces = _grown_pieces(_METASPACE, "", LLAMA_SIZE - len(head) - len(chars), capitals=True)
    vocab = {token: index for index, token in enumerate([*head, *pieces, *chars])}
    return vocab, _merges(pieces)


def _build_llama(kind: str) -> PreTrainedTokenizerFast:
    """Vicuna's LLaMA tokenizer plus the checkpoint's added tokens, in the published order."""
    vocab, merges = _llama_vocab()
    common = {"vocab": vocab, "merges": merges, "add_bos_token": True, "add_eos_token": False,
              "legacy": False, "padding_side": "left"}
    if kind == "vicuna_instructblip":  # [PAD] 32000, <image> 32001, <video> 32002
        return LlamaTokenizer(
            pad_token=_special("[PAD]"),
            extra_special_tokens={"image_token": _special(IMAGE_TOKEN), "video_token": _special(VIDEO_TOKEN)},
            truncation_side="left",
            **common,
        )
    tokenizer = LlamaTokenizer(extra_special_tokens={"image_token": _special(IMAGE_TOKEN)}, **common)
    tokenizer.add_special_tokens({"pad_token": _special("<pad>")})  # after <image>: 32001
    return tokenizer


def _byte_alphabet() -> list[str]:
    """GPT-2's 256 byte characters in its id order (printable bytes first, the others shifted past 255)."""
    ranges = (("!", "~"), ("\u00a1", "\u00ac"), ("\u00ae", "\u00ff"))
    printable = [byte for first, last in ranges for byte in range(ord(first), ord(last) + 1)]
    shifted = [byte for byte in range(256) if byte not in printable]
    return [chr(byte) for byte in printable] + [chr(256 + index) for index in range(len(shifted))]


def _build_opt() -> PreTrainedTokenizerFast:
    """OPT's GPT-2 byte-level BPE: ``Ġ`` marks a leading space; ``</s>`` is bos, eos and unk."""
    head = ["<s>", "<pad>", "</s>", "<unk>", *_byte_alphabet()]
    pieces = _grown_pieces("\u0120", "", OPT_SIZE - len(head), capitals=True)  # "Ġ" is the space byte
    vocab = {token: index for index, token in enumerate([*head, *pieces])}
    return GPT2Tokenizer(
        vocab=vocab,
        merges=_merges(pieces),
        errors="replace",
        bos_token=_special("</s>"),
        eos_token=_special("</s>"),
        unk_token=_special("</s>"),
        pad_token=_special("<pad>"),
        add_bos_token=True,
        add_eos_token=False,
        add_prefix_space=False,
        extra_special_tokens={"image_token": _special(IMAGE_TOKEN)},
        padding_side="right",
    )


def _build(kind: str) -> PreTrainedTokenizerFast:
    if kind == "flan_t5":
        return _build_flan_t5()
    if kind in ("bert_qformer", "bert_blip2"):
        return _build_bert(with_dec=kind == "bert_qformer")
    if kind in ("vicuna_instructblip", "llava15"):
        return _build_llama(kind)
    return _build_opt()


_ID_NAMES = ("pad_token_id", "bos_token_id", "eos_token_id", "unk_token_id")


def _check(tokenizer: PreTrainedTokenizerFast, kind: str) -> None:
    """Fail loudly if the built tokenizer drifts from the published facts (e.g. after a library change)."""
    facts = PUBLISHED_TOKENIZER_FACTS[kind]
    found: dict[str, int | None] = {name: getattr(tokenizer, name) for name in _ID_NAMES}
    found["len"] = len(tokenizer)
    has_image = facts["image_token_id"] is not None
    found["image_token_id"] = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) if has_image else None
    wrong = {name: (found[name], facts[name]) for name in found if found[name] != facts[name]}
    if wrong:
        raise RuntimeError(f"{kind!r} tokenizer differs from the published facts (found, expected): {wrong}")


def write_published_tokenizer(kind: str, out_dir: str | Path) -> Path:
    """Build the ``kind`` tokenizer (one of ``PUBLISHED_TOKENIZER_KINDS``) and save it to ``out_dir``.

    The directory then loads with ``transformers.AutoTokenizer.from_pretrained`` as the transformers
    class the real checkpoint names; its size and special ids are ``PUBLISHED_TOKENIZER_FACTS[kind]``.
    Returns ``out_dir`` as a ``Path``. The same kind always gives byte-identical files.
    """
    if kind not in PUBLISHED_TOKENIZER_KINDS:
        raise ValueError(f"published tokenizer kind must be one of {PUBLISHED_TOKENIZER_KINDS}, got {kind!r}")
    tokenizer = _build(kind)
    _check(tokenizer, kind)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    return out_dir
