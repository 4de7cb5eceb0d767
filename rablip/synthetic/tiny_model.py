"""Build the synthetic world's tiny generator checkpoint (and one for any text corpus).

Trains the two tokenizers on the world's texts, builds an InstructBLIP of the settings' sizes and saves
it in the transformers layout (weights, tokenizer, ``qformer_tokenizer/``, image processor), so it loads
like a published checkpoint. With a timm vision encoder, copy-ready LLM attention or a warm-up it is then
loaded, changed and saved again as a full rablip checkpoint in the same dir.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import BlipImageProcessor

from rablip.errors import DataError
from rablip.models.rablip import RABlipForConditionalGeneration
from rablip.models.vision import build_vision_model
from rablip.synthetic.build import build_tiny_checkpoint, copy_ready_attention
from rablip.synthetic.files import load_manifest
from rablip.synthetic.generator_warmups import log_warm_ups, warm_up_generator
from rablip.synthetic.settings import SyntheticSettings, TinyModelSection
from rablip.synthetic.tokenizer_training import train_tokenizer
from rablip.synthetic.world_tokenizers import prompt_texts, train_world_tokenizers
from rablip.utils.logging import get_logger

log = get_logger("rablip.synthetic")

# OpenAI CLIP normalisation, which BLIP-2 / InstructBLIP image processors use.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def architecture_dict(model: TinyModelSection, llm_vocab_size: int, qformer_vocab_size: int) -> dict:
    """The model sizes in the form :func:`build_tiny_checkpoint` takes (transformers sub-configs)."""
    vision = {"hidden_size": model.vision_hidden_size, "intermediate_size": model.vision_intermediate_size,
              "num_hidden_layers": model.vision_layers, "num_attention_heads": model.vision_heads,
              "image_size": model.image_size, "patch_size": model.patch_size,
              # InstructBLIP's vision default (1e-10) suits loading pre-trained weights, not training
              # a tiny tower from scratch: its outputs would be ~1e-6 and images would carry no signal.
              "initializer_range": 0.02}
    qformer = {"hidden_size": model.qformer_hidden_size, "intermediate_size": model.qformer_intermediate_size,
               "num_hidden_layers": model.qformer_layers, "num_attention_heads": model.qformer_heads,
               "cross_attention_frequency": model.cross_attention_frequency, "vocab_size": qformer_vocab_size,
               "max_position_embeddings": 512, "encoder_hidden_size": model.vision_hidden_size}
    if model.llm_type == "t5":
        text = {"model_type": "t5", "vocab_size": llm_vocab_size, "d_model": model.llm_hidden_size,
                "d_kv": model.llm_hidden_size // model.llm_heads, "d_ff": model.llm_intermediate_size,
                "num_layers": model.llm_layers, "num_decoder_layers": model.llm_layers, "num_heads": model.llm_heads,
                "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1, "dropout_rate": 0.1}
    elif model.llm_type == "opt":
        text = {"model_type": "opt", "vocab_size": llm_vocab_size, "hidden_size": model.llm_hidden_size,
                "ffn_dim": model.llm_intermediate_size, "num_hidden_layers": model.llm_layers,
                "num_attention_heads": model.llm_heads, "max_position_embeddings": 1024,
                "word_embed_proj_dim": model.llm_hidden_size, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    else:
        text = {"model_type": "llama", "vocab_size": llm_vocab_size, "hidden_size": model.llm_hidden_size,
                "intermediate_size": model.llm_intermediate_size, "num_hidden_layers": model.llm_layers,
                "num_attention_heads": model.llm_heads, "max_position_embeddings": 1024,
                "tie_word_embeddings": model.llm_tie_embeddings, "pad_token_id": 0, "bos_token_id": 1,
                "eos_token_id": 2}
    return {"vision": vision, "qformer": qformer, "text": text, "num_query_tokens": model.num_query_tokens}


def build_tiny_generator(world_dir: str | Path, out_dir: str | Path, settings: SyntheticSettings) -> Path:
    """Build the tiny generator of ``settings`` for the world in ``world_dir`` into ``out_dir`` (which
    must not exist or be empty); built beside it and renamed into place, so a failure leaves nothing."""
    path, model = Path(out_dir), settings.model
    if path.exists() and any(path.iterdir()):
        raise DataError(f"{path} is not empty; remove it to build the tiny generator there again.")
    kind = "t5" if model.llm_type == "t5" else "causal"
    tmp = path.with_name(f".tmp-{path.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tokenizers = train_world_tokenizers(world_dir, tmp / "tokenizers", kind,
                                            qformer_vocab_size=model.tokenizer_vocab_size,
                                            llm_vocab_size=model.tokenizer_vocab_size)
        llm_tok, qformer_tok = tokenizers["llm"], tokenizers["qformer"]
        architecture = architecture_dict(model, model.llm_vocab_size or len(llm_tok) + 1,
                                         model.qformer_vocab_size or len(qformer_tok))
        build_tiny_checkpoint(tmp / "model", architecture, tokenizer=llm_tok, qformer_tokenizer=qformer_tok,
                              seed=settings.seed, init="trainable")
        image_processor = BlipImageProcessor(size={"height": model.image_size, "width": model.image_size},
                                             image_mean=CLIP_MEAN, image_std=CLIP_STD)
        image_processor.save_pretrained(tmp / "model")
        warmup = settings.warmup
        if model.vision_backend == "timm" or warmup.vision_steps or warmup.reading_steps or model.llm_copy_init:
            prepare_tiny_generator(world_dir, tmp / "model", settings, llm_tok, image_processor)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.rmdir()
        (tmp / "model").rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("built the tiny generator checkpoint at %s", path)
    return path


def prepare_tiny_generator(world_dir: str | Path, model_dir: Path, settings: SyntheticSettings, llm_tokenizer,
                           image_processor) -> None:
    """Give the just-built checkpoint in ``model_dir`` its vision encoder, copy-ready LLM attention and
    warm-ups, and save it there as a full rablip checkpoint (the tokenizer and processor files stay)."""
    seed, sizes, warmup = settings.seed, settings.model, settings.warmup
    model = RABlipForConditionalGeneration.from_pretrained(str(model_dir))
    if sizes.vision_backend == "timm":
        model.config.vision_backbone, model.config.timm_model_name = "timm", sizes.timm_name
        torch.manual_seed(seed)
        model.vision_model = build_vision_model(model.config)
    if sizes.llm_copy_init:
        log.info("copy-ready LLM attention: %d layers", copy_ready_attention(model.language_model))
    losses = warm_up_generator(model.vision_model, model.config.vision_config.hidden_size, sizes.image_size,
                               image_processor, model.language_model, llm_tokenizer,
                               load_manifest(world_dir)["entities"], vision_steps=warmup.vision_steps,
                               reading_steps=warmup.reading_steps, seed=seed, scene_share=warmup.scene_share)
    log_warm_ups(losses)
    model.save_pretrained(str(model_dir), trainable_only=False)


def build_generator_for_texts(texts: list[str], out_dir: str | Path, sizes: TinyModelSection, seed: int = 0) -> Path:
    """A tiny generator for any text corpus (e.g. a generated WebQA): tokenizers trained on ``texts`` plus
    the words of every prompt template, an InstructBLIP of ``sizes`` (its own ViT, no warm-ups) saved in
    the transformers layout at ``out_dir/generator``. Returns that dir."""
    out_dir = Path(out_dir)
    corpus = [*texts, *prompt_texts(include_release=True)]
    kind = "t5" if sizes.llm_type == "t5" else "causal"
    llm_tokenizer = train_tokenizer(corpus, out_dir / "tokenizer_llm", kind=kind, vocab_size=sizes.tokenizer_vocab_size)
    qformer_tokenizer = train_tokenizer(corpus, out_dir / "tokenizer_qformer", kind="bert",
                                        vocab_size=sizes.tokenizer_vocab_size)
    architecture = architecture_dict(sizes, sizes.llm_vocab_size or len(llm_tokenizer) + 1,
                                     sizes.qformer_vocab_size or len(qformer_tokenizer))
    model_dir = build_tiny_checkpoint(out_dir / "generator", architecture, tokenizer=llm_tokenizer,
                                      qformer_tokenizer=qformer_tokenizer, seed=seed, init="trainable")
    BlipImageProcessor(size={"height": sizes.image_size, "width": sizes.image_size}, image_mean=CLIP_MEAN,
                       image_std=CLIP_STD).save_pretrained(model_dir)
    return model_dir
