"""The tiny vision encoder's viewing corpus (invented creatures only) and its supervised warm-up."""

import itertools

import numpy as np
import pytest
import torch
from transformers import BlipImageProcessor

from rablip.models.vision import TimmVisionEncoder
from rablip.synthetic.entities import sample_entities
from rablip.synthetic.viewing import attribute_label, class_counts, viewing_batches
from rablip.synthetic.vision_warmup import warm_up_vision_model
from rablip.synthetic.vocab import VISUAL_ATTRIBUTES

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ALL_LOOKS = [dict(zip(VISUAL_ATTRIBUTES, combo)) for combo in itertools.product(*VISUAL_ATTRIBUTES.values())]


def _pixels(batches, n: int) -> list[np.ndarray]:
    return [np.asarray(image) for images, _ in itertools.islice(batches, n) for image in images]


def test_labels_index_each_attribute_in_vocabulary_order():
    look = {"shape": "heart", "colour": "red", "pattern": "dotted", "size": "large"}
    assert attribute_label(look) == [7, 0, 2, 1]
    assert class_counts() == [8, 8, 4, 2]


def test_batches_are_seeded_and_never_show_an_avoided_look():
    allowed, avoided = ALL_LOOKS[:6], ALL_LOOKS[6:]
    for pool in (0, 16):
        batches = viewing_batches(0, 8, 32, avoided, pool=pool)
        labels = [tuple(label) for _, batch in itertools.islice(batches, 5) for label in batch]
        assert set(labels) <= {tuple(attribute_label(look)) for look in allowed}
        assert len(set(labels)) > 1
        first = _pixels(viewing_batches(0, 4, 32, pool=pool), 2)
        assert all(np.array_equal(a, b) for a, b in zip(first, _pixels(viewing_batches(0, 4, 32, pool=pool), 2)))
        assert not np.array_equal(first[0], _pixels(viewing_batches(1, 4, 32, pool=pool), 1)[0])
        assert first[0].shape == (32, 32, 3)


def test_batches_sample_a_pool_of_renderings_mirrored_or_not_that_keeps_changing():
    drawn = _pixels(viewing_batches(0, 8, 32, pool=4, refresh=0), 50)
    distinct = {image.tobytes() for image in drawn}
    assert 4 < len(distinct) <= 8, "four renderings, each as drawn or mirrored"
    assert any(np.array_equal(image[:, ::-1], other) for image in drawn for other in drawn
               if not np.array_equal(image, other)), "a mirrored rendering is the left-right flip of another"
    refreshed = _pixels(viewing_batches(0, 8, 32, pool=4, refresh=1), 50)
    assert len({image.tobytes() for image in refreshed}) > 30, "one new rendering after every batch"
    fresh = _pixels(viewing_batches(0, 8, 32, pool=0), 50)
    assert len({image.tobytes() for image in fresh}) == 400


def test_world_entities_looks_are_avoided_and_the_rest_all_drawn():
    world = [entity.attributes for entity in sample_entities(0, 96, 48, 0.3)]
    labels = {tuple(label) for _, batch in itertools.islice(viewing_batches(0, 64, 16, world, pool=0), 60) for label in batch}
    world_labels = {tuple(attribute_label(look)) for look in world}
    assert not labels & world_labels
    assert len(labels) > 0.9 * (len(ALL_LOOKS) - len(world_labels)), "invented creatures cover the other looks"


def test_warm_up_lowers_the_attribute_loss_and_keeps_frozen_weights_frozen():
    torch.manual_seed(0)
    encoder = TimmVisionEncoder("test_resnet", 16)
    encoder.requires_grad_(False)
    before = {name: p.detach().clone() for name, p in encoder.named_parameters()}
    processor = BlipImageProcessor(size={"height": 32, "width": 32})
    losses = warm_up_vision_model(encoder, processor, 16, class_counts(), viewing_batches(0, 16, 32, pool=256), steps=60,
                                  warmup_steps=5,
                                  show_progress=False)
    assert len(losses) == 60 and not encoder.training
    assert sum(losses[-10:]) / 10 < sum(losses[:5]) / 5 - 0.6  # 6.2 -> 5.0 nats measured
    assert all(not torch.equal(before[name], p) for name, p in encoder.named_parameters())
    assert not any(p.requires_grad for p in encoder.parameters()), "frozen before, frozen after"



def test_scene_share_mixes_in_scenes_labelled_per_half_and_mirroring_swaps_the_halves():
    from rablip.synthetic.viewing import IGNORED
    n = len(VISUAL_ATTRIBUTES)
    assert class_counts(scenes=True) == class_counts() * 3
    batches = viewing_batches(0, 16, 32, pool=8, refresh=0, scene_share=0.5)
    seen_scene = seen_single = False
    by_image: dict[bytes, tuple] = {}
    for images, labels in itertools.islice(batches, 20):
        for image, label in zip(images, labels):
            assert len(label) == 3 * n
            blocks = [label[i * n:(i + 1) * n] for i in range(3)]
            scene = blocks[0] == [IGNORED] * n
            assert (blocks[1] != [IGNORED] * n) == scene and (blocks[2] != [IGNORED] * n) == scene
            seen_scene, seen_single = seen_scene or scene, seen_single or not scene
            by_image[np.asarray(image).tobytes()] = (np.asarray(image), tuple(label))
    assert seen_scene and seen_single
    pairs = [(a, b) for a in by_image.values() for b in by_image.values()
             if not np.array_equal(a[0], b[0]) and np.array_equal(a[0][:, ::-1], b[0])]
    scene_pairs = [(a, b) for a, b in pairs if a[1][0] == IGNORED]
    assert scene_pairs, "some scene appears both as drawn and mirrored"
    for (_, left_first), (_, mirrored) in scene_pairs:
        assert left_first[n:2 * n] == mirrored[2 * n:] and left_first[2 * n:] == mirrored[n:2 * n]


def test_scene_warm_up_trains_heads_on_each_half_of_the_token_grid():
    torch.manual_seed(0)
    encoder = TimmVisionEncoder("test_resnet", 16)
    processor = BlipImageProcessor(size={"height": 64, "width": 64})
    losses = warm_up_vision_model(encoder, processor, 16, class_counts(scenes=True),
                                  viewing_batches(0, 8, 64, pool=32, scene_share=0.5), steps=6, warmup_steps=2,
                                  show_progress=False, scenes=True)
    assert len(losses) == 6 and all(np.isfinite(losses))
