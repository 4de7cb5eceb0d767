"""The pieces every retrieval job builds from a config: the encoder, its fingerprint, the batcher.

The retrieval encoder is the pre-trained one in ``model.fusion.checkpoint``. Its processor (Q-Former
tokenizer and image processor, :class:`rablip.models.retrieval_processing.RetrievalBatcher`) is the one
saved beside it, else that of the generator's base checkpoint, found from ``model.checkpoint`` without
loading the generator (whose LLM may be billions of parameters).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from rablip.config.schema import Config
from rablip.errors import ConfigError
from rablip.models.factory import generator_checkpoint_dir, load_retrieval_encoder
from rablip.models.fusion_checkpoint import CONFIG_FILE, WEIGHTS_FILE
from rablip.models.processor_files import IMAGE_PROCESSOR_FILE, QFORMER_TOKENIZER_DIR
from rablip.models.retrieval_processing import RetrievalBatcher
from rablip.retrieval.index_manifest import sha256_of_file


def encoder_fingerprint(checkpoint_dir: str | os.PathLike) -> str:
    """``sha256(sha256(weights file) + sha256(config file))`` of a saved retrieval encoder.

    Item embeddings (and so an index) are valid only for the encoder that made them; the
    fingerprint is recorded in ``shards.json`` and every index manifest, and checked on load.
    """
    directory = Path(checkpoint_dir)
    parts = []
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        path = directory / name
        if not path.is_file():
            raise ConfigError(f"{path} does not exist: model.fusion.checkpoint must be a retrieval encoder dir "
                              "written by run_pretrain.py (its final/ dir).")
        parts.append(sha256_of_file(path))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def retrieval_batcher(cfg: Config) -> RetrievalBatcher:
    """The processor of the retrieval encoder, texts cut to ``data.qformer_max_length`` tokens: the Q-Former
    tokenizer and image processor saved beside the encoder (pre-training copies them into its final dir),
    else those of ``model.checkpoint`` (or its base checkpoint). The encoder's own come first: they are
    what it was trained with, and a generator without a Q-Former (LLaVA) has none."""
    encoder_dir = Path(cfg.model.fusion.checkpoint) if cfg.model.fusion.checkpoint else None
    if encoder_dir is not None and (encoder_dir / QFORMER_TOKENIZER_DIR).is_dir() \
            and (encoder_dir / IMAGE_PROCESSOR_FILE).is_file():
        return RetrievalBatcher.from_pretrained(encoder_dir / QFORMER_TOKENIZER_DIR, encoder_dir,
                                                cfg.data.qformer_max_length)
    return RetrievalBatcher.from_checkpoint(generator_checkpoint_dir(cfg), cfg.data.qformer_max_length)


def load_encoder(cfg: Config, device: torch.device) -> torch.nn.Module:
    """The pre-trained retrieval encoder on ``device`` in eval mode (``retrieval.instruct_queries`` applied)."""
    encoder = load_retrieval_encoder(cfg, instruct_queries=cfg.retrieval.instruct_queries)
    return encoder.to(device).eval()


def use_bf16(cfg: Config, device: torch.device) -> bool:
    """bf16 autocast on GPUs that support it, unless ``train.mixed_precision`` is ``no``."""
    return cfg.train.mixed_precision != "no" and device.type == "cuda" and torch.cuda.is_bf16_supported()


def embeddings_dir(cfg: Config) -> Path:
    """``retrieval.embeddings_dir``, or ``<retrieval.index_dir>/embeddings`` when empty."""
    if cfg.retrieval.embeddings_dir:
        return Path(cfg.retrieval.embeddings_dir)
    if not cfg.retrieval.index_dir:
        raise ConfigError("retrieval.index_dir is empty: set where the knowledge-base index is (or will be) built.")
    return Path(cfg.retrieval.index_dir) / "embeddings"
