"""Build a tiny InstructBLIP / BLIP-2 checkpoint from an architecture dict (tests, synthetic demo).

Nothing can be downloaded in tests or the synthetic world, so they create small transformers
checkpoints here and load them through the same ``from_pretrained`` path real checkpoints use.
Weights are drawn at random (seeded) with a spread large enough that every input matters.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    PreTrainedTokenizerBase,
)

IMAGE_TOKEN = "<image>"

#: A tiny architecture: vision 32 wide 2 layers, Q-Former 32 wide 2 layers, tiny T5.
TINY_ARCHITECTURE: dict[str, Any] = {
    "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
               "image_size": 32, "patch_size": 8},
    "qformer": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                "vocab_size": 96, "max_position_embeddings": 64},
    "text": {"model_type": "t5", "vocab_size": 128, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2,
             "num_decoder_layers": 2, "num_heads": 4, "decoder_start_token_id": 0, "pad_token_id": 0,
             "eos_token_id": 1, "bos_token_id": 1},
    "num_query_tokens": 4,
}

#: The decoder-only (OPT) counterpart of the text part of :data:`TINY_ARCHITECTURE`.
TINY_OPT_TEXT: dict[str, Any] = {
    "model_type": "opt", "vocab_size": 128, "hidden_size": 32, "ffn_dim": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "max_position_embeddings": 128, "word_embed_proj_dim": 32,
    "pad_token_id": 1, "bos_token_id": 2, "eos_token_id": 2,
}


def tiny_architecture(language_model: str = "t5") -> dict[str, Any]:
    """A copy of the tiny architecture with a T5 (``"t5"``) or OPT (``"opt"``) language model."""
    architecture = copy.deepcopy(TINY_ARCHITECTURE)
    if language_model == "opt":
        architecture["text"] = copy.deepcopy(TINY_OPT_TEXT)
    elif language_model != "t5":
        raise ValueError(f"language_model must be 't5' or 'opt', got {language_model!r}")
    return architecture


@torch.no_grad()
def randomize_weights(model: torch.nn.Module, seed: int) -> None:
    """Seeded random weights: norms near 1, everything else N(0, 0.1), so no input is ignored."""
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in model.named_parameters():
        noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
        is_norm = parameter.dim() == 1 and ("norm" in name.lower() or "ln" in name.split(".")[-2:][0].lower())
        parameter.copy_(1.0 + 0.1 * noise if is_norm and name.endswith("weight") else 0.1 * noise)
        if name.endswith("self_attn.qkv.bias"):  # the EVA / BLIP ViT has no key bias
            parameter[parameter.shape[0] // 3: 2 * parameter.shape[0] // 3] = 0.0


@torch.no_grad()
def copy_ready_attention(language_model: torch.nn.Module) -> int:
    """Make every self-attention of a decoder-only LLM copy what it attends to: its value and output
    projections become the identity (their biases zero). Returns how many attention layers changed.

    With tied input/output embeddings, a head that attends to a token then raises that token's logit
    from the first training step, so learning where to look is rewarded at once. Raises ValueError for
    an LLM without square ``v_proj`` + ``o_proj`` (LLaMA) or ``v_proj`` + ``out_proj`` (OPT) projections.
    """
    changed = 0
    for module in language_model.modules():
        value = getattr(module, "v_proj", None)
        output = getattr(module, "o_proj", None) or getattr(module, "out_proj", None)
        if not isinstance(value, torch.nn.Linear) or not isinstance(output, torch.nn.Linear):
            continue
        for projection in (value, output):
            if projection.weight.shape[0] != projection.weight.shape[1]:
                raise ValueError(f"copy_ready_attention needs square value/output projections, got "
                                 f"{tuple(projection.weight.shape)} (grouped-query attention is not supported)")
            projection.weight.copy_(torch.eye(projection.weight.shape[0], dtype=projection.weight.dtype))
            if projection.bias is not None:
                projection.bias.zero_()
        changed += 1
    if not changed:
        raise ValueError(f"{type(language_model).__name__} has no v_proj/o_proj (or out_proj) attention to make "
                         "copy-ready; the llm_copy_init setting supports decoder-only LLaMA and OPT models")
    return changed


def build_tiny_checkpoint(
    out_dir: str | Path,
    architecture: dict[str, Any] | None = None,
    *,
    qformer_text_input: bool = True,
    tokenizer: PreTrainedTokenizerBase | None = None,
    qformer_tokenizer: PreTrainedTokenizerBase | None = None,
    seed: int = 0,
    init: str = "spread",
) -> Path:
    """Save a transformers InstructBLIP (or, with ``qformer_text_input=False``, BLIP-2) dir.

    ``architecture`` has keys ``vision``, ``qformer``, ``text`` (sub-config dicts; ``text`` names its
    ``model_type``) and ``num_query_tokens``; default :data:`TINY_ARCHITECTURE`. With a
    ``tokenizer``, the ``<image>`` token is added to it, the LLM vocab is grown to cover it, and it
    is saved beside the weights; ``qformer_tokenizer`` goes to ``qformer_tokenizer/`` (the
    InstructBLIP processor layout). Without a tokenizer the image token is the last vocab id.

    ``init`` picks the weights: ``"spread"`` (:func:`randomize_weights`: every input visibly changes
    the output, for parity and loading tests) or ``"trainable"`` (transformers' own initialisation,
    seeded: small weights, unit norms, zero biases, a model that learns well from scratch).
    """
    if init not in ("spread", "trainable"):
        raise ValueError(f"init must be 'spread' or 'trainable', got {init!r}")
    architecture = copy.deepcopy(architecture or TINY_ARCHITECTURE)
    text = dict(architecture["text"])
    if tokenizer is not None:
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
        text["vocab_size"] = max(int(text.get("vocab_size", 0)), len(tokenizer))
        image_token_index = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    else:
        image_token_index = int(text["vocab_size"]) - 1
    qformer = dict(architecture["qformer"])
    if qformer_tokenizer is not None:
        qformer["vocab_size"] = max(int(qformer.get("vocab_size", 0)), len(qformer_tokenizer))
    fields = {
        "vision_config": architecture["vision"],
        "qformer_config": qformer,
        "text_config": text,
        "num_query_tokens": architecture.get("num_query_tokens", 32),
        "image_token_index": image_token_index,
    }
    torch.manual_seed(seed)
    if qformer_text_input:
        model = InstructBlipForConditionalGeneration(InstructBlipConfig(**fields))
    else:
        model = Blip2ForConditionalGeneration(Blip2Config(**fields))
    if init == "spread":
        randomize_weights(model, seed)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    if qformer_tokenizer is not None:
        qformer_tokenizer.save_pretrained(out_dir / "qformer_tokenizer")
    return out_dir
