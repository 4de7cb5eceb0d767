"""The LLaVA-1.5 generator family: a transformers LLaVA dir loads unchanged, computes exactly what
transformers' LLaVA computes with one image, places one block of image tokens per real slot in slot
order, trains only the configured modules, and speaks the processor's batch contract."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import LlavaForConditionalGeneration

from rablip.config.load import CONFIGS_DIR, load_config
from rablip.data.records import KBItem
from rablip.data.samples import Reference, Sample
from rablip.errors import ConfigError
from rablip.models.factory import load_generator
from rablip.models.llava import RablipLlavaForConditionalGeneration
from rablip.models.loading import CheckpointError
from rablip.models.lora import has_lora
from rablip.models.processing import Collator
from rablip.models.processor_files import load_image_processor, load_tokenizer
from tests.models.tiny_llava import build_tiny_llava


@pytest.fixture(scope="module")
def tiny_llava_dir(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("llava"), seed=4)


def _single_image_inputs(config, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    image_tokens = torch.full((2, config.num_query_tokens), config.image_token_index)
    text = torch.randint(5, 40, (2, 6), generator=generator)
    input_ids = torch.cat([torch.ones(2, 1, dtype=torch.long), image_tokens, text], dim=1)
    labels = input_ids.clone()
    labels[:, : 1 + config.num_query_tokens + 2] = -100
    return {"pixel_values": torch.randn(2, 3, 28, 28, generator=generator), "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids), "labels": labels}


def test_parity_with_transformers_llava(tiny_llava_dir):
    reference = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir).eval()
    ours = RablipLlavaForConditionalGeneration.from_pretrained(tiny_llava_dir).eval()
    assert ours.config.num_query_tokens == 4 and ours.is_decoder_only
    inputs = _single_image_inputs(ours.config)
    with torch.no_grad():
        expected, got = reference(**inputs), ours(**inputs)
    assert got.logits.shape == expected.logits.shape
    assert (got.logits - expected.logits).abs().max().item() <= 1e-5
    assert abs(got.loss.item() - expected.loss.item()) <= 1e-5
    prompt = {key: value for key, value in inputs.items() if key != "labels"}
    expected_ids = reference.generate(**prompt, max_new_tokens=4, do_sample=False)
    got_ids = ours.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert torch.equal(got_ids, expected_ids[:, inputs["input_ids"].shape[1]:])


def test_weights_are_those_of_the_checkpoint(tiny_llava_dir):
    """Not vacuous: the loaded weights are the saved ones (not a fresh init), so parity means loading worked."""
    reference = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    ours = RablipLlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    assert reference.state_dict().keys() == ours.state_dict().keys()
    for key, tensor in reference.state_dict().items():
        assert torch.equal(tensor, ours.state_dict()[key]), key


def _two_slot_batch(config, slot_mask: list[list[bool]], seed: int = 1) -> dict[str, torch.Tensor]:
    """Per real slot a block of image tokens followed by two snippet tokens; then the question."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.tensor(slot_mask)
    pixel_values = torch.randn(*mask.shape, 3, 28, 28, generator=generator)
    pixel_values[~mask] = 0.0
    rows = []
    for real_slots in mask.tolist():
        ids = [1]
        for real in real_slots:
            ids += ([config.image_token_index] * config.num_query_tokens if real else []) + [20, 21]
        rows.append(ids + [30, 31, 32])
    length = max(len(row) for row in rows)
    input_ids = torch.tensor([[3] * (length - len(row)) + row for row in rows])
    attention_mask = torch.tensor([[0] * (length - len(row)) + [1] * len(row) for row in rows])
    return {"pixel_values": pixel_values, "image_slot_mask": mask, "input_ids": input_ids,
            "attention_mask": attention_mask}


def test_each_real_slot_is_its_own_block_in_slot_order(tiny_llava_dir):
    model = RablipLlavaForConditionalGeneration.from_pretrained(tiny_llava_dir).eval()
    config = model.config
    batch = _two_slot_batch(config, [[True, True, False], [True, False, True]])
    with torch.no_grad():
        embeds = model.embed_inputs(batch["pixel_values"], batch["image_slot_mask"], batch["input_ids"])
        for row, slots in enumerate(([0, 1], [0, 2])):
            positions = (batch["input_ids"][row] == config.image_token_index).nonzero().flatten()
            assert positions.numel() == 2 * config.num_query_tokens  # the missing slot has no block
            blocks = positions.view(2, config.num_query_tokens)
            for block, slot in zip(blocks, slots, strict=True):
                features = model.encode_images(batch["pixel_values"][row, slot].unsqueeze(0))[0]
                assert torch.allclose(embeds[row, block], features, atol=1e-6)
        # a second image changes the answer's logits; swapping the two images' order changes them too
        swapped = batch["pixel_values"].clone()
        swapped[0, [0, 1]] = batch["pixel_values"][0, [1, 0]]
        first, second = model(**batch).logits[0, -1], model(**dict(batch, pixel_values=swapped)).logits[0, -1]
    assert (first - second).abs().max() > 1e-4


