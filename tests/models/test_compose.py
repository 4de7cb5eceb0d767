"""RA-BLIP's T5 pairing: an InstructBLIP's vision tower and Q-Former with another T5 (scripts/compose_generator.py)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    BlipImageProcessor,
    InstructBlipForConditionalGeneration,
    T5Config,
    T5ForConditionalGeneration,
)

from rablip.errors import ConfigError
from rablip.models.compose import compose_generator
from rablip.models.rablip import RABlipForConditionalGeneration
from tests.models.conftest import make_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory, tiny_t5_dir):
    """A tiny T5 v1.0-style LLM (ReLU feed-forward) wider than the InstructBLIP's, sharing its vocabulary."""
    source_vocab = json.loads((Path(tiny_t5_dir) / "config.json").read_text())["text_config"]["vocab_size"]
    torch.manual_seed(7)
    model = T5ForConditionalGeneration(T5Config(vocab_size=source_vocab, d_model=48, d_kv=8, d_ff=96, num_layers=2,
                                                num_heads=6, feed_forward_proj="relu", decoder_start_token_id=0,
                                                pad_token_id=0, eos_token_id=1))
    out = tmp_path_factory.mktemp("t5") / "t5-tiny"
    model.save_pretrained(out)
    return out


def test_composed_dir_holds_the_vision_qformer_and_the_new_llm(tmp_path, tiny_t5_dir, t5_dir):
    tiny_t5_dir = shutil.copytree(tiny_t5_dir, tmp_path / "source")
    BlipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tiny_t5_dir)
    (tiny_t5_dir / "qformer_tokenizer").mkdir()
    (tiny_t5_dir / "qformer_tokenizer" / "tokenizer_config.json").write_text("{}")
    out = tmp_path / "composed"
    report = compose_generator(tiny_t5_dir, t5_dir, out, seed=3)
    composed = InstructBlipForConditionalGeneration.from_pretrained(out)
    source = load_file(Path(tiny_t5_dir) / "model.safetensors")
    state = composed.state_dict()
    for name, tensor in source.items():
        if name.startswith(("vision_model.", "qformer.", "query_tokens")):
            torch.testing.assert_close(state[name], tensor, rtol=0, atol=0)
    llm = T5ForConditionalGeneration.from_pretrained(t5_dir).state_dict()
    for name, tensor in llm.items():
        torch.testing.assert_close(state[f"language_model.{name}"], tensor, rtol=0, atol=0)
    projection = composed.language_projection
    assert projection.weight.shape == (48, composed.config.qformer_config.hidden_size)
    bound = projection.in_features ** -0.5
    assert projection.weight.abs().max() <= bound and projection.weight.std() > bound / 4
    assert composed.config.text_config.dense_act_fn == "gelu"  # the release overrides T5's activation
    assert report.copied > 0 and report.activation == "gelu"
    assert (out / "qformer_tokenizer").is_dir() and (out / "preprocessor_config.json").is_file()
    assert json.loads((out / "compose_report.json").read_text())["llm"] == str(t5_dir)

    model = RABlipForConditionalGeneration.from_pretrained(out)  # rablip loads it like a published checkpoint
    with torch.no_grad():
        loss = model(**make_batch(model.config, [[True, False]])).loss
    assert torch.isfinite(loss)


def test_keep_activation_and_seeded_projection(tmp_path, tiny_t5_dir, t5_dir):
    compose_generator(tiny_t5_dir, t5_dir, tmp_path / "a", activation="keep", seed=1)
    compose_generator(tiny_t5_dir, t5_dir, tmp_path / "b", activation="keep", seed=2)
    a = InstructBlipForConditionalGeneration.from_pretrained(tmp_path / "a")
    b = InstructBlipForConditionalGeneration.from_pretrained(tmp_path / "b")
    assert a.config.text_config.dense_act_fn == "relu"
    assert not torch.equal(a.language_projection.weight, b.language_projection.weight)


def test_refuses_a_non_instructblip_source_and_an_existing_output(tmp_path, tiny_blip2_dir, tiny_t5_dir, t5_dir):
    with pytest.raises(ConfigError, match="InstructBLIP dir"):
        compose_generator(tiny_blip2_dir, t5_dir, tmp_path / "x")
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        compose_generator(tiny_t5_dir, t5_dir, tmp_path / "taken")
    assert not (tmp_path / "x").exists()


def test_cli_reports_a_bad_llm_dir_with_exit_code_2(tmp_path, tiny_t5_dir):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "compose_generator.py"), "--instructblip",
                             str(tiny_t5_dir), "--llm", str(tmp_path / "missing"), "--output", str(tmp_path / "o")],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert "LLM dir" in result.stderr and "Traceback" not in result.stderr
