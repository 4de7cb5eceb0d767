"""``multi_image="concat"`` (RA-BLIP's release): an example's images in ONE Q-Former pass.

The reference below is written from the formulas (each real image's patch features + its type
embedding, concatenated with the valid images first, + the position table, missing images masked,
one Q-Former pass with the example's instruction, projected into the LLM's image tokens), using the
tiny model's own vision tower, Q-Former, projection and LLM.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import BlipImageProcessor

from rablip.data.records import KBItem, QAExample
from rablip.data.samples import make_qa_sample
from rablip.models import RABlipForConditionalGeneration
from rablip.models.loading import CheckpointError
from rablip.models.multi_image import image_ranks
from rablip.models.processing import Collator
from rablip.models.refine_hook import refinement_indices
from rablip.models.slots import normalize_slot_inputs
from rablip.synthetic.build import build_tiny_checkpoint, tiny_architecture
from rablip.synthetic.tokenizer_training import train_tokenizer

from .conftest import make_batch

TOKENS = 17  # (32 / 8) ** 2 patches + CLS


def _concat(path, **overrides) -> RABlipForConditionalGeneration:
    return RABlipForConditionalGeneration.from_pretrained(path, multi_image="concat", **overrides).eval()


def _randomize_tables(model, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for table in (model.slot_type_embeds, model.patch_position_embeds):
            table.copy_(torch.randn(table.shape, generator=generator) * 0.5)


def _concat_batch(config, slot_mask: list[list[bool]], seed: int = 0, decoder_only: bool = False) -> dict:
    """A batch laid out for concat mode: one block of image tokens per example with any image."""
    batch = make_batch(config, slot_mask, seed=seed, decoder_only=decoder_only)
    generator = torch.Generator().manual_seed(seed + 1)
    rows = []
    for real in batch["image_slot_mask"].any(dim=1).tolist():
        ids = [config.image_token_index] * config.num_query_tokens if real else []
        rows.append(ids + torch.randint(3, 100, (6,), generator=generator).tolist())
    length = max(map(len, rows))
    input_ids = torch.full((len(rows), length), 1, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for index, ids in enumerate(rows):  # right-padded (encoder-decoder)
        input_ids[index, : len(ids)] = torch.tensor(ids)
        attention_mask[index, : len(ids)] = 1
    batch.update(input_ids=input_ids, attention_mask=attention_mask)
    return batch


@torch.no_grad()
def _reference_logits(model, batch, keep=None) -> torch.Tensor:
    """The release's computation, by hand. ``keep`` (N, m) selects patches of the real images
    (row-major order) after the tables were added at their original places."""
    config, mask = model.config, batch["image_slot_mask"]
    num_queries, slots = config.num_query_tokens, mask.shape[1]
    features = [model.vision_model(pixel_values=batch["pixel_values"][:, s]).last_hidden_state for s in range(slots)]
    embeds = model.language_model.get_input_embeddings()(batch["input_ids"]).clone()
    real_number = 0
    for b in range(mask.shape[0]):
        real = [s for s in range(slots) if mask[b, s]]
        if not real:
            continue
        order = real + [s for s in range(slots) if not mask[b, s]]  # the valid images first
        images, atts = [], []
        for rank, s in enumerate(order):
            image = features[s][b] + model.slot_type_embeds[rank]
            image = image + model.patch_position_embeds[0, rank * TOKENS:(rank + 1) * TOKENS]
            attend = torch.full((TOKENS,), 1 if rank < len(real) else 0, dtype=torch.long)
            if keep is not None and rank < len(real):
                image, attend = image[keep[real_number]], attend[keep[real_number]]
                real_number += 1
            elif keep is not None:
                image, attend = image[: keep.shape[1]], torch.zeros(keep.shape[1], dtype=torch.long)
            images.append(image)
            atts.append(attend)
        qformer_mask = batch["qformer_attention_mask"][b, 0]
        output = model.qformer(
            input_ids=batch["qformer_input_ids"][b, 0][None],
            attention_mask=torch.cat([torch.ones(num_queries, dtype=torch.long), qformer_mask])[None],
            query_embeds=model.query_tokens,
            encoder_hidden_states=torch.cat(images)[None],
            encoder_attention_mask=torch.cat(atts)[None],
        ).last_hidden_state[0, :num_queries]
        positions = batch["input_ids"][b] == config.image_token_index
        embeds[b, positions] = model.language_projection(output)
    return model.language_model(
        inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"]
    ).logits


def test_concat_forward_equals_the_release_formulas(tiny_t5_dir):
    model = _concat(tiny_t5_dir)
    assert model.patch_position_embeds.shape == (1, model.config.max_image_slots * TOKENS, 32)
    assert model.slot_type_embeds.shape == (model.config.max_image_slots, 32)
    assert model.slot_position_embeds is None
    _randomize_tables(model)
    batch = _concat_batch(model.config, [[True, False], [False, True], [True, True], [False, False]])
    with torch.no_grad():
        got = model(**batch).logits
    expected = _reference_logits(model, batch)
    assert (got - expected).abs().max().item() <= 1e-5
    generated = model.generate(**{k: v for k, v in batch.items() if k != "labels"}, max_new_tokens=3, do_sample=False)
    assert generated.shape[0] == 4


def test_concat_needs_one_image_block_per_example(tiny_t5_dir):
    model = _concat(tiny_t5_dir)
    per_slot_layout = make_batch(model.config, [[True, True]])  # two blocks: per_slot's layout
    with pytest.raises(ValueError, match="multi_image=concat"):
        model(**per_slot_layout)


def test_one_image_concat_equals_per_slot_and_tables_matter(tiny_t5_dir):
    per_slot = RABlipForConditionalGeneration.from_pretrained(tiny_t5_dir).eval()
    assert per_slot.config.multi_image == "per_slot" and per_slot.patch_position_embeds is None
    concat = _concat(tiny_t5_dir)
    batch = make_batch(concat.config, [[True], [True]])
    with torch.no_grad():
        reference = per_slot(**batch).logits
        zero_tables = concat(**batch).logits
        concat.slot_type_embeds.fill_(0.5)
        with_type = concat(**batch).logits
        concat.slot_type_embeds.zero_()
        concat.patch_position_embeds.fill_(0.5)
        with_position = concat(**batch).logits
    assert (zero_tables - reference).abs().max().item() <= 1e-5
    assert (with_type - reference).abs().max() > 1e-4
    assert (with_position - reference).abs().max() > 1e-4


def test_cached_features_give_the_same_output(tiny_t5_dir):
    model = _concat(tiny_t5_dir)
    _randomize_tables(model, seed=1)
    batch = _concat_batch(model.config, [[True, True], [False, True]], seed=2)
    with torch.no_grad():
        from_pixels = model(**batch).logits
        features = torch.stack([model.encode_images(batch["pixel_values"][:, s]) for s in range(2)], dim=1)
        cached_mask = torch.tensor([[False, True], [False, True]])  # slot 0 still from pixels
        cached = model(**batch, image_embeds=features, image_embeds_mask=cached_mask).logits
    assert (cached - from_pixels).abs().max().item() <= 1e-5


def test_refinement_keeps_the_original_positions(tiny_t5_dir):
    model = _concat(tiny_t5_dir, refine_top_m=5)
    _randomize_tables(model, seed=3)
    batch = _concat_batch(model.config, [[True, True], [False, True]], seed=4)
    slots = normalize_slot_inputs(batch["pixel_values"], batch["qformer_input_ids"], batch["qformer_attention_mask"],
                                  batch["image_slot_mask"], model.config.max_image_slots)
    batch_index, slot_index = slots.image_slot_mask.nonzero(as_tuple=True)
    with torch.no_grad():
        patches = model.real_slot_patches(slots, batch_index, slot_index)
        keep = refinement_indices(model, patches, slots, batch_index, slot_index, 5)
        got = model(**batch).logits
    assert keep.shape == (3, 6) and bool((keep[:, 0] == 0).all())  # CLS + 5 patches
    assert torch.equal(image_ranks(slots.image_slot_mask, batch_index, slot_index), torch.tensor([0, 1, 0]))
    expected = _reference_logits(model, batch, keep=keep)
    assert (got - expected).abs().max().item() <= 1e-5


def test_round_trip_keeps_the_mode_and_the_tables(tiny_t5_dir, tmp_path):
    model = _concat(tiny_t5_dir)
    _randomize_tables(model, seed=5)
    batch = _concat_batch(model.config, [[True, True], [False, False]], seed=6)
    with torch.no_grad():
        before = model(**batch).logits
    for trainable_only in (False, True):
        out = tmp_path / f"trainable_{trainable_only}"
        model.save_pretrained(str(out), trainable_only=trainable_only)
        loaded = RABlipForConditionalGeneration.from_pretrained(str(out)).eval()
        assert loaded.config.multi_image == "concat"
        assert torch.equal(loaded.patch_position_embeds, model.patch_position_embeds)
        assert torch.equal(loaded.slot_type_embeds, model.slot_type_embeds)
        with torch.no_grad():
            assert (loaded(**batch).logits - before).abs().max().item() <= 1e-6
        with pytest.raises(CheckpointError, match="multi_image='concat'"):
            RABlipForConditionalGeneration.from_pretrained(str(out), multi_image="per_slot")


@pytest.mark.parametrize("saved_mode", ["per_slot", "concat"])
def test_an_untrained_rablip_checkpoint_loads_in_the_other_mode(tiny_t5_dir, tmp_path, saved_mode):
    other = "concat" if saved_mode == "per_slot" else "per_slot"
    model = RABlipForConditionalGeneration.from_pretrained(tiny_t5_dir, multi_image=saved_mode)
    model.save_pretrained(str(tmp_path / "full"))
    model.save_pretrained(str(tmp_path / "trainable"), trainable_only=True)
    switched = RABlipForConditionalGeneration.from_pretrained(str(tmp_path / "full"), multi_image=other).eval()
    assert switched.config.multi_image == other
    batch = make_batch(switched.config, [[True], [True]])
    reference = RABlipForConditionalGeneration.from_pretrained(tiny_t5_dir).eval()
    with torch.no_grad():
        assert (switched(**batch).logits - reference(**batch).logits).abs().max().item() <= 1e-5
    with pytest.raises(CheckpointError, match="trainable-only"):
        RABlipForConditionalGeneration.from_pretrained(str(tmp_path / "trainable"), multi_image=other)


@pytest.mark.parametrize("trainable", [["qformer", "slot_embeddings"], ["qformer"]])
def test_training_step_updates_the_tables_when_they_train(tiny_t5_dir, trainable):
    model = _concat(tiny_t5_dir, trainable_modules=trainable).train()
    tables = (model.slot_type_embeds, model.patch_position_embeds)
    assert all(table.requires_grad == ("slot_embeddings" in trainable) for table in tables)
    before = [table.detach().clone() for table in tables]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**_concat_batch(model.config, [[True, True], [True, False]], seed=7)).loss.backward()
    optimizer.step()
    changed = [not torch.equal(table, old) for table, old in zip(tables, before, strict=True)]
    assert changed == [("slot_embeddings" in trainable)] * 2


def test_decoder_only_concat_forward_equals_per_slot_for_one_image(tiny_opt_dir):
    per_slot = RABlipForConditionalGeneration.from_pretrained(tiny_opt_dir).eval()
    concat = _concat(tiny_opt_dir)
    batch = make_batch(concat.config, [[True], [False]], decoder_only=True)
    with torch.no_grad():
        assert (concat(**batch).logits - per_slot(**batch).logits).abs().max().item() <= 1e-5


QUESTION = "what color is the bus"
ITEMS = [KBItem(id="bus", modality="image+text", image="bus.png", title="bus", text="a red bus"),
         KBItem(id="tower", modality="text", title="tower", text="a tower in paris"),
         KBItem(id="cat", modality="image", image="cat.png")]


def test_collator_lays_out_one_block_and_the_model_reads_it(tmp_path):
    corpus = [QUESTION, "red blue bus tower cat paris reference short answer question"] * 5
    bert = train_tokenizer(corpus, tmp_path / "bert", kind="bert", vocab_size=120)
    t5 = train_tokenizer(corpus, tmp_path / "t5", kind="t5", vocab_size=120)
    path = build_tiny_checkpoint(tmp_path / "ckpt", tiny_architecture("t5"), tokenizer=t5, qformer_tokenizer=bert)
    model = _concat(path)
    processor = BlipImageProcessor(size={"height": 32, "width": 32})
    collators = {mode: Collator(bert, t5, processor, num_query_tokens=4, is_encoder_decoder=True, max_references=3,
                                max_input_length=256, max_target_length=8, qformer_max_length=32, multi_image=mode)
                 for mode in ("per_slot", "concat")}

    def load(ref, record_id):
        return Image.new("RGB", (20, 20), (200, 30, 30))

    def example(image):
        return QAExample(id="q", image=image, question=QUESTION, answers=["red"])

    samples = [make_qa_sample(example("q.png"), ITEMS, load),  # 3 images
               make_qa_sample(example(None), ITEMS[1:], load),  # 1 image (a reference's)
               make_qa_sample(example(None), ITEMS[1:2], load)]  # no image
    image_id = model.config.image_token_index
    per_slot, concat = (collators[mode](samples) for mode in ("per_slot", "concat"))
    assert (per_slot["input_ids"] == image_id).sum(dim=1).tolist() == [12, 4, 0]
    assert (concat["input_ids"] == image_id).sum(dim=1).tolist() == [4, 4, 0]
    assert bool((concat["input_ids"][:2, :4] == image_id).all())  # at the row's start
    assert torch.equal(concat["image_slot_mask"], per_slot["image_slot_mask"])
    with torch.no_grad():
        output = model(**concat)
    assert torch.isfinite(output.loss)


def test_schema_key_selects_the_mode_where_the_generator_is_loaded(tiny_t5_dir):
    from rablip.config.load import load_config
    from rablip.errors import RablipError
    from rablip.models.factory import load_generator

    assert load_config(None).model.multi_image == "per_slot"
    cfg = load_config(None, [f"model.checkpoint={tiny_t5_dir}", "model.multi_image=concat"])
    model = load_generator(cfg)
    assert model.config.multi_image == "concat" and model.patch_position_embeds.requires_grad
    with pytest.raises(RablipError, match="multi_image"):
        load_config(None, ["model.multi_image=stacked"])


@pytest.mark.parametrize("timm_model_name, timm_kwargs", [
    ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "embed_dim": 24, "depth": 1, "num_heads": 2}),
    ("test_resnet", {}),
])
def test_timm_backbones_size_the_position_table(timm_model_name, timm_kwargs):
    from rablip.models import RABlipConfig

    architecture = tiny_architecture("t5")
    config = RABlipConfig(
        vision_config=architecture["vision"], qformer_config=architecture["qformer"], text_config=architecture["text"],
        num_query_tokens=4, image_token_index=architecture["text"]["vocab_size"] - 1, vision_backbone="timm",
        timm_model_name=timm_model_name, timm_kwargs=timm_kwargs, multi_image="concat", max_image_slots=2)
    model = RABlipForConditionalGeneration(config).eval()
    batch = _concat_batch(config, [[True, True], [False, True]])
    tokens = model.encode_images(batch["pixel_values"][:, 0]).shape[1]
    assert model.patch_position_embeds.shape == (1, 2 * tokens, 32)
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()