def test_image_token_count_must_match_real_slots(tiny_llava_dir):
    model = RablipLlavaForConditionalGeneration.from_pretrained(tiny_llava_dir).eval()
    batch = _two_slot_batch(model.config, [[True, True]])
    batch["image_slot_mask"] = torch.tensor([[True, False]])
    with pytest.raises(ValueError, match="do not match the real image slots"):
        model(**batch)


def test_a_finetuning_step_updates_only_the_configured_modules(tiny_llava_dir):
    model = RablipLlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, trainable_modules=["language_projection"])
    model.train()
    assert not model.vision_model.training  # a frozen tower stays in eval mode
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    batch = _two_slot_batch(model.config, [[True, True, False], [True, False, True]])
    labels = batch["input_ids"].clone()
    labels[:, :-3] = -100
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(**batch, labels=labels, return_logits=False).loss.backward()
    optimizer.step()
    changed = {name for name, tensor in model.state_dict().items() if not torch.equal(tensor, before[name])}
    assert changed == {name for name in before if name.startswith("model.multi_modal_projector.")}


def test_unknown_trainable_group_is_refused(tiny_llava_dir):
    with pytest.raises(ConfigError, match="not module groups of the LLaVA generator"):
        RablipLlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, trainable_modules=["qformer"])


def test_trainable_only_checkpoint_round_trip(tiny_llava_dir, tmp_path):
    model = RablipLlavaForConditionalGeneration.from_pretrained(tiny_llava_dir).eval()
    with torch.no_grad():
        model.language_projection.linear_2.bias.add_(0.25)
    model.save_pretrained(str(tmp_path / "ft"), trainable_only=True)
    again = RablipLlavaForConditionalGeneration.from_pretrained(str(tmp_path / "ft")).eval()
    assert again.config.base_checkpoint == str(tiny_llava_dir.resolve())
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[key]), key
    model.save_pretrained(str(tmp_path / "full"))
    full = RablipLlavaForConditionalGeneration.from_pretrained(str(tmp_path / "full"))
    assert torch.equal(full.language_projection.linear_2.bias, model.language_projection.linear_2.bias)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"model_type": "llava"}')
    with pytest.raises(CheckpointError, match="no safetensors weights"):
        RablipLlavaForConditionalGeneration.from_pretrained(str(tmp_path / "bad"))


def test_collator_packs_one_block_per_image_with_its_snippet_after(tiny_llava_dir):
    model = RablipLlavaForConditionalGeneration.from_pretrained(tiny_llava_dir).eval()
    tokenizer = load_tokenizer(tiny_llava_dir)
    collator = Collator(None, tokenizer, load_image_processor(tiny_llava_dir), num_query_tokens=4,
                        is_encoder_decoder=False, max_references=2, max_input_length=96, max_target_length=8,
                        qformer_max_length=16, mode="train", images_after_prefix=True)
    red, blue = Image.new("RGB", (40, 30), "red"), Image.new("RGB", (30, 40), "blue")
    references = [Reference(KBItem(id="a", modality="image+text", image="a.jpg", text="red castle", title="castle"),
                            image=red),
                  Reference(KBItem(id="b", modality="text", text="blue river", title="river"))]
    samples = [Sample(question="what color is the castle ?", image=blue, references=references, target="red"),
               Sample(question="which city ?", image=None, references=references[1:], target="2")]
    batch = collator(samples)
    assert "qformer_input_ids" not in batch
    assert batch["pixel_values"].shape[-2:] == (28, 28)
    assert batch["image_slot_mask"].tolist() == [[True, True, False], [False, False, False]]
    row = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    image_id = model.config.image_token_index
    assert row[0] == tokenizer.bos_token_id and row[1:5] == [image_id] * 4  # <s>, then the question image
    text_after = tokenizer.decode([t for t in row[5:] if t != image_id])
    second_block = row.index(image_id, 5)
    assert "castle" in tokenizer.decode(row[second_block + 4: second_block + 12])  # its snippet follows it
    assert "river" in text_after and (batch["input_ids"][1] == image_id).sum() == 0
    with torch.no_grad():
        out = model(**{k: v for k, v in batch.items() if k not in ("sample_weight", "sample_kind")})
    assert torch.isfinite(out.loss)


def test_the_factory_picks_the_family_from_the_checkpoint_and_adds_lora_for_training(tiny_llava_dir):
    config_file = CONFIGS_DIR / "model" / "llava15_7b.yaml"
    published = load_config(config_file).model
    assert (published.checkpoint, published.trainable, published.lora.r) == (
        "checkpoints/llava-1.5-7b-hf", ["language_projection"], 128)
    cfg = load_config(config_file, [f"model.checkpoint={tiny_llava_dir}", "model.lora.r=2",
                                    "model.lora.target_modules=[q_proj]"])
    model = load_generator(cfg, for_training=True)
    assert isinstance(model, RablipLlavaForConditionalGeneration) and has_lora(model)
    assert not has_lora(load_generator(cfg))  # evaluation: no fresh adapters
    with pytest.raises(ConfigError, match="does not support"):
        load_generator(load_config(config_file, [f"model.checkpoint={tiny_llava_dir}", "model.multi_image=concat"]))
