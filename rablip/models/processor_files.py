"""The processor files of a generator checkpoint: where they are, how to load them, what size images
they make.

A transformers InstructBLIP/BLIP-2 checkpoint dir (and a full rablip one) holds, beside its weights,
the LLM tokenizer (``tokenizer*``, ``special_tokens_map.json``), the Q-Former tokenizer in
``qformer_tokenizer/`` and the image processor (``preprocessor_config.json``, a
``BlipImageProcessor``). A transformers LLaVA dir (``model_type: llava``) holds the LLM tokenizer and
a ``CLIPImageProcessor`` and no Q-Former tokenizer. A trainable-only rablip checkpoint holds none of
them: they are those of its ``base_checkpoint``. :func:`processor_dir` is the one place that finds them; the generator's
processor (:class:`rablip.models.processing.Collator`) and the fusion encoder's
(:class:`rablip.models.retrieval_processing.RetrievalBatcher`) both load from the dir it names.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, BlipImageProcessor, CLIPImageProcessor

from rablip.errors import ConfigError
from rablip.utils.io import read_json

QFORMER_TOKENIZER_DIR = "qformer_tokenizer"
"""The Q-Former tokenizer's subdirectory of a checkpoint dir (the LLM tokenizer sits in the dir itself)."""
IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
PROCESSOR_FILES = (IMAGE_PROCESSOR_FILE, "processor_config.json", "generation_config.json")
"""The non-tokenizer processor files a checkpoint dir may hold."""
_MAX_BASE_DEPTH = 4
#: ``model_type`` of the generator checkpoints without a Q-Former (the LLaVA family).
NO_QFORMER_MODEL_TYPES = ("llava", "rablip_llava")


def processor_dir(checkpoint: str | os.PathLike) -> Path:
    """The (resolved) dir holding the processor files of the generator checkpoint ``checkpoint``.

    That is the checkpoint itself, unless its ``config.json`` names a ``base_checkpoint`` (a
    trainable-only rablip checkpoint): then the chain of base checkpoints is followed (a relative path
    is taken from the dir that names it), at most four steps, to the first dir that names none.
    Raises ConfigError when a dir on the way has no ``config.json``, the chain is deeper, or the dir
    found lacks ``preprocessor_config.json`` or (a model with a Q-Former) ``qformer_tokenizer/``.
    """
    path = Path(checkpoint).expanduser().resolve()
    for _ in range(_MAX_BASE_DEPTH):
        config = path / "config.json"
        if not config.is_file():
            raise ConfigError(f"{path} holds no generator checkpoint (no config.json), so it has no processor files. "
                              "Point model.checkpoint at a transformers InstructBLIP/BLIP-2 dir (see checkpoints/README.md).")
        config_dict = read_json(config, "checkpoint config")
        base = config_dict.get("base_checkpoint")
        if not base:
            break
        base_path = Path(base).expanduser()
        path = base_path if base_path.is_absolute() else (path / base_path).resolve()
    else:
        raise ConfigError(f"checkpoint {checkpoint}: base_checkpoint chain deeper than {_MAX_BASE_DEPTH}.")
    needs_qformer = config_dict.get("model_type") not in NO_QFORMER_MODEL_TYPES
    if not (path / IMAGE_PROCESSOR_FILE).is_file() or needs_qformer and not (path / QFORMER_TOKENIZER_DIR).is_dir():
        raise ConfigError(f"checkpoint {path} lacks its processor files ({QFORMER_TOKENIZER_DIR}/, tokenizer files, "
                          f"{IMAGE_PROCESSOR_FILE}): copy the whole transformers checkpoint dir.")
    return path


def copy_processor_files(source: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """Copy the tokenizers and processor files of checkpoint dir ``source`` into ``out_dir`` (which
    exists), so that ``out_dir`` loads as a checkpoint with its processors."""
    out_dir = Path(out_dir)
    for entry in Path(source).iterdir():
        if entry.name == QFORMER_TOKENIZER_DIR:
            shutil.copytree(entry, out_dir / entry.name)
        elif entry.is_file() and (entry.name in PROCESSOR_FILES or entry.name.startswith(("tokenizer", "special_"))):
            shutil.copy2(entry, out_dir / entry.name)


def _load(what: str, directory: str | os.PathLike, loader) -> Any:
    if not os.path.isdir(directory):
        raise ConfigError(f"{what} directory {directory} does not exist; point the config at a saved dir.")
    try:
        return loader(os.fspath(directory))
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load the {what} from {directory}: {err}") from err


def load_tokenizer(directory: str | os.PathLike, what: str = "tokenizer") -> Any:
    """The ``AutoTokenizer`` saved in ``directory`` (ConfigError naming ``what`` when it cannot load)."""
    return _load(what, directory, AutoTokenizer.from_pretrained)


def load_image_processor(directory: str | os.PathLike) -> BlipImageProcessor | CLIPImageProcessor:
    """The image processor saved in ``directory``: a ``CLIPImageProcessor`` where its
    ``preprocessor_config.json`` names one (LLaVA), else a ``BlipImageProcessor`` (ConfigError when it
    cannot load)."""
    config = Path(directory) / IMAGE_PROCESSOR_FILE
    kind = read_json(config, "image processor config").get("image_processor_type", "") if config.is_file() else ""
    loader = CLIPImageProcessor if kind.startswith("CLIPImageProcessor") else BlipImageProcessor
    return _load("image processor", directory, loader.from_pretrained)


def image_size(image_processor: Any) -> tuple[int, int]:
    """``(height, width)`` of the pixel values ``image_processor`` makes: its ``crop_size`` when it
    center-crops (CLIPImageProcessor), else its ``size``; ConfigError when that has no height and width
    (BlipImageProcessor, which resizes to exactly that, has both)."""
    size = image_processor.size
    if getattr(image_processor, "do_center_crop", False) and getattr(image_processor, "crop_size", None):
        size = image_processor.crop_size
    height = size.get("height") if isinstance(size, dict) else getattr(size, "height", None)
    width = size.get("width") if isinstance(size, dict) else getattr(size, "width", None)
    if not height or not width:
        raise ConfigError(
            f"the image processor's size {size} has no height/width; save it with "
            "size={'height': H, 'width': W} (BlipImageProcessor does)."
        )
    return int(height), int(width)
