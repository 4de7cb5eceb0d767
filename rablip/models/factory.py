"""Build the generator of a run from its config: the model of its checkpoint (``model.checkpoint``,
loaded, never built) with the configured trainable modules, and the retrieval encoder on its parts.
The processor that speaks to the generator is built by :func:`rablip.models.processing.build_collator`."""

from __future__ import annotations

from pathlib import Path

from rablip.config.schema import Config
from rablip.errors import ConfigError
from rablip.models.freezing import parameter_counts, set_gradient_checkpointing
from rablip.models.rablip import RABlipForConditionalGeneration
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


def load_generator(cfg: Config, checkpoint: str | Path | None = None) -> RABlipForConditionalGeneration:
    """The generator from ``checkpoint`` (default: the run's base checkpoint) with the configured
    trainable modules, refinement and gradient checkpointing; parameter counts are logged."""
    path = Path(checkpoint) if checkpoint else generator_checkpoint_dir(cfg)
    overrides = {"trainable_modules": generator_trainable_modules(cfg), "multi_image": cfg.model.multi_image,
                 "refine_top_m": cfg.model.refine.top_m if cfg.model.refine.enabled else None}
    model = RABlipForConditionalGeneration.from_pretrained(str(path), **overrides)
    if cfg.model.gradient_checkpointing:
        set_gradient_checkpointing(model, language_model=True, qformer=True)
    parameter_counts(model)  # logs total/trainable per module group
    return model


def build_retrieval_encoder(cfg: Config, generator: RABlipForConditionalGeneration | None = None):
    """A fresh retrieval encoder on the generator's vision model, query tokens and Q-Former (shared
    modules) plus new fusion layers of size ``model.fusion`` (``heads`` 0: the Q-Former's attention
    heads); the LLM is not kept."""
    from rablip.models.fusion import MultimodalRetrievalEncoder
    from rablip.models.fusion_layers import FusionEncoder, with_resolved_heads

    generator = generator or load_generator(cfg)
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
