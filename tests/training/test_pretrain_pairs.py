"""Pre-training pairs: questions and knowledge items, with knowledge items paired to themselves or to
every item of their entity (``train.item_pairs``), and extra pairs from a file (``data.extra_pairs``)."""

import dataclasses

import numpy as np
import pytest

from rablip.benchmarks import load_split
from rablip.config import load_config
from rablip.data.kb import KBStore
from rablip.stages.pretrain import PairDataset, build_pairs, extra_pairs, new_view
from tests.retrieval.tiny_world import PRETRAIN_CONFIG, TEST_WORLD, build_world, world_overrides

EXTRA_RECORDS = 200
QUESTIONED = "train.image_only_queries=0"
"""Every query keeps its question (synthetic_pretrain.yaml drops a share of them: the last test)."""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pairs")
    build_world(tmp / "world", *TEST_WORLD, "world.align_images=0", f"extra_pairs.count={EXTRA_RECORDS}",
                parts=("world", "kb", "extra_pairs"))
    return tmp


def setup(tmp, item_pairs):
    cfg = load_config(str(PRETRAIN_CONFIG), world_overrides(tmp) + [f"train.item_pairs={item_pairs}", QUESTIONED])
    kb = KBStore.open(cfg.data.kb.store_dir, root=cfg.data.kb.root)
    examples = load_split(cfg.data, "train")
    pairs = build_pairs(examples, kb, item_pairs)
    return cfg, kb, examples, pairs, PairDataset(cfg, pairs, kb)


def test_self_pairs_query_an_item_with_its_own_image_and_no_question(world):
    cfg, kb, examples, pairs, dataset = setup(world, "self")
    item_pairs = [p for p in pairs if p.query_image is None]
    assert len(item_pairs) == sum(1 for b in kb.iter_batches(64) for item in b if item.modality == "image+text")
    assert len(pairs) == len(item_pairs) + sum(1 for ex in examples if ex.relevant_ids)
    index = pairs.index(item_pairs[0])
    query_image, question, item, item_image = dataset[(index, 0)]
    assert item.id == item_pairs[0].record_id and question == "" and query_image is item_image


def test_entity_pairs_reach_every_item_of_the_title_with_a_training_question_and_a_new_view(world):
    cfg, kb, examples, pairs, dataset = setup(world, "entity")
    titles = {item.id: item.title for b in kb.iter_batches(64) for item in b}
    questions = {ex.question for ex in examples}
    pair = next(p for p in pairs if p.query_image is None)
    assert sorted(pair.item_ids) == sorted(i for i, t in titles.items() if t == titles[pair.record_id])
    assert len(pair.item_ids) == 2, "the synthetic world's entity has an image item and a fact item"
    index = pairs.index(pair)
    source = kb[pair.record_id]
    original = np.asarray(dataset.item_images.load(source.image, source.id), dtype=np.float32)
    drawn = set()
    answered_by_images = {ex.question for ex in examples
                          if any(kb[i].modality != "text" for i in ex.relevant_ids)}
    assert answered_by_images and answered_by_images != questions
    for epoch in range(12):
        query_image, question, item, item_image = dataset[(index, epoch)]
        drawn.add(item.id)
        assert question in questions
        if item.modality != "text":
            assert question in answered_by_images, "a query finds an image item only with a question it answers"
        assert query_image is not None and query_image.size == (original.shape[1], original.shape[0])
        assert np.abs(np.asarray(query_image, dtype=np.float32) - original).mean() > 1.0, "a new view"
        if item.modality == "text":
            assert item_image is None
    assert drawn == set(pair.item_ids)


def test_a_new_view_keeps_size_and_colours():
    from PIL import Image

    image = Image.new("RGB", (64, 64), (200, 200, 200))
    for x in range(24, 40):
        for y in range(24, 40):
            image.putpixel((x, y), (215, 40, 40))
    view = np.asarray(new_view(image, np.random.default_rng(3)))
    red = (view[..., 0] > 180) & (view[..., 1] < 90)
    assert view.shape == (64, 64, 3) and 150 < red.sum() < 400
    assert tuple(view[0, 0]) == tuple(view[-1, -1]) == (200, 200, 200), "uncovered border takes the corner colour"


