"""Build the generator of a run from its config: the model of its checkpoint (``model.checkpoint``,
loaded, never built) with the configured trainable modules (and, for training, LoRA adapters on its
LLM: ``model.lora``), and the retrieval encoder on its parts. The family comes from the checkpoint's
``config.json`` (``model_type`` llava / rablip_llava: :class:`~rablip.models.llava.RablipLlavaForConditionalGeneration`;
otherwise :class:`~rablip.models.rablip.RABlipForConditionalGeneration`), so stages never branch on it.
The processor that speaks to the generator is built by :func:`rablip.models.processing.build_collator`."""

from __future__ import annotations

from pathlib import Path

from rablip.config.schema import Config
from rablip.errors import ConfigError
from rablip.models.freezing import (
    keep_trainable_float32,
    parameter_counts,
    set_gradient_checkpointing,
    weights_dtype,
)
from rablip.models.llava import RablipLlavaForConditionalGeneration
from rablip.models.llava_loading import LLAVA_MODEL_TYPES
from rablip.models.lora import apply_lora
from rablip.models.rablip import RABlipForConditionalGeneration
from rablip.utils.io import read_json
from rablip.utils.logging import get_logger

log = get_logger("rablip.models")


def generator_checkpoint_dir(cfg: Config) -> Path:
    """``model.checkpoint``, checked to hold a checkpoint (its config.json); nothing is built here."""
    path = Path(cfg.model.checkpoint)
    if not (path / "config.json").is_file():
        raise ConfigError(f"model.checkpoint {path} holds no checkpoint (no config.json). For the synthetic world, "
                          "build it with python scripts/make_synthetic.py --out <data.root>; for a real model, put "
                          "the transformers InstructBLIP/BLIP-2 dir there (see checkpoints/README.md) or point "
                          "model.checkpoint at it.")
    return path


def generator_trainable_modules(cfg: Config) -> list[str]:
    return [name for name in cfg.model.trainable if name != "fusion"]


def generator_family(path: str | Path) -> type:
    """The generator class of checkpoint dir ``path``, by its ``config.json``'s ``model_type``."""
    model_type = read_json(Path(path) / "config.json", "checkpoint config").get("model_type")
    return RablipLlavaForConditionalGeneration if model_type in LLAVA_MODEL_TYPES else RABlipForConditionalGeneration


def load_generator(cfg: Config, checkpoint: str | Path | None = None, *, for_training: bool = False):
    """The generator from ``checkpoint`` (default: the run's base checkpoint) with the configured
    trainable modules, refinement and gradient checkpointing; parameter counts are logged. A
    checkpoint's saved LoRA adapter is merged on load; ``for_training`` adds fresh adapters of
    ``model.lora`` (r > 0) to the LLM. Weights load in ``model.dtype`` (memory-mapped, no float32 detour);
    trainable parameters are then float32. ``model.refine`` reaches either family (LLaVA: ``refine_top_m``
    and ``refine_space``). ConfigError for a setting the LLaVA family lacks
    (``model.multi_image=concat``, ``train.feature_cache``)."""
    path = Path(checkpoint) if checkpoint else generator_checkpoint_dir(cfg)
    family = generator_family(path)
    dtype = weights_dtype(cfg.model.dtype, cfg.train.mixed_precision)
    if family is RablipLlavaForConditionalGeneration:
        unsupported = [key for key, on in (("model.multi_image=concat", cfg.model.multi_image == "concat"),
                                           ("train.feature_cache", cfg.train.feature_cache)) if on]
        if unsupported:
            raise ConfigError(f"{path} is a LLaVA checkpoint; the LLaVA generator does not support {unsupported} "
                              "(no Q-Former): switch them off")
        refine = cfg.model.refine
        model = family.from_pretrained(str(path), trainable_modules=generator_trainable_modules(cfg),
                                       refine_top_m=refine.top_m if refine.enabled else None,
                                       refine_space=refine.space, dtype=dtype)
    else:
        overrides = {"trainable_modules": generator_trainable_modules(cfg), "multi_image": cfg.model.multi_image,
                     "refine_top_m": cfg.model.refine.top_m if cfg.model.refine.enabled else None}
        model = family.from_pretrained(str(path), dtype=dtype, **overrides)
    lora = cfg.model.lora
    if for_training and apply_lora(model, lora.r, lora.alpha, lora.dropout, lora.target_modules):
        log.info("LoRA adapters (r=%d, alpha=%s) on the LLM's %s", lora.r, lora.alpha, list(lora.target_modules))
    keep_trainable_float32(model)
    parts = cfg.model.gradient_checkpointing
    if parts:
        set_gradient_checkpointing(model, language_model="language_model" in parts, qformer="qformer" in parts)
    parameter_counts(model)  # logs total/trainable per module group
    return model


def build_retrieval_encoder(cfg: Config, generator: RABlipForConditionalGeneration | None = None):
    """A fresh retrieval encoder on the generator's vision model, query tokens and Q-Former (shared
    modules) plus new fusion layers of size ``model.fusion`` (``heads`` 0: the Q-Former's attention
    heads); the LLM is not kept."""
    from rablip.models.fusion import MultimodalRetrievalEncoder
    from rablip.models.fusion_layers import FusionEncoder, with_resolved_heads

    generator = generator or load_generator(cfg)
    if not hasattr(generator, "qformer"):
        raise ConfigError(f"model.checkpoint {generator.config.base_checkpoint} is a LLaVA generator, which has no "
                          "Q-Former to build the retrieval encoder on: pre-train the fusion encoder from an "
                          "InstructBLIP/BLIP-2 checkpoint and point model.fusion.checkpoint at it.")
    qformer = generator.config.qformer_config
    fusion = FusionEncoder(with_resolved_heads(cfg.model.fusion, qformer.num_attention_heads), qformer.hidden_size)
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
