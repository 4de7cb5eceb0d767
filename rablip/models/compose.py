"""Compose a generator checkpoint from an InstructBLIP checkpoint and another LLM (RA-BLIP's T5 pairing).

RA-BLIP's release pairs InstructBLIP Flan-T5-XL's frozen vision tower (with ``ln_vision``), its
Q-Former and query tokens with T5-base or T5-large (``google/t5-base``, ``google/t5-large``; LAVIS yamls
``blip2_instruct_t5-base.yaml`` / ``-large.yaml``, both loading ``instruct_blip_flanxl_trimmed.pth``).
:func:`compose_generator` writes that pairing as a transformers InstructBLIP dir, which every rablip
stage then loads like a published checkpoint:

- vision model, Q-Former and query tokens: copied from the InstructBLIP dir (its safetensors, read by
  prefix, so the Flan-T5-XL LLM is never loaded);
- language model: the LLM dir's weights (``T5ForConditionalGeneration.from_pretrained``);
- language projection (the release's ``t5_proj``): a new ``nn.Linear(Q-Former width, LLM width)`` with
  PyTorch's default initialisation, seeded, as the release constructs it (the Flan-T5-XL projection,
  768 x 2048, does not fit a 768- or 1024-wide T5);
- the LLM's feed-forward activation: the release sets ``dense_act_fn = "gelu"`` on every T5 config it
  loads (``activation="gelu"``, the default here; ``"keep"`` keeps the LLM's own, ReLU for T5 v1.0);
- processor files: the InstructBLIP dir's image processor, Q-Former tokenizer and LLM tokenizer (T5 and
  Flan-T5 share one SentencePiece vocabulary; the InstructBLIP tokenizer also holds the ``<image>``
  token its ``image_token_index`` names).

``compose_report.json`` beside the weights records the sources and these choices.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import (
    AutoConfig,
    AutoModelForSeq2SeqLM,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
)

from rablip.errors import ConfigError
from rablip.models.processor_files import copy_processor_files
from rablip.utils.artefacts import build_beside
from rablip.utils.io import read_json

#: The parameter groups taken from the InstructBLIP dir (transformers' key prefixes).
COPIED_PREFIXES = ("vision_model.", "qformer.", "query_tokens")
ACTIVATIONS = ("gelu", "keep")
REPORT_FILE = "compose_report.json"


@dataclass
class ComposeReport:
    instructblip: str
    llm: str
    activation: str
    """The LLM's dense_act_fn in the composed config."""
    projection: str
    copied: int = 0
    """Tensors copied from the InstructBLIP dir."""
    llm_tensors: int = 0
    skipped: list[str] = field(default_factory=list)
    """InstructBLIP tensors not copied (its LLM and projection)."""


def _safetensors_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(read_json(index, "safetensors index")["weight_map"].values()))
        return [directory / shard for shard in shards]
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    raise ConfigError(f"{directory} holds no safetensors weights (model.safetensors or its index); save the "
                      "InstructBLIP checkpoint in the transformers safetensors layout.")


def _read_instructblip(directory: Path) -> tuple[InstructBlipConfig, dict[str, torch.Tensor], list[str]]:
    config_dict = read_json(directory / "config.json", "InstructBLIP config")
    if config_dict.get("model_type") != "instructblip":
        raise ConfigError(f"{directory} is a {config_dict.get('model_type')!r} checkpoint; --instructblip needs a "
                          "transformers InstructBLIP dir (e.g. Salesforce/instructblip-flan-t5-xl).")
    config = InstructBlipConfig.from_pretrained(os.fspath(directory))
    copied: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for path in _safetensors_files(directory):
        with safe_open(os.fspath(path), framework="pt") as weights:
            for name in weights.keys():
                if name.startswith(COPIED_PREFIXES):
                    copied[name] = weights.get_tensor(name)
                else:
                    skipped.append(name)
    return config, copied, skipped


def _llm_config(llm_dir: Path, activation: str):
    config = AutoConfig.from_pretrained(os.fspath(llm_dir))
    if not config.is_encoder_decoder:
        raise ConfigError(f"{llm_dir} holds a {config.model_type} model; the release pairs InstructBLIP with an "
                          "encoder-decoder T5 (google/t5-base, google/t5-large).")
    if activation == "gelu":
        config.dense_act_fn = "gelu"
    return config


def compose_generator(instructblip_dir: str | os.PathLike, llm_dir: str | os.PathLike, out_dir: str | os.PathLike,
                      *, activation: str = "gelu", seed: int = 0) -> ComposeReport:
    """Write InstructBLIP ``instructblip_dir``'s vision tower and Q-Former with the LLM of ``llm_dir`` to
    ``out_dir`` (which must not exist) as a transformers InstructBLIP dir; see the module docstring."""
    if activation not in ACTIVATIONS:
        raise ConfigError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    source, llm_path, out = Path(instructblip_dir), Path(llm_dir), Path(out_dir)
    for what, directory in (("InstructBLIP", source), ("LLM", llm_path)):
        if not (directory / "config.json").is_file():
            raise ConfigError(f"{what} dir {directory} has no config.json; point it at a transformers checkpoint dir.")
    if out.exists():
        raise ConfigError(f"output dir {out} already exists; choose a new one.")
    base_config, copied, skipped = _read_instructblip(source)
    text_config = _llm_config(llm_path, activation)
    if base_config.image_token_index is not None and base_config.image_token_index >= text_config.vocab_size:
        raise ConfigError(f"{source}'s image token id {base_config.image_token_index} is outside {llm_path}'s "
                          f"vocabulary ({text_config.vocab_size}); the LLM must share the InstructBLIP LLM's vocabulary.")
    config = InstructBlipConfig(vision_config=base_config.vision_config.to_dict(),
                                qformer_config=base_config.qformer_config.to_dict(),
                                text_config=text_config.to_dict(), num_query_tokens=base_config.num_query_tokens,
                                image_token_index=base_config.image_token_index)
    torch.manual_seed(seed)
    model = InstructBlipForConditionalGeneration(config)
    missing = [name for name in model.state_dict() if name.startswith(COPIED_PREFIXES) and name not in copied]
    if missing:
        raise ConfigError(f"{source} lacks {len(missing)} vision/Q-Former tensors (first: {missing[:3]}).")
    model.load_state_dict(copied, strict=False)
    llm = AutoModelForSeq2SeqLM.from_pretrained(os.fspath(llm_path), config=text_config)
    model.language_model.load_state_dict(llm.state_dict())
    generator = torch.Generator().manual_seed(seed)
    projection = model.language_projection
    with torch.no_grad():  # nn.Linear's default initialisation (kaiming-uniform weight, uniform bias), seeded
        bound = 1.0 / projection.in_features ** 0.5
        projection.weight.uniform_(-bound, bound, generator=generator)
        projection.bias.uniform_(-bound, bound, generator=generator)
    report = ComposeReport(instructblip=str(source), llm=str(llm_path), activation=text_config.dense_act_fn,
                           projection=f"new nn.Linear({projection.in_features}, {projection.out_features}), "
                                      f"default init, seed {seed}",
                           copied=len(copied), llm_tensors=len(llm.state_dict()), skipped=sorted(skipped))
    out.parent.mkdir(parents=True, exist_ok=True)
    with build_beside(out, REPORT_FILE) as build:  # a failed write leaves no half-written dir
        model.save_pretrained(build.path)
        copy_processor_files(source, build.path)
        build.commit(asdict(report))
    return report
