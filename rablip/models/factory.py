"""Build the generator of a run from its config: its checkpoint (built on first use for tiny
synthetic runs), the model with the configured trainable modules, and the collator that speaks
to it (tokenizers and image processor loaded from the checkpoint dirs)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import BlipImageProcessor

from rablip.config.schema import ArchConfig, Config
from rablip.data.collate import Collator
from rablip.errors import ConfigError
from rablip.models.freezing import parameter_counts, set_gradient_checkpointing
from rablip.models.rablip import RABlipForConditionalGeneration
from rablip.synthetic.build import build_tiny_checkpoint, copy_ready_attention
from rablip.utils.logging import get_logger

log = get_logger("rablip.models")

QFORMER_TOKENIZER_DIR = "qformer_tokenizer"
# OpenAI CLIP normalisation, which BLIP-2 / InstructBLIP image processors use.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def architecture_dict(arch: ArchConfig, llm_vocab_size: int, qformer_vocab_size: int) -> dict:
    """``model.arch`` in the form :func:`build_tiny_checkpoint` takes (transformers sub-configs)."""
    vision = {"hidden_size": arch.vision_hidden_size, "intermediate_size": arch.vision_intermediate_size,
              "num_hidden_layers": arch.vision_layers, "num_attention_heads": arch.vision_heads,
              "image_size": arch.image_size, "patch_size": arch.patch_size,
              # InstructBLIP's vision default (1e-10) suits loading pre-trained weights, not training
              # a tiny tower from scratch: its outputs would be ~1e-6 and images would carry no signal.
              "initializer_range": 0.02}
    qformer = {"hidden_size": arch.qformer_hidden_size, "intermediate_size": arch.qformer_intermediate_size,
               "num_hidden_layers": arch.qformer_layers, "num_attention_heads": arch.qformer_heads,
               "cross_attention_frequency": arch.cross_attention_frequency, "vocab_size": qformer_vocab_size,
               "max_position_embeddings": 512, "encoder_hidden_size": arch.vision_hidden_size}
    if arch.llm_type == "t5":
        text = {"model_type": "t5", "vocab_size": llm_vocab_size, "d_model": arch.llm_hidden_size,
                "d_kv": arch.llm_hidden_size // arch.llm_heads, "d_ff": arch.llm_intermediate_size,
                "num_layers": arch.llm_layers, "num_decoder_layers": arch.llm_layers, "num_heads": arch.llm_heads,
                "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1, "dropout_rate": 0.1}
    elif arch.llm_type == "opt":
        text = {"model_type": "opt", "vocab_size": llm_vocab_size, "hidden_size": arch.llm_hidden_size,
                "ffn_dim": arch.llm_intermediate_size, "num_hidden_layers": arch.llm_layers,
                "num_attention_heads": arch.llm_heads, "max_position_embeddings": 1024,
                "word_embed_proj_dim": arch.llm_hidden_size, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    else:
        text = {"model_type": "llama", "vocab_size": llm_vocab_size, "hidden_size": arch.llm_hidden_size,
                "intermediate_size": arch.llm_intermediate_size, "num_hidden_layers": arch.llm_layers,
                "num_attention_heads": arch.llm_heads, "max_position_embeddings": 1024,
                "tie_word_embeddings": arch.llm_tie_embeddings, "pad_token_id": 0, "bos_token_id": 1,
                "eos_token_id": 2}
    return {"vision": vision, "qformer": qformer, "text": text, "num_query_tokens": arch.num_query_tokens}


def ensure_generator_checkpoint(cfg: Config) -> Path:
    """The generator's base checkpoint dir; with ``model.build_if_missing`` a tiny one is built.

    Building trains the two tokenizers on the synthetic world's texts, builds a model of size
    ``model.arch`` and saves it in the transformers InstructBLIP layout (weights, tokenizer,
    ``qformer_tokenizer/``, image processor), so it loads like a published checkpoint. With a timm
    vision encoder or a warm-up (``data.synthetic.vision_warmup_steps``, ``reading_warmup_steps``)
    it is then loaded, changed and saved again as a full rablip checkpoint in the same dir.
    """
    path = Path(cfg.model.checkpoint)
    if (path / "config.json").is_file():
        return path
    if not cfg.model.build_if_missing:
        raise ConfigError(f"model.checkpoint {path} holds no checkpoint (no config.json). Put the transformers "
                          "InstructBLIP/BLIP-2 dir there (see checkpoints/README.md) or point model.checkpoint at it.")
    if cfg.data.dataset != "synthetic":
        raise ConfigError("model.build_if_missing builds a tiny model with tokenizers trained on the synthetic world; "
                          "for data.dataset=" + cfg.data.dataset + " point model.checkpoint at real weights.")
    from rablip.synthetic.world_tokenizers import train_world_tokenizers

    arch = cfg.model.arch
    kind = "t5" if arch.llm_type == "t5" else "causal"
    syn = cfg.data.synthetic
    tmp = path.with_name(f".tmp-{path.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tokenizers = train_world_tokenizers(syn.world_dir, tmp / "tokenizers", kind,
                                            qformer_vocab_size=syn.tokenizer_vocab_size,
                                            llm_vocab_size=syn.tokenizer_vocab_size)
        llm_tok, qformer_tok = tokenizers["llm"], tokenizers["qformer"]
        architecture = architecture_dict(arch, arch.llm_vocab_size or len(llm_tok) + 1,
                                         arch.qformer_vocab_size or len(qformer_tok))
        build_tiny_checkpoint(tmp / "model", architecture, tokenizer=llm_tok, qformer_tokenizer=qformer_tok,
                              seed=cfg.run.seed, init="trainable")
        image_processor = BlipImageProcessor(size={"height": arch.image_size, "width": arch.image_size},
                                             image_mean=CLIP_MEAN, image_std=CLIP_STD)
        image_processor.save_pretrained(tmp / "model")
        if cfg.model.vision_backend == "timm" or syn.vision_warmup_steps or syn.reading_warmup_steps or arch.llm_copy_init:
            prepare_tiny_generator(cfg, tmp / "model", llm_tok, image_processor)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.rmdir()  # empty (checked above: no config.json); a non-empty dir makes this fail loudly
        (tmp / "model").rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("built a tiny generator checkpoint at %s", path)
    return path


def prepare_tiny_generator(cfg: Config, model_dir: Path, llm_tokenizer, image_processor) -> None:
    """Give the just-built tiny checkpoint in ``model_dir`` its configured vision encoder, copy-ready LLM
    attention and warm-ups, and save it there as a full rablip checkpoint (the tokenizer and processor
    files stay)."""
    from rablip.models.vision import build_vision_model
    from rablip.synthetic.files import load_manifest
    from rablip.synthetic.llm_warmup import warm_up_language_model
    from rablip.synthetic.reading import reading_examples
    from rablip.synthetic.viewing import class_counts, viewing_batches
    from rablip.synthetic.vision_warmup import warm_up_vision_model

    syn, seed = cfg.data.synthetic, cfg.run.seed
    model = RABlipForConditionalGeneration.from_pretrained(str(model_dir))
    if cfg.model.vision_backend == "timm":
        model.config.vision_backbone, model.config.timm_model_name = "timm", cfg.model.timm_name
        torch.manual_seed(seed)
        model.vision_model = build_vision_model(model.config)
    if cfg.model.arch.llm_copy_init:
        log.info("copy-ready LLM attention: %d layers", copy_ready_attention(model.language_model))
    entities = load_manifest(syn.world_dir)["entities"]
    if syn.vision_warmup_steps:
        batches = viewing_batches(seed, 32, cfg.model.arch.image_size, [e["attributes"] for e in entities])
        losses = warm_up_vision_model(model.vision_model, image_processor, model.config.vision_config.hidden_size,
                                      class_counts(), batches, syn.vision_warmup_steps, seed=seed)
        _log_warm_up("vision viewing warm-up", losses)
    if syn.reading_warmup_steps:
        examples = reading_examples(seed, [e["name"] for e in entities], [e["attributes"] for e in entities])
        losses = warm_up_language_model(model.language_model, llm_tokenizer, examples, syn.reading_warmup_steps,
                                        seed=seed)
        _log_warm_up("LLM reading warm-up", losses)
    model.save_pretrained(str(model_dir), trainable_only=False)


def _log_warm_up(name: str, losses: list[float]) -> None:
    """Steps, first loss and the mean of the last 20 of a finished warm-up."""
    log.info("%s: %d steps, loss %.3f -> %.3f", name, len(losses), losses[0], sum(losses[-20:]) / len(losses[-20:]))


def generator_trainable_modules(cfg: Config) -> list[str]:
    return [name for name in cfg.model.trainable if name != "fusion"]


def load_generator(cfg: Config, checkpoint: str | Path | None = None) -> RABlipForConditionalGeneration:
    """The generator from ``checkpoint`` (default: the run's base checkpoint) with the configured
    trainable modules, refinement and gradient checkpointing; parameter counts are logged."""
    path = Path(checkpoint) if checkpoint else ensure_generator_checkpoint(cfg)
    overrides = {"trainable_modules": generator_trainable_modules(cfg),
                 "refine_top_m": cfg.model.refine.top_m if cfg.model.refine.enabled else None}
    model = RABlipForConditionalGeneration.from_pretrained(str(path), **overrides)
    check_vision_backend(cfg, model, path)
    if cfg.model.gradient_checkpointing:
        set_gradient_checkpointing(model, language_model=True, qformer=True)
    parameter_counts(model)  # logs total/trainable per module group
    return model


def check_vision_backend(cfg: Config, model: RABlipForConditionalGeneration, path: Path) -> None:
    """A checkpoint brings its vision encoder: ``model.vision_backend`` / ``timm_name`` must name it."""
    has = "timm " + str(model.config.timm_model_name) if model.config.vision_backbone == "timm" else "hf"
    wants = "timm " + cfg.model.timm_name if cfg.model.vision_backend == "timm" else "hf"
    if has != wants:
        raise ConfigError(f"model.vision_backend: the checkpoint {path} has a {has} vision encoder but the config "
                          f"asks for {wants}; set model.vision_backend (and model.timm_name) to match it, or point "
                          "model.checkpoint at an empty dir with model.build_if_missing=true to build a new one.")


def processor_dirs(model: RABlipForConditionalGeneration) -> tuple[Path, Path, Path]:
    """(Q-Former tokenizer, LLM tokenizer, image processor) dirs of the model's base checkpoint."""
    base = Path(model.config.base_checkpoint or "")
    dirs = (base / QFORMER_TOKENIZER_DIR, base, base)
    if not (base / "preprocessor_config.json").is_file() or not dirs[0].is_dir():
        raise ConfigError(f"checkpoint {base} lacks its processor files (qformer_tokenizer/, tokenizer files, "
                          "preprocessor_config.json): copy the whole transformers checkpoint dir.")
    return dirs


def build_collator(cfg: Config, model: RABlipForConditionalGeneration, max_references: int,
                   mode: str = "train") -> Collator:
    qformer_dir, llm_dir, image_dir = processor_dirs(model)
    if 1 + max_references > model.config.max_image_slots:
        raise ConfigError(f"retrieval.k plus noise.random_snippets needs {max_references} references, but the model "
                          f"has {model.config.max_image_slots - 1} reference slots (max_image_slots).")
    return Collator.from_pretrained(
        qformer_dir, llm_dir, image_dir, num_query_tokens=model.config.num_query_tokens,
        is_encoder_decoder=not model.is_decoder_only, max_references=max_references,
        max_input_length=cfg.data.max_input_length, max_target_length=cfg.data.max_target_length,
        qformer_max_length=cfg.data.qformer_max_length, mode=mode)


def build_retrieval_encoder(cfg: Config, generator: RABlipForConditionalGeneration | None = None):
    """A fresh retrieval encoder on the generator's vision model, query tokens and Q-Former (shared
    modules) plus new fusion layers of size ``model.fusion``; the LLM is not kept."""
    from rablip.models.fusion import FusionConfig, FusionEncoder, MultimodalRetrievalEncoder

    generator = generator or load_generator(cfg)
    fusion_cfg = FusionConfig(num_layers=cfg.model.fusion.layers, num_heads=cfg.model.fusion.heads,
                              embed_dim=cfg.model.fusion.dim, vl_expert_layers=cfg.model.fusion.vl_expert_layers)
    fusion = FusionEncoder(fusion_cfg, generator.config.qformer_config.hidden_size)
    return MultimodalRetrievalEncoder(generator.vision_model, generator.query_tokens, generator.qformer, fusion)


def load_retrieval_encoder(cfg: Config, instruct_queries: bool = True):
    """The pre-trained retrieval encoder of ``model.fusion.checkpoint``."""
    from rablip.models.fusion import MultimodalRetrievalEncoder

    path = Path(cfg.model.fusion.checkpoint)
    if not path.is_dir():
        raise ConfigError(f"model.fusion.checkpoint {path} does not exist: pre-train the fusion encoder first "
                          "(python run_pretrain.py --config ...) or point the key at its final/ dir.")
    encoder = MultimodalRetrievalEncoder.from_pretrained(path)
    encoder.instruct_queries = instruct_queries
    return encoder
