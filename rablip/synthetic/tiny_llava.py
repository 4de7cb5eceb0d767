"""Build a tiny transformers LLaVA dir (RORA-VLM's generator family at toy size): a CLIP vision tower, the
2-layer MLP projector and a LLaMA, saved with ``save_pretrained`` beside a tokenizer that holds ``<image>``
and a ``CLIPImageProcessor``, as llava-hf/llava-1.5-7b-hf is laid out, so it loads like a published one.

:func:`build_llava_checkpoint` builds one of any sizes (the tests' tiny LLaVA); :func:`build_world_llava` the
synthetic world's (``tiny-llava/``, ``make_synthetic(..., parts=("llava",))``): a causal tokenizer trained
on the world's texts and every prompt template's words, the tiny model's sizes (``model.vision_*`` for the
CLIP tower, ``model.llm_*`` for the LLaMA, whatever ``model.llm_type`` says; ``model.patch_size`` at the world's image size: 64 image tokens per
64 px image by default), transformers' own seeded initialisation, with ``model.llm_copy_init``
copy-ready attention (:func:`rablip.synthetic.build.copy_ready_attention`), and the tiny InstructBLIP
generator's warm-ups (``warmup.vision_steps`` viewing for the CLIP tower, ``warmup.reading_steps`` reading
for the LLaMA: :mod:`rablip.synthetic.llava_warmup`), standing in for pre-trained CLIP and LLM weights.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerBase,
)

from rablip.errors import DataError
from rablip.synthetic.build import IMAGE_TOKEN, copy_ready_attention
from rablip.synthetic.files import load_manifest
from rablip.synthetic.generator_warmups import log_warm_ups
from rablip.synthetic.llava_warmup import warm_up_llava
from rablip.synthetic.settings import SyntheticSettings
from rablip.synthetic.tokenizer_training import train_tokenizer
from rablip.synthetic.world_tokenizers import prompt_texts, world_texts
from rablip.utils.logging import get_logger

log = get_logger("rablip.synthetic")
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
WORLD_VISION_FEATURE_LAYER = -1
"""The world's LLaVA projector reads the CLIP tower's last layer, not LLaVA-1.5's penultimate (-2): of a
2-layer tower the penultimate is one layer over the patches. Measured on the seed-0 world: the viewing
warm-up's loss ended at 1.32 here against 1.67 at -2 (the tiny InstructBLIP's ResNet: 0.07); the fine-tuned
RORA run's test accuracy moved little (unseen-entity knowledge 69.7 -> 71.2, visual 89.6 both)."""


def build_llava_checkpoint(out_dir: str | Path, tokenizer: PreTrainedTokenizerBase, *, image_size: int,
                           patch_size: int, vision_hidden_size: int = 32, vision_intermediate_size: int = 64,
                           vision_layers: int = 2, vision_heads: int = 4, llm_hidden_size: int = 32,
                           llm_intermediate_size: int = 64, llm_layers: int = 2, llm_heads: int = 4,
                           tie_embeddings: bool = False, seed: int = 0, init: str = "spread",
                           vision_feature_layer: int = -2) -> Path:
    """Save a ``LlavaForConditionalGeneration`` dir with ``tokenizer`` (it must hold ``<image>``) and a
    ``CLIPImageProcessor`` for ``image_size`` px images: (image_size / patch_size)^2 image tokens per image.

    ``init``: ``"spread"`` (every weight N(0, 0.1), norms near 1: every input visibly changes the output,
    for model tests) or ``"trainable"`` (transformers' own seeded initialisation, which learns well).
    ``vision_feature_layer``: the CLIP layer the projector reads (LLaVA-1.5's -2, the penultimate)."""
    if init not in ("spread", "trainable"):
        raise ValueError(f"init must be 'spread' or 'trainable', got {init!r}")
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        raise ValueError(f"the tokenizer has no {IMAGE_TOKEN} token")
    vision = CLIPVisionConfig(hidden_size=vision_hidden_size, intermediate_size=vision_intermediate_size,
                              num_hidden_layers=vision_layers, num_attention_heads=vision_heads,
                              image_size=image_size, patch_size=patch_size, projection_dim=vision_hidden_size)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=llm_hidden_size, intermediate_size=llm_intermediate_size,
                       num_hidden_layers=llm_layers, num_attention_heads=llm_heads, num_key_value_heads=llm_heads,
                       max_position_embeddings=1024, tie_word_embeddings=tie_embeddings,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                         image_seq_length=(image_size // patch_size) ** 2, tie_word_embeddings=tie_embeddings,
                         vision_feature_layer=vision_feature_layer)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    if init == "spread":
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                noise = torch.randn(parameter.shape, generator=generator)
                norm = parameter.dim() == 1 and "norm" in name and name.endswith("weight")
                parameter.copy_(1.0 + 0.1 * noise if norm else 0.1 * noise)
    return save_llava(model, tokenizer, out_dir, image_size)


