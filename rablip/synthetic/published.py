"""Random-weight checkpoints in the published layouts and at the published sizes.

No weights can be downloaded here, yet the real sizes must run: :func:`write_published_checkpoint`
writes a transformers checkpoint dir laid out as the published one (``config.json`` with its sizes,
sharded safetensors in the run's dtype, the LLM tokenizer, ``qformer_tokenizer/`` and the image
processor at the published vocabulary sizes and special-token ids, built locally by
:mod:`rablip.synthetic.published_tokenizers`). Random weights exercise every code path, shape and byte
of memory of the real checkpoint; only the answers are meaningless.

The sizes are those of ``reference/published_sizes.md`` (read from the published ``config.json`` files):

- ``instructblip_flant5xl`` / ``instructblip_flant5xxl``: Salesforce/instructblip-flan-t5-xl / -xxl;
- ``instructblip_vicuna7b``: Salesforce/instructblip-vicuna-7b (the 2024 layout: vocab 32064);
- ``blip2_opt2.7b``: Salesforce/blip2-opt-2.7b (the 2024 layout: vocab 50304);
- ``llava15_7b``: llava-hf/llava-1.5-7b-hf;
- ``instructblip_t5base`` / ``instructblip_t5large``: RA-BLIP's pairings of InstructBLIP Flan-T5-XL's
  vision tower and Q-Former with google/t5-base / t5-large, as ``scripts/compose_generator.py`` writes
  them (new projection, exact gelu feed-forward as the release sets).

``reduced=True`` keeps every layout, vocabulary and special id but shrinks widths and depths, so the
same code paths run in seconds (the tests of the benchmark scripts).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    BlipImageProcessor,
    CLIPImageProcessor,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PretrainedConfig,
)

from rablip.synthetic.published_tokenizers import write_published_tokenizer

# EVA ViT-g/14 of the four Salesforce checkpoints, and their Q-Former.
EVA_VIT_G = {"hidden_size": 1408, "intermediate_size": 6144, "num_hidden_layers": 39, "num_attention_heads": 16,
             "image_size": 224, "patch_size": 14, "layer_norm_eps": 1e-6, "qkv_bias": True, "hidden_act": "gelu"}
QFORMER = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
           "cross_attention_frequency": 2, "encoder_hidden_size": 1408, "max_position_embeddings": 512,
           "layer_norm_eps": 1e-12}
CLIP_VIT_L_336 = {"model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
                  "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 336, "patch_size": 14,
                  "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": 768}


def _t5(d_model: int, d_ff: int, heads: int, layers: int, act: str, tied: bool) -> dict[str, Any]:
    return {"model_type": "t5", "vocab_size": 32128, "d_model": d_model, "d_ff": d_ff, "d_kv": 64, "num_heads": heads,
            "num_layers": layers, "num_decoder_layers": layers, "feed_forward_proj": act,
            "tie_word_embeddings": tied, "layer_norm_epsilon": 1e-6, "pad_token_id": 0, "eos_token_id": 1,
            "decoder_start_token_id": 0, "dropout_rate": 0.1}


def _llama(rms_eps: float, max_positions: int, pad: int) -> dict[str, Any]:
    return {"model_type": "llama", "vocab_size": 32064, "hidden_size": 4096, "intermediate_size": 11008,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "rms_norm_eps": rms_eps,
            "max_position_embeddings": max_positions, "tie_word_embeddings": False, "pad_token_id": pad,
            "bos_token_id": 1, "eos_token_id": 2}


@dataclass(frozen=True)
class PublishedModel:
    """One published checkpoint: its family, sub-configs, tokenizers and what it was published as."""

    family: str
    """instructblip, blip-2 or llava (the transformers class that saves and loads it)."""
    text: dict[str, Any]
    tokenizer: str
    """Kind of :func:`write_published_tokenizer` for the LLM tokenizer."""
    image_token_index: int
    published_as: str
    """The published repository (or pairing) whose layout this is."""
    published_parameters: str
    """The published parameter count and where it comes from."""
    qformer_tokenizer: str = "bert_qformer"


PUBLISHED: dict[str, PublishedModel] = {
    "instructblip_flant5xl": PublishedModel(
        "instructblip", _t5(2048, 5120, 32, 24, "gated-gelu", False), "flan_t5", 32100,
        "Salesforce/instructblip-flan-t5-xl", "4.02B (its float32 shards: 9.98 + 6.11 GB / 4 bytes)"),
    "instructblip_flant5xxl": PublishedModel(
        "instructblip", _t5(4096, 10240, 64, 24, "gated-gelu", False), "flan_t5", 32100,
        "Salesforce/instructblip-flan-t5-xxl", "12.31B (its float32 shards: 49.25 GB / 4 bytes)"),
    "instructblip_vicuna7b": PublishedModel(
        "instructblip", _llama(1e-6, 2048, 32000), "vicuna_instructblip", 32001,
        "Salesforce/instructblip-vicuna-7b", "7.91B (the model card's safetensors metadata)"),
    "blip2_opt2.7b": PublishedModel(
        "blip-2", {"model_type": "opt", "vocab_size": 50304, "hidden_size": 2560, "ffn_dim": 10240,
                   "num_hidden_layers": 32, "num_attention_heads": 32, "word_embed_proj_dim": 2560,
                   "activation_function": "relu", "pad_token_id": 1, "bos_token_id": 2, "eos_token_id": 50118,
                   "max_position_embeddings": 2048, "do_layer_norm_before": True, "tie_word_embeddings": True},
        "opt", 50265, "Salesforce/blip2-opt-2.7b", "3.74B (the model card's safetensors metadata)",
        qformer_tokenizer="bert_blip2"),
    "llava15_7b": PublishedModel(
        "llava", _llama(1e-5, 4096, 32001), "llava15", 32000,
        "llava-hf/llava-1.5-7b-hf", "7.06B (the model card's safetensors metadata)", qformer_tokenizer=""),
    "instructblip_t5base": PublishedModel(
        "instructblip", _t5(768, 3072, 12, 12, "relu", True) | {"dense_act_fn": "gelu"}, "flan_t5", 32100,
        "InstructBLIP Flan-T5-XL vision + Q-Former with google/t5-base (RA-BLIP's pairing)",
        "no published count (a composed pairing)"),
    "instructblip_t5large": PublishedModel(
        "instructblip", _t5(1024, 4096, 16, 24, "relu", True) | {"dense_act_fn": "gelu"}, "flan_t5", 32100,
        "InstructBLIP Flan-T5-XL vision + Q-Former with google/t5-large (RA-BLIP's pairing)",
        "no published count (a composed pairing)"),
}

# Widths and depths of reduced=True: every layout, vocabulary and id as published, in seconds.
_REDUCED_VISION = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
_REDUCED_QFORMER = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "encoder_hidden_size": 64}
_REDUCED_TEXT = {
    "t5": {"d_model": 64, "d_ff": 128, "d_kv": 16, "num_heads": 4, "num_layers": 2, "num_decoder_layers": 2},
    "llama": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 4},
    "opt": {"hidden_size": 64, "ffn_dim": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "word_embed_proj_dim": 64},
}


def published_names() -> list[str]:
    """The names :func:`published_config` knows."""
    return list(PUBLISHED)


def _spec(name: str) -> PublishedModel:
    if name not in PUBLISHED:
        raise ValueError(f"unknown published model {name!r}; known: {', '.join(PUBLISHED)}")
    return PUBLISHED[name]


def published_config(name: str, reduced: bool = False) -> PretrainedConfig:
    """The transformers config of published model ``name`` (``reduced``: small widths and depths)."""
    spec = _spec(name)
    text = copy.deepcopy(spec.text)
    if reduced:
        text.update(_REDUCED_TEXT[text["model_type"]])
    if spec.family == "llava":
        vision = dict(CLIP_VIT_L_336) | (_REDUCED_VISION | {"image_size": 56} if reduced else {})
        return LlavaConfig(vision_config=vision, text_config=text, image_token_index=spec.image_token_index,
                           projector_hidden_act="gelu", vision_feature_layer=-2,
                           vision_feature_select_strategy="default", pad_token_id=text["pad_token_id"],
                           tie_word_embeddings=False)
    vision = dict(EVA_VIT_G) | (_REDUCED_VISION | {"image_size": 56} if reduced else {})
    qformer = dict(QFORMER) | (_REDUCED_QFORMER if reduced else {})
    qformer["vocab_size"] = 30523 if spec.qformer_tokenizer == "bert_qformer" else 30522
    config_class = InstructBlipConfig if spec.family == "instructblip" else Blip2Config
    return config_class(vision_config=vision, qformer_config=qformer, text_config=text, num_query_tokens=32,
                        image_token_index=spec.image_token_index)


def _model_class(family: str) -> type:
    return {"instructblip": InstructBlipForConditionalGeneration, "blip-2": Blip2ForConditionalGeneration,
            "llava": LlavaForConditionalGeneration}[family]


def published_parameter_count(name: str, reduced: bool = False) -> int:
    """Parameters of transformers' own model of ``name`` (built on the meta device: no memory)."""
    config = published_config(name, reduced)
    with torch.device("meta"):
        model = _model_class(_spec(name).family)(config)
    return sum(param.numel() for param in model.parameters())


