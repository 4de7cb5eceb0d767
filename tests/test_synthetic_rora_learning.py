"""The synthetic world's tiny LLaVA is warmed up before it is saved, as the tiny InstructBLIP generator is
(rablip.synthetic.llava_warmup): built from transformers' random initialisation and fine-tuned as it was,
the demo's RORA run kept its loss at ~6.7 and answered nothing. These tests run a few warm-up steps on a
tiny LLaVA: both warm-ups lower their losses and train what the projector reads and the LLM, the viewing
warm-up reads the layer LLaVA's projector reads."""

from __future__ import annotations

import itertools

import pytest
import torch
from transformers import AutoTokenizer, CLIPImageProcessor, LlavaForConditionalGeneration

from rablip.synthetic.llava_warmup import CausalLM, ProjectorInput, warm_up_llava
from rablip.synthetic.reading import reading_examples
from rablip.synthetic.tiny_llava import WORLD_VISION_FEATURE_LAYER, build_llava_checkpoint
from rablip.synthetic.tokenizer_training import train_tokenizer
from rablip.synthetic.world_tokenizers import prompt_texts

IMAGE_SIZE, PATCH_SIZE = 32, 8


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("llava_warmup")
    corpus = [*prompt_texts(include_release=True),
              *(f"{e.lead} {e.prompt} {e.answer}" for e in itertools.islice(reading_examples(0), 300))]
    tokenizer = train_tokenizer(corpus, tmp / "tok", kind="causal", vocab_size=400)
    return build_llava_checkpoint(tmp / "model", tokenizer, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE,
                                  vision_hidden_size=32, vision_intermediate_size=64, llm_hidden_size=32,
                                  llm_intermediate_size=64, tie_embeddings=True, init="trainable",
                                  vision_feature_layer=WORLD_VISION_FEATURE_LAYER)


def _load(path):
    torch.manual_seed(0)
    return LlavaForConditionalGeneration.from_pretrained(str(path)), CLIPImageProcessor.from_pretrained(str(path))


def test_the_projector_input_is_the_feature_layer_without_cls(llava_dir):
    model, _ = _load(llava_dir)
    pixels = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    seen = ProjectorInput(model)(pixels).last_hidden_state
    hidden = model.model.vision_tower(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert model.config.vision_feature_layer == WORLD_VISION_FEATURE_LAYER
    torch.testing.assert_close(seen, hidden[WORLD_VISION_FEATURE_LAYER][:, 1:])
    assert seen.shape[1] == (IMAGE_SIZE // PATCH_SIZE) ** 2


def test_both_warm_ups_lower_their_losses_and_train_the_tower_and_the_llm(llava_dir):
    model, processor = _load(llava_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(llava_dir))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    losses = warm_up_llava(model, tokenizer, processor, [], vision_steps=40, reading_steps=60, seed=0,
                           show_progress=False)
    for name, values in losses.items():
        assert sum(values[-10:]) / 10 < 0.9 * sum(values[:5]) / 5, name
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert any(name.startswith("model.vision_tower.encoder.layers.0") for name in changed)
    assert any(name.startswith("model.language_model.layers") for name in changed)
    assert not any(name.startswith("model.multi_modal_projector") for name in changed)  # fine-tuning trains it
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight  # still tied
    assert CausalLM(model).config.is_encoder_decoder is False


def test_no_steps_leave_the_model_untouched(llava_dir):
    model, processor = _load(llava_dir)
    before = [p.detach().clone() for p in model.parameters()]
    assert warm_up_llava(model, None, processor, [], vision_steps=0, reading_steps=0, seed=0) == {}
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))

