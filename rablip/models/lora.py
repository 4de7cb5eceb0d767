"""LoRA on the generator's LLM through peft (``model.lora``), for both generator families.

:func:`apply_lora` wraps the LLM (InstructBLIP's ``language_model``, LLaVA's ``model.language_model``)
in a peft :class:`~peft.PeftModel` with fresh adapters on ``target_modules``; the adapters train beside
the groups of ``model.trainable`` (their parameter names hold ``lora_``: module group ``lora``), the
LLM's own weights stay frozen. A trainable-only checkpoint keeps them apart from its
``model.safetensors``: peft's ``adapter_model.safetensors`` + ``adapter_config.json`` in the same dir
(:func:`save_lora_adapter`). Loading such a dir merges the adapter into the LLM's weights
(:func:`merge_lora_adapter`), so evaluation runs the plain LLM at full speed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from torch import nn

from rablip.errors import ConfigError
from rablip.models.freezing import apply_trainable_modules

#: The files peft writes for an adapter, kept in a trainable-only checkpoint dir.
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


def llm_slot(model: nn.Module) -> tuple[nn.Module, str]:
    """(parent module, attribute name) of the generator's LLM: the model's ``llm_slot`` when it names
    one (LLaVA: the LLM body inside ``model.model``), else ``(model, "language_model")``."""
    return getattr(model, "llm_slot", (model, "language_model"))


def has_lora(model: nn.Module) -> bool:
    """Whether the generator's LLM carries (unmerged) LoRA adapters."""
    parent, name = llm_slot(model)
    return isinstance(getattr(parent, name), PeftModel)


def apply_lora(model: nn.Module, r: int, alpha: float, dropout: float, target_modules: Sequence[str]) -> bool:
    """Wrap the LLM with fresh LoRA adapters of rank ``r`` (scale ``alpha / r``, ``dropout`` on their
    input) on the linear layers named by ``target_modules`` (suffixes, as peft matches them); the
    other trainable groups keep ``requires_grad`` from ``config.trainable_modules``. ``r`` 0 does
    nothing. Returns whether adapters were added. ConfigError when the LLM itself trains (LoRA would
    be redundant), when it already carries adapters, or when no module matches ``target_modules``."""
    if r <= 0:
        return False
    if "language_model" in model.config.trainable_modules:
        raise ConfigError("model.lora.r > 0 with language_model in model.trainable: train the whole LLM or LoRA "
                          "adapters on it, not both; remove language_model from model.trainable or set model.lora.r=0")
    if has_lora(model):
        raise ConfigError("the generator's LLM already carries LoRA adapters; merge them first (merge_lora)")
    parent, name = llm_slot(model)
    settings = PeftLoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                              bias="none")
    try:
        wrapped = get_peft_model(getattr(parent, name), settings)
    except ValueError as error:
        raise ConfigError(f"model.lora.target_modules {list(target_modules)}: {error}") from error
    setattr(parent, name, wrapped)
    apply_trainable_modules(model)
    return True


def save_lora_adapter(model: nn.Module, out_dir: str | Path) -> bool:
    """Write the LLM's LoRA adapter as peft's ``adapter_model.safetensors`` + ``adapter_config.json``
    into ``out_dir`` (nothing else of peft's output); without LoRA returns False and removes adapter files
    an earlier save left there (they would be merged on load)."""
    out_dir = Path(out_dir)
    if not has_lora(model):
        for file in ADAPTER_FILES:
            (out_dir / file).unlink(missing_ok=True)
        return False
    parent, name = llm_slot(model)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".adapter-") as scratch:
        getattr(parent, name).save_pretrained(scratch, safe_serialization=True)
        for file in ADAPTER_FILES:
            (Path(scratch) / file).replace(out_dir / file)
    return True


def merge_lora(model: nn.Module) -> bool:
    """Merge the LLM's LoRA adapters into its weights and drop the peft wrapper; returns whether it had any."""
    if not has_lora(model):
        return False
    parent, name = llm_slot(model)
    setattr(parent, name, getattr(parent, name).merge_and_unload())
    apply_trainable_modules(model)
    return True


def merge_lora_adapter(model: nn.Module, checkpoint_dir: str | Path) -> bool:
    """Load the adapter saved in ``checkpoint_dir`` (if its ``adapter_config.json`` is there) onto the
    LLM and merge it into the LLM's weights; returns whether there was one. The adapter's weights are
    read from safetensors only."""
    checkpoint_dir = Path(checkpoint_dir)
    if not (checkpoint_dir / ADAPTER_FILES[1]).is_file():
        return False
    if not (checkpoint_dir / ADAPTER_FILES[0]).is_file():
        raise ConfigError(f"{checkpoint_dir}: {ADAPTER_FILES[1]} without {ADAPTER_FILES[0]} (pickled adapters are "
                          "not read); copy the whole checkpoint dir")
    if has_lora(model):
        raise ConfigError(f"{checkpoint_dir}: the LLM already carries LoRA adapters; merge them before loading another")
    parent, name = llm_slot(model)
    adapted = PeftModel.from_pretrained(getattr(parent, name), str(checkpoint_dir), is_trainable=False)
    setattr(parent, name, adapted.merge_and_unload())
    apply_trainable_modules(model)
    return True