def _image_processor(spec: PublishedModel, config: PretrainedConfig):
    size = config.vision_config.image_size
    if spec.family == "llava":
        return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                  do_center_crop=True, image_mean=[0.48145466, 0.4578275, 0.40821073],
                                  image_std=[0.26862954, 0.26130258, 0.27577711])
    return BlipImageProcessor(size={"height": size, "width": size}, image_mean=[0.48145466, 0.4578275, 0.40821073],
                              image_std=[0.26862954, 0.26130258, 0.27577711], do_convert_rgb=True)


def write_published_checkpoint(name: str, out_dir: str | Path, *, dtype: torch.dtype = torch.bfloat16,
                               reduced: bool = False, seed: int = 0, max_shard_size: str = "5GB") -> Path:
    """Write published model ``name`` with random weights (transformers' own seeded initialisation) to
    ``out_dir``: config.json, safetensors shards in ``dtype``, tokenizers and image processor. Returns
    ``out_dir``. The whole model is built in memory once (XL: 8 GB in bf16)."""
    spec = _spec(name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = published_config(name, reduced)
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # weights are created in their final dtype: no float32 copy of a 7B model
    try:
        model = _model_class(spec.family)(config)
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(out_dir, max_shard_size=max_shard_size)
    del model
    write_processor_files(name, out_dir, reduced)
    return out_dir


def write_processor_files(name: str, out_dir: str | Path, reduced: bool = False) -> None:
    """The tokenizers (LLM, and ``qformer_tokenizer/`` where the family has a Q-Former) and the image
    processor of published model ``name``, into checkpoint dir ``out_dir``."""
    spec = _spec(name)
    out_dir = Path(out_dir)
    write_published_tokenizer(spec.tokenizer, out_dir)
    if spec.qformer_tokenizer:
        write_published_tokenizer(spec.qformer_tokenizer, out_dir / "qformer_tokenizer")
    _image_processor(spec, published_config(name, reduced)).save_pretrained(out_dir)
