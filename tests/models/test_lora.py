"""LoRA on the generator's LLM (``model.lora``), LLaVA and InstructBLIP (decoder-only LLaMA) alike: only
the adapters and the configured groups train; a trainable-only save writes peft's adapter files beside
its weights (and no adapter weights in them); loading merges the adapter, and the merged model computes
what the unmerged one did."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from rablip.errors import ConfigError
from rablip.models import RABlipForConditionalGeneration
from rablip.models.llava import RablipLlavaForConditionalGeneration
from rablip.models.loading import CheckpointError
from rablip.models.lora import ADAPTER_FILES, apply_lora, has_lora, merge_lora
from rablip.synthetic.build import build_tiny_checkpoint, tiny_architecture
from tests.models.conftest import make_batch
from tests.models.test_llava import _two_slot_batch
from tests.models.tiny_llava import build_tiny_llava

TINY_LLAMA_TEXT = {"model_type": "llama", "vocab_size": 128, "hidden_size": 32, "intermediate_size": 64,
                   "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
                   "max_position_embeddings": 128, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}


@pytest.fixture(scope="module")
def tiny_llava_dir(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("llava_lora"), seed=6)


@pytest.fixture(scope="module")
def tiny_instructblip_llama_dir(tmp_path_factory):
    architecture = tiny_architecture("opt")
    architecture["text"] = dict(TINY_LLAMA_TEXT)
    return build_tiny_checkpoint(tmp_path_factory.mktemp("ib_llama"), architecture, seed=7)


def _train_step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> set[str]:
    """One SGD step on the answer loss; the names of the state-dict entries it changed."""
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    labels = batch["input_ids"].clone()
    labels[:, :-3] = -100
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    model.train()
    model(**batch, labels=labels, return_logits=False).loss.backward()
    optimizer.step()
    model.eval()
    return {name for name, tensor in model.state_dict().items() if not torch.equal(tensor, before[name])}


def _check_adapter_round_trip(model, loader, batch, out_dir, trainable_prefix: str):
    assert has_lora(model)
    with torch.no_grad():
        unmerged = model(**batch).logits
    model.save_pretrained(str(out_dir), trainable_only=True)
    for file in ADAPTER_FILES:
        assert (out_dir / file).is_file(), file
    with safe_open(str(out_dir / "model.safetensors"), framework="pt") as handle:
        keys = list(handle.keys())
    assert keys and all(key.startswith(trainable_prefix) for key in keys)  # no adapter weights in it
    with safe_open(str(out_dir / ADAPTER_FILES[0]), framework="pt") as handle:
        assert any("lora_B" in key for key in handle.keys())
    reloaded = loader(str(out_dir)).eval()
    assert not has_lora(reloaded)  # merged into the LLM's weights
    assert reloaded.config.base_checkpoint == str(out_dir.resolve())  # the merged LLM lives here
    with torch.no_grad():
        merged = reloaded(**batch).logits
    assert (merged - unmerged).abs().max().item() <= 1e-4
    return reloaded


def test_lora_on_llava(tiny_llava_dir, tmp_path):
    model = RablipLlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, trainable_modules=["language_projection"])
    with torch.no_grad():
        base = model.eval()(**_two_slot_batch(model.config, [[True, True]])).logits
    assert apply_lora(model, r=4, alpha=8.0, dropout=0.0, target_modules=["q_proj", "v_proj"])
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or name.startswith("model.multi_modal_projector.") for name in trainable)
    assert any("lora_" in name for name in trainable)
    batch = _two_slot_batch(model.config, [[True, True, False], [True, False, True]])
    changed = _train_step(model, batch)
    assert changed and all("lora_" in n or n.startswith("model.multi_modal_projector.") for n in changed)
    assert any("lora_B" in name for name in changed)
    reloaded = _check_adapter_round_trip(model, RablipLlavaForConditionalGeneration.from_pretrained, batch,
                                         tmp_path / "ft", "model.multi_modal_projector.")
    with torch.no_grad():  # not vacuous: the merged LLM differs from the base's
        after = reloaded(**_two_slot_batch(model.config, [[True, True]])).logits
    assert (after - base).abs().max() > 1e-4


def test_lora_on_instructblip_llama(tiny_instructblip_llama_dir, tmp_path):
    model = RABlipForConditionalGeneration.from_pretrained(tiny_instructblip_llama_dir,
                                                           trainable_modules=["language_projection"])
    assert model.is_decoder_only
    assert apply_lora(model, r=4, alpha=8.0, dropout=0.0, target_modules=["q_proj", "v_proj"])
    batch = make_batch(model.config, [[True, True], [True, False]], decoder_only=True)
    batch.pop("labels")
    changed = _train_step(model, batch)
    assert any("lora_B" in name for name in changed)
    assert all("lora_" in n or n.startswith("language_projection.") for n in changed)
    _check_adapter_round_trip(model, RABlipForConditionalGeneration.from_pretrained, batch, tmp_path / "ft",
                              "language_projection.")
    config = json.loads((tmp_path / "ft" / ADAPTER_FILES[1]).read_text())
    assert config["r"] == 4 and sorted(config["target_modules"]) == ["q_proj", "v_proj"]


def test_lora_settings_are_checked(tiny_llava_dir):
    model = RablipLlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    assert not apply_lora(model, r=0, alpha=8.0, dropout=0.0, target_modules=["q_proj"]) and not has_lora(model)
    with pytest.raises(ConfigError, match="target_modules"):
        apply_lora(model, r=2, alpha=4.0, dropout=0.0, target_modules=["no_such_layer"])
    whole = RablipLlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, trainable_modules=["language_model"])
    with pytest.raises(ConfigError, match="not both"):
        apply_lora(whole, r=2, alpha=4.0, dropout=0.0, target_modules=["q_proj"])
    apply_lora(model, r=2, alpha=4.0, dropout=0.0, target_modules=["q_proj"])
    with pytest.raises(CheckpointError, match="full model"):
        model.save_pretrained("unused", trainable_only=False)
    assert merge_lora(model) and not has_lora(model)
    assert not any(p.requires_grad for n, p in model.named_parameters() if not n.startswith("model.multi_modal"))
