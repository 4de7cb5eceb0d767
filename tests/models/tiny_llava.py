"""A tiny transformers LLaVA checkpoint dir, built in the tests: a 2-layer CLIP vision tower (28 px,
14 px patches: 4 image tokens per image), the 2-layer MLP projector and a 2-layer LLaMA, saved with
``save_pretrained`` beside a word-level tokenizer (``<s>`` prepended, ``<image>`` special) and a
``CLIPImageProcessor``, as llava-hf/llava-1.5-7b-hf is laid out."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
)

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
    (a multiple of 14: (image_size / 14)^2 image tokens per image)."""
    tokenizer = tokenizer or tiny_tokenizer()
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=image_size, patch_size=PATCH_SIZE, projection_dim=32)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                         image_seq_length=(image_size // PATCH_SIZE) ** 2)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            norm = parameter.dim() == 1 and "norm" in name and name.endswith("weight")
            parameter.copy_(1.0 + 0.1 * noise if norm else 0.1 * noise)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                       do_center_crop=True).save_pretrained(out_dir)
    return out_dir