def save_llava(model: LlavaForConditionalGeneration, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path,
               image_size: int) -> Path:
    """Save ``model``, ``tokenizer`` and a CLIPImageProcessor for ``image_size`` px images into ``out_dir``."""
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                       do_center_crop=True, image_mean=CLIP_MEAN, image_std=CLIP_STD).save_pretrained(out_dir)
    return out_dir


def build_world_llava(world_dir: str | Path, out_dir: str | Path, settings: SyntheticSettings) -> Path:
    """Build the synthetic world's tiny LLaVA (module docstring) into ``out_dir`` (which must not exist or be
    empty); built beside it and renamed into place, so a failure leaves nothing."""
    path, sizes = Path(out_dir), settings.model
    if path.exists() and any(path.iterdir()):
        raise DataError(f"{path} is not empty; remove it to build the tiny LLaVA there again.")
    image_size = int(load_manifest(world_dir)["settings"]["image_size"])  # the world's, whatever the settings say
    tmp = path.with_name(f".tmp-{path.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        corpus = [*prompt_texts(include_release=True), *world_texts(world_dir)]
        tokenizer = train_tokenizer(corpus, tmp / "tokenizer", kind="causal", vocab_size=sizes.tokenizer_vocab_size)
        model_dir = build_llava_checkpoint(
            tmp / "model", tokenizer, image_size=image_size, patch_size=sizes.patch_size,
            vision_hidden_size=sizes.vision_hidden_size, vision_intermediate_size=sizes.vision_intermediate_size,
            vision_layers=sizes.vision_layers, vision_heads=sizes.vision_heads, llm_hidden_size=sizes.llm_hidden_size,
            llm_intermediate_size=sizes.llm_intermediate_size, llm_layers=sizes.llm_layers, llm_heads=sizes.llm_heads,
            tie_embeddings=sizes.llm_tie_embeddings, seed=settings.seed, init="trainable",
            vision_feature_layer=WORLD_VISION_FEATURE_LAYER)
        warmup = settings.warmup
        if sizes.llm_copy_init or warmup.vision_steps or warmup.reading_steps:
            model = LlavaForConditionalGeneration.from_pretrained(str(model_dir))
            if sizes.llm_copy_init:
                log.info("copy-ready LLaVA LLM attention: %d layers", copy_ready_attention(model.model.language_model))
            losses = warm_up_llava(model, tokenizer, CLIPImageProcessor.from_pretrained(str(model_dir)),
                                   load_manifest(world_dir)["entities"], vision_steps=warmup.vision_steps,
                                   reading_steps=warmup.reading_steps, seed=settings.seed,
                                   scene_share=warmup.scene_share)
            log_warm_ups(losses, prefix="LLaVA ")
            save_llava(model, tokenizer, model_dir, image_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.rmdir()
        model_dir.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("built the tiny LLaVA checkpoint at %s", path)
    return path