def test_invented_creature_pairs_are_added_as_a_share_of_all_pairs_and_change_every_epoch(world):
    cfg = load_config(str(PRETRAIN_CONFIG), world_overrides(world) + ["data.extra_pairs.share=0.25", QUESTIONED])
    kb = KBStore.open(cfg.data.kb.store_dir, root=cfg.data.kb.root)
    examples = load_split(cfg.data, "train")
    pairs = build_pairs(examples, kb, cfg.train.item_pairs)
    records, extra = extra_pairs(cfg, len(pairs))
    assert extra == round(len(pairs) / 3) and len(records) == EXTRA_RECORDS
    dataset = PairDataset(cfg, pairs, kb, records, extra)
    assert len(dataset) == len(pairs) + extra
    names = {item.title for b in kb.iter_batches(64) for item in b}
    questions = {ex.question for ex in examples}
    drawn = [dataset[(len(pairs) + extra - 1, epoch)] for epoch in range(12)]
    answered_by_images = {ex.question for ex in examples
                          if any(kb[i].modality != "text" for i in ex.relevant_ids)}
    captions = 0
    for query_image, question, item, item_image in drawn:
        assert query_image is not None and item_image is None and item.modality == "text"
        assert question in questions and item.title not in names
        is_caption = not any(f" {year}." in item.text for year in range(1850, 2000, 5))
        captions += is_caption
        if is_caption:
            assert question in answered_by_images, "a caption is found with questions an image item answers"
    assert 0 < captions < 12
    assert len({item.id for _, _, item, _ in drawn}) == 12
    real = dataset[(0, 0)][2]
    assert real.id in {i for p in pairs for i in p.item_ids}
    off = load_config(str(PRETRAIN_CONFIG), world_overrides(world) + ["data.extra_pairs.share=0"])
    assert extra_pairs(off, len(pairs)) == (None, 0)


def test_extra_pair_i_of_epoch_e_is_record_e_times_extra_plus_i_modulo_the_records(world):
    cfg = load_config(str(PRETRAIN_CONFIG), world_overrides(world) + ["data.extra_pairs.share=0.25", QUESTIONED])
    kb = KBStore.open(cfg.data.kb.store_dir, root=cfg.data.kb.root)
    pairs = build_pairs(load_split(cfg.data, "train"), kb, cfg.train.item_pairs)
    records, extra = extra_pairs(cfg, len(pairs))
    dataset = PairDataset(cfg, pairs, kb, records, extra)
    for epoch, i in ((0, 0), (0, extra - 1), (1, 0), (2, 5), (7, extra - 1)):
        query_image, question, item, _ = dataset[(len(pairs) + i, epoch)]
        record = records.records[(epoch * extra + i) % EXTRA_RECORDS]
        assert item == record.item and question == record.question
        assert query_image.size == (64, 64)
    used = [(epoch * extra + i) % EXTRA_RECORDS for epoch in range(EXTRA_RECORDS // extra) for i in range(extra)]
    assert len(set(used)) == len(used), "no record repeats before all were used"


def test_pairs_query_without_a_question_when_no_training_question_names_an_item(world):
    # InfoSeek's questions name no knowledge item: an item paired with its entity's items (or an extra pair
    # without its own question) is then queried with its image alone instead of a drawn question.
    cfg = load_config(str(PRETRAIN_CONFIG), world_overrides(world) + ["train.item_pairs=entity"])
    kb = KBStore.open(cfg.data.kb.store_dir, root=cfg.data.kb.root)
    examples = [dataclasses.replace(ex, relevant_ids=None) for ex in load_split(cfg.data, "train")]
    pairs = build_pairs(examples, kb, cfg.train.item_pairs)
    assert pairs and all(not pair.from_question for pair in pairs)
    dataset = PairDataset(cfg, pairs, kb)
    assert dataset.questions == {"text": [], "image": []}
    for index in range(0, len(pairs), max(1, len(pairs) // 5)):
        query_image, question, _, _ = dataset[(index, 0)]
        assert question == "" and query_image is not None


def test_image_only_queries_drop_the_question_of_that_share_and_change_nothing_else(world):
    cfg, kb, examples, pairs, dataset = setup(world, "entity")
    keys = [(index, epoch) for index in range(len(pairs)) for epoch in range(3)]
    plain = [dataset[key] for key in keys]
    assert all(question for _, question, _, _ in plain), "every query of the synthetic world carries a question"
    for share in (0.3, 1.0):
        train = dataclasses.replace(cfg.train, image_only_queries=share)
        dropping = PairDataset(dataclasses.replace(cfg, train=train), pairs, kb)
        drawn = [dropping[key] for key in keys]
        dropped = [question == "" for _, question, _, _ in drawn]
        for (image, question, item, _), (image2, question2, item2, _) in zip(plain, drawn, strict=True):
            assert item2.id == item.id and question2 in ("", question)
            assert np.array_equal(np.asarray(image2), np.asarray(image)), "the same query image"
        if share == 1.0:
            assert all(dropped)
        else:
            assert 0.2 < sum(dropped) / len(dropped) < 0.4
            assert [dropping[key][1] == "" for key in keys] == dropped, "the same draw on every read"
    with pytest.raises(Exception, match="train.image_only_queries"):
        load_config(str(PRETRAIN_CONFIG), world_overrides(world) + ["train.image_only_queries=1.5"])
