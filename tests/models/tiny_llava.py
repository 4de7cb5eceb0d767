"""A tiny transformers LLaVA checkpoint dir, built in the tests: a 2-layer CLIP vision tower (28 px,
14 px patches: 4 image tokens per image), the 2-layer MLP projector and a 2-layer LLaMA, saved with
``save_pretrained`` beside a word-level tokenizer (``<s>`` prepended, ``<image>`` special) and a
``CLIPImageProcessor``, as llava-hf/llava-1.5-7b-hf is laid out."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from rablip.synthetic.tiny_llava import build_llava_checkpoint

WORDS = ("what who where which is the a of in on color name this picture reference answer short question "
         "red blue green castle tower bridge built year city river : ? . , 1 2 3 4 5 6 7 8 9 0").split()
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
IMAGE_SIZE = 28
PATCH_SIZE = 14


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over :data:`WORDS` that prepends ``<s>`` (as LLaMA's does)."""
    vocab = {token: index for index, token in enumerate(SPECIALS + list(WORDS))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                     pre_tokenizers.Punctuation()])
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                        eos_token="</s>", pad_token="<pad>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tokenizer


def build_tiny_llava(out_dir: Path, seed: int = 0, tokenizer: PreTrainedTokenizerFast | None = None,
                     image_size: int = IMAGE_SIZE) -> Path:
    """Save a tiny ``LlavaForConditionalGeneration`` dir with random (seeded, N(0, 0.1)) weights, with
    ``tokenizer`` (it must hold ``<image>``; default :func:`tiny_tokenizer`), for ``image_size`` px images
    (a multiple of 14: (image_size / 14)^2 image tokens per image); built by
    :func:`rablip.synthetic.tiny_llava.build_llava_checkpoint` (32 wide, 2 layers everywhere)."""
    return build_llava_checkpoint(out_dir, tokenizer or tiny_tokenizer(), image_size=image_size,
                                  patch_size=PATCH_SIZE, seed=seed, init="spread")
