"""The pieces every retrieval job builds from a config: the encoder, its fingerprint, the batcher.

The retrieval encoder is the pre-trained one in ``model.fusion.checkpoint``. Its texts are tokenized
with the Q-Former tokenizer and its images preprocessed with the image processor of the generator's
base checkpoint (the ones pre-training used); they are found from ``model.checkpoint``'s
``config.json`` without loading the generator (whose LLM may be billions of parameters).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from rablip.config.schema import Config
from rablip.errors import ConfigError
from rablip.models.factory import QFORMER_TOKENIZER_DIR, ensure_generator_checkpoint, load_retrieval_encoder
from rablip.models.fusion import CONFIG_FILE, WEIGHTS_FILE
from rablip.retrieval.batches import RetrievalBatcher
from rablip.retrieval.index_manifest import sha256_of_file
from rablip.utils.io import read_json

_MAX_BASE_DEPTH = 4


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


def base_checkpoint_dir(cfg: Config) -> Path:
    """The generator checkpoint dir holding the processor files (follows rablip ``base_checkpoint``)."""
    path = ensure_generator_checkpoint(cfg).resolve()
    for _ in range(_MAX_BASE_DEPTH):
        base = read_json(path / "config.json", "checkpoint config").get("base_checkpoint")
        if not base:
            return path
        base_path = Path(base).expanduser()
        path = base_path if base_path.is_absolute() else (path / base_path).resolve()
    raise ConfigError(f"model.checkpoint {cfg.model.checkpoint}: base_checkpoint chain deeper than {_MAX_BASE_DEPTH}.")


def retrieval_batcher(cfg: Config) -> RetrievalBatcher:
    """The Q-Former tokenizer and image processor of the generator's base checkpoint."""
    base = base_checkpoint_dir(cfg)
    qformer_dir = base / QFORMER_TOKENIZER_DIR
    if not (base / "preprocessor_config.json").is_file() or not qformer_dir.is_dir():
        raise ConfigError(f"checkpoint {base} lacks its processor files ({QFORMER_TOKENIZER_DIR}/, "
                          "preprocessor_config.json): copy the whole transformers checkpoint dir.")
    return RetrievalBatcher.from_pretrained(qformer_dir, base, cfg.data.qformer_max_length)


def process_device() -> torch.device:
    """This process's GPU (``LOCAL_RANK``) when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


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
