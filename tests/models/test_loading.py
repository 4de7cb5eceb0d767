"""Strict loading of the three checkpoint kinds, save/load round trips, and generation after loading."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from rablip.errors import RablipError
from rablip.models import RABlipForConditionalGeneration
from rablip.models.loading import TRAINABLE_WEIGHTS_FILE, CheckpointError, checkpoint_kind, trainable_metadata

from .conftest import make_batch


def _copy_checkpoint(source, target):
    shutil.copytree(source, target)
    return target


def _logits(model, batch):
    with torch.no_grad():
        return model.eval()(**batch).logits


def test_missing_and_unexpected_keys_are_listed(tiny_t5_dir, tmp_path):
    broken = _copy_checkpoint(tiny_t5_dir, tmp_path / "broken")
    weights = load_file(broken / "model.safetensors")
    weights.pop("language_projection.bias")
    weights["qformer.extra_head.weight"] = torch.zeros(2)
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as caught:
        RABlipForConditionalGeneration.from_pretrained(broken)
    message = str(caught.value)
    assert "language_projection.bias" in message and "missing" in message
    assert "qformer.extra_head.weight" in message and "unexpected" in message
    assert isinstance(caught.value, RablipError)


def test_expected_missing_slot_tables_start_at_zero(tiny_t5_dir):
    model = RABlipForConditionalGeneration.from_pretrained(tiny_t5_dir)
    assert torch.count_nonzero(model.slot_type_embeds) == 0
    assert torch.count_nonzero(model.slot_position_embeds) == 0
    assert model.config.base_checkpoint == str(tiny_t5_dir.resolve())


def test_other_architecture_is_refused(tiny_t5_dir, tiny_opt_dir, tmp_path):
    """T5 config with OPT weights: wrong keys listed, nothing silently initialised."""
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    shutil.copy(tiny_t5_dir / "config.json", foreign / "config.json")
    shutil.copy(tiny_opt_dir / "model.safetensors", foreign / "model.safetensors")
    with pytest.raises(CheckpointError, match="language_model.model.decoder"):
        RABlipForConditionalGeneration.from_pretrained(foreign)
    config = json.loads((tiny_t5_dir / "config.json").read_text())
    config["model_type"] = "llava"
    (foreign / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="llava"):
        RABlipForConditionalGeneration.from_pretrained(foreign)


def test_shape_mismatch_is_refused(tiny_t5_dir, tmp_path):
    broken = _copy_checkpoint(tiny_t5_dir, tmp_path / "shape")
    weights = load_file(broken / "model.safetensors")
    weights["language_projection.weight"] = torch.zeros(5, 5)
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="language_projection.weight"):
        RABlipForConditionalGeneration.from_pretrained(broken)


def test_pickled_weights_are_not_read(tiny_t5_dir, tmp_path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(tiny_t5_dir / "config.json", pickled / "config.json")
    (pickled / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(CheckpointError, match="safetensors"):
        RABlipForConditionalGeneration.from_pretrained(pickled)


def test_full_round_trip(tiny_opt_dir, tmp_path):
    model = RABlipForConditionalGeneration.from_pretrained(tiny_opt_dir, max_image_slots=4)
    with torch.no_grad():
        model.slot_type_embeds.normal_()
        model.qformer.embeddings.layernorm.bias.add_(0.5)
    model.save_pretrained(tmp_path / "full")
    assert checkpoint_kind(tmp_path / "full") == "rablip-full"
    assert all(path.suffix in (".json", ".safetensors") for path in (tmp_path / "full").iterdir())
    loaded = RABlipForConditionalGeneration.from_pretrained(tmp_path / "full")
    assert loaded.config.max_image_slots == 4
    batch = make_batch(model.config, [[True, True, False]], decoder_only=True)
    assert torch.equal(_logits(model, batch), _logits(loaded, batch))


def test_trainable_only_round_trip(tiny_t5_dir, tmp_path):
    model = RABlipForConditionalGeneration.from_pretrained(tiny_t5_dir)
    with torch.no_grad():
        model.slot_position_embeds.normal_()
        model.language_projection.weight.mul_(1.5)
    model.save_pretrained(tmp_path / "trainable", trainable_only=True)
    assert checkpoint_kind(tmp_path / "trainable") == "rablip-trainable"
    saved = load_file(tmp_path / "trainable" / TRAINABLE_WEIGHTS_FILE)
    assert not any(key.startswith(("vision_model.", "language_model.")) for key in saved)
    loaded = RABlipForConditionalGeneration.from_pretrained(tmp_path / "trainable")
    batch = make_batch(model.config, [[True, False, True]])
    assert torch.equal(_logits(model, batch), _logits(loaded, batch))
    assert not any(p.requires_grad for p in loaded.language_model.parameters())

    # a trainable-only file missing part of its groups is an error
    saved.pop("query_tokens")
    save_file(saved, str(tmp_path / "trainable" / TRAINABLE_WEIGHTS_FILE),
              metadata=trainable_metadata(model.config.trainable_modules))
    with pytest.raises(CheckpointError, match="query_tokens"):
        RABlipForConditionalGeneration.from_pretrained(tmp_path / "trainable")


def test_moved_base_needs_override(tiny_t5_dir, tmp_path):
    base = _copy_checkpoint(tiny_t5_dir, tmp_path / "base")
    model = RABlipForConditionalGeneration.from_pretrained(base)
    model.save_pretrained(tmp_path / "run", trainable_only=True)
    moved = base.rename(tmp_path / "moved")
    with pytest.raises(CheckpointError, match="base_checkpoint"):
        RABlipForConditionalGeneration.from_pretrained(tmp_path / "run")
    loaded = RABlipForConditionalGeneration.from_pretrained(tmp_path / "run", base_checkpoint=str(moved))
    assert loaded.config.base_checkpoint == str(moved.resolve())


def test_unknown_override_is_refused(tiny_t5_dir):
    with pytest.raises(CheckpointError, match="max_image_slot"):
        RABlipForConditionalGeneration.from_pretrained(tiny_t5_dir, max_image_slot=3)


def test_blip2_dir_loads_and_round_trips(tiny_blip2_dir, tmp_path):
    model = RABlipForConditionalGeneration.from_pretrained(tiny_blip2_dir)
    assert model.config.qformer_text_input is False
    model.save_pretrained(tmp_path / "blip2_run", trainable_only=True)
    loaded = RABlipForConditionalGeneration.from_pretrained(tmp_path / "blip2_run")
    batch = make_batch(model.config, [[True, True]], decoder_only=True)
    batch.pop("qformer_input_ids")
    batch.pop("qformer_attention_mask")
    assert torch.equal(_logits(model, batch), _logits(loaded, batch))


def test_generate_after_from_pretrained(tiny_t5_dir, tiny_opt_dir):
    for directory, decoder_only in ((tiny_t5_dir, False), (tiny_opt_dir, True)):
        model = RABlipForConditionalGeneration.from_pretrained(directory).eval()
        batch = make_batch(model.config, [[True, True, False], [True, False, False]], decoder_only=decoder_only)
        batch.pop("labels")
        generated = model.generate(**batch, max_new_tokens=3, num_beams=2, do_sample=False)
        assert generated.shape[0] == 2
        assert 1 <= generated.shape[1] <= 4
        assert int(generated.max()) < model.config.text_config.vocab_size
