"""The frozen-feature cache: cached features give the uncached outputs, are computed once, are
rebuilt when the vision encoder (or processor, or store) changes, and a partial cache is refused;
fine-tuning with the cache follows the uncached loss trajectory."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BlipImageProcessor

from rablip.benchmarks import load_split
from rablip.config import load_config
from rablip.data.kb import KBStore
from rablip.data.kb_writer import build_kb_store
from rablip.data.records import KBItem
from rablip.errors import ConfigError
from rablip.models import RABlipForConditionalGeneration
from rablip.models.factory import load_generator
from rablip.models.processing import build_collator
from rablip.retrieval.references import ranked_references
from rablip.stages.finetune import FinetuneDataset, flatten_collate, max_references
from rablip.synthetic.build import build_tiny_checkpoint, randomize_weights, tiny_architecture
from rablip.training import feature_cache as fc
from rablip.training.feature_cache import (
    FEATURES_FILE,
    MANIFEST_NAME,
    FeatureCache,
    StaleFeatureCache,
    build_feature_cache,
    cache_for_run,
    cache_key,
    open_or_build,
)
from tests.retrieval.tiny_world import FINETUNE_WORLD, build_world
from tests.training.launch import FINETUNE, FINETUNE_CONFIG, finetune_args, metrics_lines, run

IMAGE_SIZE = 32  # the tiny architecture's vision input


def _image(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    _image(seed).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def kb(tmp_path_factory) -> KBStore:
    """Seven image items (six files, one inline PNG), two text items, a text-modality item with an image."""
    root = tmp_path_factory.mktemp("kb_root")
    items = []
    for i in range(6):
        _image(i).save(root / f"img{i}.png")
        items.append(KBItem(id=f"img-{i}", modality="image+text", image=f"img{i}.png", title=f"T{i}", text=f"fact {i}"))
        if i % 3 == 0:
            items.append(KBItem(id=f"text-{i}", modality="text", title=f"T{i}", text=f"only text {i}"))
    items.append(KBItem(id="inline", modality="image", image=_png(10)))
    items.append(KBItem(id="text-with-image", modality="text", image="img0.png", text="shown as text"))
    store_dir = build_kb_store(items, root.parent / "store", kb_root=root, show_progress=False)
    return KBStore.open(store_dir)


IMAGE_IDS = ["img-0", "img-1", "img-2", "img-3", "img-4", "img-5", "inline"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), tiny_architecture("t5"), seed=1)


@pytest.fixture
def model(checkpoint) -> RABlipForConditionalGeneration:
    return RABlipForConditionalGeneration.from_pretrained(str(checkpoint)).eval()


@pytest.fixture(scope="module")
def processor() -> BlipImageProcessor:
    return BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def count_vision_images(model: torch.nn.Module) -> list[int]:
    """A one-element list holding how many images the vision tower has encoded since now."""
    counter = [0]

    def hook(module, args, kwargs):
        pixels = kwargs.get("pixel_values", args[0] if args else None)
        counter[0] += pixels.shape[0]

    model.vision_model.register_forward_pre_hook(hook, with_kwargs=True)
    return counter


def assert_float16_of(stored: torch.Tensor, computed: torch.Tensor) -> None:
    """``stored`` is ``computed`` rounded to float16 (within one float16 step: the tower may round
    differently in another batch composition)."""
    assert stored.dtype == torch.float16 and stored.shape == computed.shape
    step = 2**-10 * computed.abs().max()
    assert (stored.float() - computed).abs().max() <= step


def _pixels(kb: KBStore, processor, item_ids: list[str]) -> torch.Tensor:
    images = []
    for item in kb.get_many(item_ids):
        image = kb.image_of(item)
        images.append(Image.open(io.BytesIO(image) if isinstance(image, bytes) else image).convert("RGB"))
    return processor(images=images, return_tensors="pt")["pixel_values"]


def _batch(model, kb, processor, slots: list[list[str | None]]) -> dict[str, torch.Tensor]:
    """A contract batch whose slot 0 is a question image (item ids stand in) and the rest references
    (None: an empty slot); image tokens for every real slot, then a few text tokens."""
    config = model.config
    generator = torch.Generator().manual_seed(0)
    batch_size, num_slots = len(slots), len(slots[0])
    pixel_values = torch.zeros(batch_size, num_slots, 3, IMAGE_SIZE, IMAGE_SIZE)
    mask = torch.zeros(batch_size, num_slots, dtype=torch.bool)
    rows = []
    for b, row in enumerate(slots):
        ids: list[int] = []
        for s, item_id in enumerate(row):
            if item_id is not None:
                pixel_values[b, s] = _pixels(kb, processor, [item_id])[0]
                mask[b, s] = True
                ids += [config.image_token_index] * config.num_query_tokens
            ids += torch.randint(3, 100, (2,), generator=generator).tolist()
        rows.append(ids + [1])
    length = max(len(r) for r in rows)
    input_ids = torch.zeros(batch_size, length, dtype=torch.long)
    attention_mask = torch.zeros(batch_size, length, dtype=torch.long)
    for b, ids in enumerate(rows):
        input_ids[b, : len(ids)] = torch.tensor(ids)
        attention_mask[b, : len(ids)] = 1
    qformer_ids = torch.randint(1, 90, (batch_size, num_slots, 6), generator=generator)
    return {"pixel_values": pixel_values, "image_slot_mask": mask, "qformer_input_ids": qformer_ids,
            "qformer_attention_mask": torch.ones_like(qformer_ids), "input_ids": input_ids,
            "attention_mask": attention_mask, "labels": torch.randint(3, 100, (batch_size, 3), generator=generator)}


SLOTS = [["img-5", "img-0", "inline", "img-2"], ["img-4", "img-3", None, None]]


def _with_reference_features(batch, features_of) -> dict[str, torch.Tensor]:
    """The batch with slots 1.. given as ``image_embeds`` (from ``features_of(item_id)``), pixels zeroed."""
    cached = dict(batch)
    mask = batch["image_slot_mask"].clone()
    mask[:, 0] = False
    first = features_of(SLOTS[0][1])
    embeds = torch.zeros(*mask.shape, *first.shape, dtype=first.dtype)
    for b, row in enumerate(SLOTS):
        for s, item_id in enumerate(row):
            if s > 0 and item_id is not None:
                embeds[b, s] = features_of(item_id)
    cached["pixel_values"] = batch["pixel_values"] * (~mask)[:, :, None, None, None]
    cached["image_embeds"], cached["image_embeds_mask"] = embeds, mask
    return cached


def test_given_features_reproduce_the_vision_tower_and_fp16_cache_stays_within_rounding(model, kb, processor, tmp_path):
    batch = _batch(model, kb, processor, SLOTS)
    with torch.no_grad():
        plain = model(**batch)
        exact = {i: model.encode_images(_pixels(kb, processor, [i]))[0] for i in IMAGE_IDS}
        given = model(**_with_reference_features(batch, exact.__getitem__))
        # every real slot from features the tower computed for the same batch: it does not run again
        real = batch["image_slot_mask"]
        everything = dict(batch, pixel_values=torch.zeros_like(batch["pixel_values"]))
        everything["image_embeds"] = torch.zeros(2, 4, *exact["img-0"].shape)
        everything["image_embeds"][real] = model.encode_images(batch["pixel_values"][real])
        calls = count_vision_images(model)
        all_given = model(**everything)
    assert calls[0] == 0
    assert torch.equal(all_given.logits, plain.logits), "exact features in every slot: bit-identical outputs"
    assert (given.logits - plain.logits).abs().max() <= 1e-5

    cache = open_or_build(tmp_path / "cache", model, processor, kb, show_progress=False)
    for item_id in IMAGE_IDS:  # the cache holds the tower's features, rounded to float16
        assert_float16_of(cache.features_of([item_id])[0], exact[item_id])
    with torch.no_grad():
        cached = model(**_with_reference_features(batch, lambda i: cache.features_of([i])[0]))
        swapped = model(**_with_reference_features(batch, lambda i: cache.features_of(["img-1"])[0]))
    # float16 keeps 11 significant bits: the features' relative rounding error is at most 2**-11, and the
    # logits move by no more than that, relative to their scale (measured: about 2e-5)
    bound = 2**-11 * plain.logits.abs().max()
    assert (cached.logits - plain.logits).abs().max() <= bound
    assert (swapped.logits - plain.logits).abs().max() > 20 * bound, "the bound is far below a real change"
    assert abs(cached.loss.item() - plain.loss.item()) <= 1e-3 * plain.loss.item()

    generate_inputs = {k: v for k, v in _with_reference_features(batch, lambda i: cache.features_of([i])[0]).items()
                       if k != "labels"}
    plain_inputs = {k: v for k, v in batch.items() if k != "labels"}
    assert torch.equal(model.generate(**generate_inputs, max_new_tokens=4, do_sample=False),
                       model.generate(**plain_inputs, max_new_tokens=4, do_sample=False))


def test_bad_image_embeds_are_refused(model, kb, processor):
    batch = _batch(model, kb, processor, SLOTS)
    wide = _with_reference_features(batch, lambda i: torch.zeros(17, 33))
    with pytest.raises(ValueError, match="width"):
        model(**wide)
    outside = _with_reference_features(batch, lambda i: torch.zeros(17, 32))
    outside["image_embeds_mask"] = outside["image_embeds_mask"].clone()
    outside["image_embeds_mask"][1, 3] = True  # an empty slot
    with pytest.raises(ValueError, match="no image"):
        model(**outside)


def test_cache_is_built_once_and_reused_by_later_openings(checkpoint, kb, processor, tmp_path):
    first_model = RABlipForConditionalGeneration.from_pretrained(str(checkpoint)).eval()
    calls = count_vision_images(first_model)
    cache = open_or_build(tmp_path / "cache", first_model, processor, kb, batch_size=3, show_progress=False)
    assert calls[0] == len(IMAGE_IDS) + 1, "every image item once, plus one probe for the feature shape"
    assert len(cache) == len(IMAGE_IDS)
    assert cache.features_of(["text-0", "text-with-image", "img-2"])[:2] == [None, None]
    with pytest.raises(KeyError):
        cache.features_of(["no-such-item"])

    second_model = RABlipForConditionalGeneration.from_pretrained(str(checkpoint)).eval()
    second_calls = count_vision_images(second_model)
    again = open_or_build(tmp_path / "cache", second_model, processor, kb, show_progress=False)
    assert second_calls[0] == 0, "a second opening computes nothing"
    reopened = pickle.loads(pickle.dumps(again))  # data-loader workers reopen it
    for item_id in IMAGE_IDS:
        assert torch.equal(reopened.features_of([item_id])[0], cache.features_of([item_id])[0])
    assert isinstance(again.features, np.memmap) and again.features.dtype == np.float16


def test_cache_is_rebuilt_when_the_vision_encoder_changes(model, kb, processor, tmp_path):
    directory = tmp_path / "cache"
    open_or_build(directory, model, processor, kb, show_progress=False)
    old_key = cache_key(model, processor, kb).digest
    with torch.no_grad():
        model.qformer.encoder.layer[0].attention.output.dense.bias.add_(0.5)
    assert cache_key(model, processor, kb).digest == old_key, "training the Q-Former keeps the cache valid"
    other_size = BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3)
    assert cache_key(model, other_size, kb).digest != old_key, "processor settings are part of the key"

    with torch.no_grad():
        model.vision_model.post_layernorm.bias.add_(0.01)
    new_key = cache_key(model, processor, kb).digest
    assert new_key != old_key
    with pytest.raises(StaleFeatureCache, match="another vision encoder"):
        FeatureCache.open(directory, kb, new_key)
    calls = count_vision_images(model)
    rebuilt = open_or_build(directory, model, processor, kb, show_progress=False)
    assert calls[0] == len(IMAGE_IDS) + 1
    with torch.no_grad():
        expected = model.encode_images(_pixels(kb, processor, ["img-3"]))[0]
    assert_float16_of(rebuilt.features_of(["img-3"])[0], expected)
    assert not (tmp_path / "cache.building").exists() and not (tmp_path / "cache.old").exists()


def test_interrupted_build_is_not_accepted_and_resumes(model, kb, processor, tmp_path, monkeypatch):
    directory = tmp_path / "cache"
    key = cache_key(model, processor, kb)
    real_encode = fc._encode
    encoded_batches = []

    def encode_then_die(m, pixels, device):
        if len(encoded_batches) == 2:  # the probe and one batch of 3 images went through
            raise KeyboardInterrupt
        encoded_batches.append(pixels.shape[0])
        return real_encode(m, pixels, device)

    monkeypatch.setattr(fc, "_encode", encode_then_die)
    with pytest.raises(KeyboardInterrupt):
        build_feature_cache(directory, model, processor, kb, key, batch_size=3, show_progress=False)
    monkeypatch.setattr(fc, "_encode", real_encode)
    assert not directory.exists() and (tmp_path / "cache.building" / FEATURES_FILE).is_file()
    with pytest.raises(StaleFeatureCache, match="no finished feature cache"):
        FeatureCache.open(directory, kb, key.digest)

    calls = count_vision_images(model)
    resumed = open_or_build(directory, model, processor, kb, batch_size=3, show_progress=False)
    assert calls[0] == len(IMAGE_IDS) - 3, "the resumed build encodes only the images not yet written"
    fresh = open_or_build(tmp_path / "fresh", model, processor, kb, show_progress=False)
    assert np.array_equal(np.asarray(resumed.features), np.asarray(fresh.features))
    assert np.array_equal(np.asarray(resumed.rows), np.asarray(fresh.rows))


def test_damaged_cache_is_refused_and_rebuilt(model, kb, processor, tmp_path):
    directory = tmp_path / "cache"
    open_or_build(directory, model, processor, kb, show_progress=False)
    key = cache_key(model, processor, kb).digest
    features_file = directory / FEATURES_FILE
    features_file.write_bytes(features_file.read_bytes()[:-64])  # a cut-off copy
    with pytest.raises(StaleFeatureCache, match="damaged or incomplete"):
        FeatureCache.open(directory, kb, key)
    calls = count_vision_images(model)
    cache = open_or_build(directory, model, processor, kb, show_progress=False)
    assert calls[0] == len(IMAGE_IDS) + 1 and len(cache) == len(IMAGE_IDS)

    (directory / MANIFEST_NAME).unlink()
    with pytest.raises(StaleFeatureCache, match="no finished"):
        FeatureCache.open(directory, kb, key)
    foreign = tmp_path / "not-a-cache"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a feature cache"):
        open_or_build(foreign, model, processor, kb, show_progress=False)
    assert (foreign / "notes.txt").read_text() == "mine"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    build_world(root / "world", *FINETUNE_WORLD)
    cfg = load_config(FINETUNE_CONFIG, finetune_args(root / "world", root / "unused")[2:])
    # Spread the vision tower's weights, so that its features are O(1) whatever initialisation the
    # checkpoint builder uses (transformers' own leaves a ViT's near 1e-6, where float16 keeps no precision).
    checkpoint = RABlipForConditionalGeneration.from_pretrained(cfg.model.checkpoint)
    randomize_weights(checkpoint.vision_model, seed=5)
    checkpoint.save_pretrained(cfg.model.checkpoint)
    return root / "world"


def test_trainable_vision_encoder_is_refused(world, tmp_path):
    cfg = load_config(FINETUNE_CONFIG, finetune_args(world, tmp_path / "run", "train.feature_cache=true",
                                                     "model.trainable=[vision_model,qformer]")[2:])
    model = load_generator(cfg)
    store = KBStore.open(cfg.data.kb.store_dir)
    with pytest.raises(ConfigError, match="vision_model"):
        cache_for_run(cfg, model, None, store, is_main_process=True)


def test_finetuning_with_the_cache_follows_the_uncached_losses(world, tmp_path):
    losses = {}
    for name, extra in (("plain", []), ("cached", ["train.feature_cache=true",
                                                   f"train.feature_cache_dir={tmp_path / 'features'}"])):
        out = tmp_path / name
        result = run(FINETUNE, finetune_args(world, out, "train.max_steps=5", "train.save_every=5", *extra))
        assert result.returncode == 0, result.stderr[-3000:]
        losses[name] = [(r["step"], r["loss"]) for r in metrics_lines(out) if "loss" in r]
    assert (tmp_path / "features" / MANIFEST_NAME).is_file()
    assert [s for s, _ in losses["cached"]] == [s for s, _ in losses["plain"]] == [1, 2, 3, 4, 5]
    plain = np.array([loss for _, loss in losses["plain"]])
    cached = np.array([loss for _, loss in losses["cached"]])
    # measured: relative differences of 3e-5 at most, while the loss moves by 3e-3 or more per step
    assert np.allclose(cached, plain, rtol=2e-4, atol=0), (plain, cached)
    assert np.abs(np.diff(plain)).min() > 5 * 2e-4 * plain.max(), "the steps differ far more than the tolerance"

    # the cached run's batches really carry the cached features in place of the reference pixels
    cfg = load_config(FINETUNE_CONFIG, finetune_args(world, tmp_path / "cached", "train.feature_cache=true",
                                                     f"train.feature_cache_dir={tmp_path / 'features'}")[2:])
    model = load_generator(cfg)
    collator = build_collator(cfg, model, max_references(cfg))
    store = KBStore.open(cfg.data.kb.store_dir)
    calls = count_vision_images(model)
    cache = cache_for_run(cfg, model, collator.image_processor, store, is_main_process=False)
    assert calls[0] == 0, "the cache the run built is reused"
    examples = load_split(cfg.data, "train")
    references = ranked_references(cfg, examples, "train", tmp_path)
    batch = flatten_collate(collator)([FinetuneDataset(cfg, examples, store, references, cache)[(i, 0)]
                                       for i in range(4)])
    uncached = flatten_collate(collator)([FinetuneDataset(cfg, examples, store, references)[(i, 0)] for i in range(4)])
    used = batch["image_embeds_mask"]
    assert used[:, 1:].any() and not used[:, 0].any(), "references cached, question images not"
    assert "image_embeds" not in uncached and not batch["pixel_values"][used].any()
    assert torch.equal(batch["pixel_values"][~used], uncached["pixel_values"][~used])
    for key in ("image_slot_mask", "input_ids", "qformer_input_ids", "labels", "sample_kind"):
        assert torch.equal(batch[key], uncached[key]), key
    with torch.no_grad():
        expected = model.encode_images(uncached["pixel_values"][used])
    assert_float16_of(batch["image_embeds"][used], expected)


def test_concat_mode_finetunes_with_the_cache_as_without(world, tmp_path):
    """model.multi_image=concat (one Q-Former pass per example) reads cached features like per_slot."""
    losses = {}
    for name, extra in (("plain", []), ("cached", ["train.feature_cache=true",
                                                   f"train.feature_cache_dir={tmp_path / 'features'}"])):
        out = tmp_path / name
        result = run(FINETUNE, finetune_args(world, out, "train.max_steps=3", "train.save_every=3",
                                             "model.multi_image=concat", *extra))
        assert result.returncode == 0, result.stderr[-3000:]
        losses[name] = np.array([r["loss"] for r in metrics_lines(out) if "loss" in r])
    assert len(losses["plain"]) == 3 and np.isfinite(losses["plain"]).all()
    assert np.allclose(losses["cached"], losses["plain"], rtol=2e-4, atol=0), losses
