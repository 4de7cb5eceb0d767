"""RORA-VLM knowledge snippets: two-stage retrieval returns (image, entity, description, texts) snippets,
they travel through references and the retrieval cache, and a snippet is one reference to the generator.

The *table* retriever embeds queries from a hand-made table (the question image and each expanded
question have their own vector), over real group indexes of a real KB store, so which anchors and
which texts a snippet gets is known in advance: these tests prove the snippet assembly. The *world*
tests run the real (untrained) encoder on the tiny synthetic world: their hits are not asserted, only
the snippets' structure, and that the cache and the references carry them.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BlipImageProcessor

from rablip.benchmarks import load_split
from rablip.config import load_config
from rablip.data.images import ImageLoader
from rablip.data.kb import KBStore
from rablip.data.kb_writer import build_kb_store
from rablip.data.random_items import RandomKBItems
from rablip.data.records import KBItem, QAExample
from rablip.data.samples import make_qa_sample
from rablip.data.snippet_items import reference_items, snippet_item
from rablip.errors import DataError, RablipError
from rablip.models.processing import Collator
from rablip.retrieval.cache import cache_paths
from rablip.retrieval.group_build import IndexRequest, build_group_indexes
from rablip.retrieval.groups import GroupIndexes
from rablip.retrieval.references import NoisyReferences, ranked_references
from rablip.retrieval.retriever import Retriever, expand_question
from rablip.retrieval.shards import write_shard, write_shards_manifest
from rablip.retrieval.snippets import retrieve_snippets
from rablip.retrieval.static import read_retrieval, read_retrieval_texts, write_retrieval
from rablip.stages.encode_kb import encode_knowledge_base
from rablip.stages.finetune import FinetuneDataset
from rablip.synthetic.tokenizer_training import train_tokenizer
from tests.retrieval.tiny_world import PRETRAIN_CONFIG, make_tiny_world, one_thread, world_overrides

QUESTION = "What does this creature eat?"
BETA, GAMMA, ALPHA, DELTA = "Beta Bird", "Gamma Goat", "Alpha Ape", "Delta Deer"
FINGERPRINT = "table-encoder"
DIM = 8


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _unit(*weights: tuple[int, float]) -> np.ndarray:
    vector = np.zeros(DIM, np.float32)
    for axis, weight in weights:
        vector[axis] = weight
    return vector


IMAGE_ITEMS = {  # id -> (item, embedding); the question image's query is axis 0
    "img-beta-1": (KBItem("img-beta-1", "image+text", _png((200, 20, 20)), "a red bird", BETA), _unit((0, 1.0))),
    "img-beta-2": (KBItem("img-beta-2", "image+text", _png((190, 30, 20)), "another red bird", BETA),
                   _unit((0, 0.9))),
    "img-gamma": (KBItem("img-gamma", "image", _png((20, 200, 20)), "", GAMMA), _unit((0, 0.8))),
    "img-alpha": (KBItem("img-alpha", "image+text", _png((20, 20, 200)), "a brown ape", ALPHA), _unit((0, 0.7))),
    "img-untitled": (KBItem("img-untitled", "image", _png((90, 90, 90)), "", ""), _unit((0, 0.6))),
}
TEXT_ITEMS = {  # the stage-2 queries expanded with Beta, Gamma, Alpha are axes 1, 2, 3
    "txt-beta-1": (KBItem("txt-beta-1", "text", None, "Beta Bird eats seeds.", BETA), _unit((1, 1.0))),
    "txt-delta": (KBItem("txt-delta", "text", None, "Delta Deer eats leaves.", DELTA),
                  _unit((1, 0.95), (2, 0.99), (3, 0.99))),  # ranks high for every query: never attached
    "txt-beta-2": (KBItem("txt-beta-2", "text", None, "Beta Bird lives in trees.", BETA), _unit((1, 0.9))),
    "txt-beta-3": (KBItem("txt-beta-3", "text", None, "Beta Bird sings.", BETA), _unit((1, 0.5))),
    "txt-gamma": (KBItem("txt-gamma", "text", None, "Gamma Goat eats grass.", GAMMA), _unit((2, 0.9))),
    "txt-alpha": (KBItem("txt-alpha", "text", None, "Alpha Ape eats fruit.", ALPHA), _unit((3, 0.9))),
}
QUERY_TABLE = {"<image>": _unit((0, 1.0)), expand_question(QUESTION, [BETA]): _unit((1, 1.0)),
               expand_question(QUESTION, [GAMMA]): _unit((2, 1.0)), expand_question(QUESTION, [ALPHA]): _unit((3, 1.0))}


class TableRetriever(Retriever):
    """A retriever whose query embeddings come from :data:`QUERY_TABLE` (an unknown query is a KeyError)."""

    def __init__(self, indexes: GroupIndexes, kb: KBStore, table: dict | None = None, **kwargs) -> None:
        super().__init__(torch.nn.Linear(1, 1), None, indexes, "two_stage", kb=kb, **kwargs)
        self.table = QUERY_TABLE if table is None else table

    def embed_queries(self, images, texts) -> np.ndarray:
        return np.stack([self.table["<image>" if image is not None else text] for image, text in zip(images, texts)])


def _indexes(tmp, name: str, groups: dict) -> GroupIndexes:
    embeddings = tmp / f"{name}_embeddings"
    for group, items in groups.items():
        write_shard(embeddings / group, 0, np.stack([vector for _, vector in items.values()]), list(items),
                    update_manifest=False)
        write_shards_manifest(embeddings / group, encoder_fingerprint=FINGERPRINT)
    index_dir = build_group_indexes(embeddings, tmp / f"{name}_index", FINGERPRINT,
                                    {group: len(items) for group, items in groups.items()}, IndexRequest()).parent
    return GroupIndexes.load(index_dir, expected_fingerprint=FINGERPRINT)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("snippets")
    items = [item for item, _ in [*IMAGE_ITEMS.values(), *TEXT_ITEMS.values()]]
    store = KBStore.open(build_kb_store(items, tmp / "store", show_progress=False))
    both = _indexes(tmp, "both", {"image": IMAGE_ITEMS, "text": TEXT_ITEMS})
    images_only = _indexes(tmp, "images_only", {"image": IMAGE_ITEMS})
    return {"store": store, "both": both, "images_only": images_only, "image": Image.new("RGB", (32, 32))}


def test_snippets_anchor_on_stage_one_entities_and_attach_only_their_own_texts(table):
    retriever = TableRetriever(table["both"], table["store"])
    snippets = retrieve_snippets(retriever, [table["image"]], [QUESTION], k=3, texts_per_snippet=2)[0]
    # One anchor per entity, best first: img-beta-2 is Beta Bird again, so Gamma Goat comes second.
    assert [s.image_id for s in snippets] == ["img-beta-1", "img-gamma", "img-alpha"]
    assert [s.score for s in snippets] == pytest.approx([1.0, 0.8, 0.7])
    assert [(s.entity, s.description) for s in snippets] == [(BETA, "a red bird"), (GAMMA, ""), (ALPHA, "a brown ape")]
    assert [s.expanded_question for s in snippets] == [expand_question(QUESTION, [name]) for name in (BETA, GAMMA, ALPHA)]
    # txt-delta outranks the entity's own texts for every expanded query: another entity's, never attached;
    # txt-beta-3 is Beta Bird's third best, past snippet_texts=2.
    assert [s.text_ids for s in snippets] == [["txt-beta-1", "txt-beta-2"], ["txt-gamma"], ["txt-alpha"]]
    assert snippets[0].text_hits[1][1] == pytest.approx(0.9)


def test_untitled_anchor_gets_no_texts_and_zero_texts_skip_stage_two(table):
    retriever = TableRetriever(table["both"], table["store"])
    snippets = retrieve_snippets(retriever, [table["image"]], [QUESTION], k=5, texts_per_snippet=1)[0]
    assert [s.image_id for s in snippets] == ["img-beta-1", "img-gamma", "img-alpha", "img-untitled"]
    assert snippets[-1].entity == "" and snippets[-1].text_hits == [] and snippets[-1].expanded_question == ""
    assert [s.text_ids for s in snippets[:3]] == [["txt-beta-1"], ["txt-gamma"], ["txt-alpha"]]
    # No stage-2 query is embedded at all (this table raises a KeyError for any but the image query).
    image_only = TableRetriever(table["both"], table["store"], table={"<image>": QUERY_TABLE["<image>"]})
    bare = retrieve_snippets(image_only, [table["image"]], [QUESTION], k=2, texts_per_snippet=0)[0]
    assert [(s.image_id, s.text_hits) for s in bare] == [("img-beta-1", []), ("img-gamma", [])]


def test_retriever_two_stage_mode_ranks_the_snippet_anchors(table):
    retriever = TableRetriever(table["both"], table["store"], snippet_texts=2)
    hits = retriever.retrieve([table["image"]], [QUESTION], k=2)
    assert [[item_id for item_id, _ in row] for row in hits] == [["img-beta-1", "img-gamma"]]
    snippets = retriever.retrieve_snippets([table["image"]], [QUESTION], k=2)[0]
    assert [s.text_ids for s in snippets] == [["txt-beta-1", "txt-beta-2"], ["txt-gamma"]]


def test_refusals_keep_their_clear_errors(table):
    retriever = TableRetriever(table["both"], table["store"])
    with pytest.raises(RablipError, match="no image"):
        retrieve_snippets(retriever, [None], [QUESTION], k=1, texts_per_snippet=1)
    with pytest.raises(RablipError, match="no image"):
        retriever.retrieve([None], [QUESTION], k=1)
    with pytest.raises(RablipError, match="text items"):
        retrieve_snippets(TableRetriever(table["images_only"], table["store"]), [table["image"]], [QUESTION], k=1,
                          texts_per_snippet=1)


def test_reference_items_make_one_composite_reference_per_snippet(table):
    store = table["store"]
    items = reference_items(store, ["img-gamma", "txt-alpha", "img-alpha"],
                            {"img-gamma": ["txt-gamma"], "img-alpha": []})
    gamma, alpha_text, alpha = items
    assert (gamma.id, gamma.modality, gamma.title, gamma.text) == ("img-gamma", "image+text", GAMMA,
                                                                   "Gamma Goat eats grass.")
    assert gamma.image == store["img-gamma"].image
    assert alpha_text == store["txt-alpha"] and alpha == store["img-alpha"]  # no texts attached: the plain item
    beta = snippet_item(store["img-beta-1"], store.get_many(["txt-beta-1", "txt-beta-2"]))
    assert beta.text == "a red bird Beta Bird eats seeds. Beta Bird lives in trees."


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("snippet_tokenizers")
    corpus = [QUESTION, "Reference 1: 2: image Question: Short answer:",
              *(item.text + " " + item.title for item, _ in [*IMAGE_ITEMS.values(), *TEXT_ITEMS.values()])] * 3
    return {kind: train_tokenizer(corpus, root / kind, kind=kind, vocab_size=300) for kind in ("bert", "t5", "causal")}


@pytest.mark.parametrize("family", ["instructblip_t5", "llava"])
def test_a_snippet_is_one_image_block_followed_by_its_text(table, tokenizers, family):
    llava = family == "llava"
    collator = Collator(None if llava else tokenizers["bert"], tokenizers["causal" if llava else "t5"],
                        BlipImageProcessor(size={"height": 16, "width": 16}), images_after_prefix=llava,
                        num_query_tokens=4, is_encoder_decoder=not llava, max_references=2, max_input_length=256,
                        max_target_length=8, qformer_max_length=64, mode="generate")
    items = reference_items(table["store"], ["img-beta-1", "img-gamma"],
                            {"img-beta-1": ["txt-beta-1", "txt-beta-2"], "img-gamma": ["txt-gamma"]})
    example = QAExample("q1", None, QUESTION, ["seeds"])
    sample = make_qa_sample(example, items, lambda ref, record_id: Image.new("RGB", (20, 20), (200, 20, 20)))
    batch = collator([sample])
    assert batch["image_slot_mask"].tolist() == [[False, True, True]]
    ids = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    image = collator.image_token_id
    runs = [position for position in range(len(ids)) if ids[position] == image and (position == 0 or ids[position - 1] != image)]
    assert len(runs) == 2 and ids.count(image) == 8  # one block of 4 image tokens per snippet
    tokenizer = collator.llm_tokenizer
    first = tokenizer.decode(ids[runs[0] + 4:runs[1]], skip_special_tokens=True)
    second = tokenizer.decode(ids[runs[1] + 4:], skip_special_tokens=True)
    squash = "".join
    assert squash(first.split()) == squash(
        "Reference 1: Beta Bird: a red bird Beta Bird eats seeds. Beta Bird lives in trees.".split())
    assert squash(second.split()).startswith(squash("Reference 2: Gamma Goat: Gamma Goat eats grass.".split()))


def test_random_snippets_draw_image_items_of_other_entities(table):
    store = table["store"]
    draw = RandomKBItems(store, images_only=True)
    rng = np.random.default_rng(0)
    for _ in range(10):
        picked = store.get_many(draw(rng, 2, {"img-alpha"}, {BETA}))
        assert len(picked) == 2 and all(item.modality != "text" for item in picked)
        assert all(item.title != BETA and item.id != "img-alpha" for item in picked)
    noisy = NoisyReferences(store, 1.0, seed=0, images_only=True)
    example = QAExample("q1", None, QUESTION, relevant_ids=["img-beta-1"])
    for position in range(5):
        refs = noisy(example, position, [("img-beta-1", 1.0), ("img-gamma", 0.8)], 2)
        assert all(store[item_id].modality != "text" and store[item_id].title != BETA for item_id, _ in refs)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("snippet_world")
    with one_thread():
        cfg = make_tiny_world(tmp)
        encode_knowledge_base(cfg, show_progress=False)
    return tmp, cfg


def test_world_references_carry_snippets_through_the_cache(world):
    tmp, _ = world
    cfg = _two_stage_config(tmp)
    examples = load_split(cfg.data, "val")[:4]
    run_dir = tmp / "refs_run"
    run_dir.mkdir()
    with one_thread():
        references = ranked_references(cfg, examples, "val", run_dir)
    store = KBStore.open(cfg.data.kb.store_dir, root=cfg.data.kb.root or None)
    assert references.retrieved and references.snippet_texts is not None
    for example in examples:
        anchors = references.ids(example.id)
        attached = references.snippet_texts[example.id]
        assert set(attached) == set(anchors) and anchors
        anchor_items = store.get_many(anchors)
        assert all(item.modality != "text" for item in anchor_items)
        assert len({item.title for item in anchor_items}) == len(anchors), "one snippet per entity"
        for item in anchor_items:
            texts = store.get_many(attached[item.id])
            assert len(texts) <= 1 and all(t.modality == "text" and t.title == item.title for t in texts)
    results_path, _ = cache_paths(run_dir, "val")
    lines = [json.loads(line) for line in results_path.read_text().splitlines()]
    assert any("texts" in entry for line in lines for entry in line["items"])
    # Read back from the cache: the same anchors and texts.
    again = ranked_references(cfg, examples, "val", run_dir)
    assert again.ranked == references.ranked and again.snippet_texts == references.snippet_texts
    static_cfg = _two_stage_config(tmp, "retrieval.source=static", f"retrieval.static_file={results_path}")
    static = ranked_references(static_cfg, examples, "val", run_dir)
    assert static.ranked == references.ranked and static.snippet_texts == references.snippet_texts
    loader = ImageLoader(None)
    with one_thread():
        live = Retriever.from_config(cfg).retrieve_snippets([loader.load(examples[0].image, examples[0].id)],
                                                            [examples[0].question], k=2)[0]
    assert [s.image_id for s in live] == references.ids(examples[0].id)[:2]


def test_static_results_carry_snippet_texts(tmp_path):
    path = write_retrieval(tmp_path / "results.jsonl", [("q1", [("img-a", 0.9), ("img-b", 0.5)]), ("q2", [("t", 0.1)])],
                           {"q1": {"img-a": ["txt-a1", "txt-a2"]}})
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["items"] == [{"id": "img-a", "score": 0.9, "texts": ["txt-a1", "txt-a2"]},
                                 {"id": "img-b", "score": 0.5, "texts": []}]
    assert lines[1]["items"] == [{"id": "t", "score": 0.1}]  # not a snippet question: no texts field
    assert read_retrieval(path) == {"q1": [("img-a", 0.9), ("img-b", 0.5)], "q2": [("t", 0.1)]}
    assert read_retrieval_texts(path) == {"q1": {"img-a": ["txt-a1", "txt-a2"], "img-b": []}}
    lines[0]["items"][0]["texts"] = "txt-a1"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(DataError, match="texts"):
        read_retrieval_texts(path)


def _two_stage_config(tmp, *extra: str):
    return load_config(str(PRETRAIN_CONFIG), world_overrides(tmp) + [
        "retrieval.source=index", "retrieval.mode=two_stage", "retrieval.k=2", "retrieval.snippet_texts=1", *extra])


def test_finetune_samples_hold_snippets_and_random_image_snippets(world):
    tmp, _ = world
    cfg = _two_stage_config(tmp, "askg.enabled=false", "noise.random_snippets=1", "noise.counterfactual=0")
    examples = load_split(cfg.data, "val")[:3]
    run_dir = tmp / "finetune_refs_run"
    run_dir.mkdir()
    store = KBStore.open(cfg.data.kb.store_dir, root=cfg.data.kb.root or None)
    with one_thread():
        references = ranked_references(cfg, examples, "val", run_dir)
    dataset = FinetuneDataset(cfg, examples, store, references)
    for index, example in enumerate(examples):
        sample = dataset[(index, 0)][0]
        anchors, attached = references.ids(example.id)[:2], references.texts_of(example.id)
        by_id = {reference.item.id: reference for reference in sample.references}
        assert set(anchors) <= set(by_id) and len(sample.references) == 3
        for anchor in anchors:
            expected = snippet_item(store[anchor], store.get_many(attached[anchor]))
            assert by_id[anchor].item == expected and by_id[anchor].has_image
        (noise,) = [reference for item_id, reference in by_id.items() if item_id not in anchors]
        # A noise snippet: an other entity's image item (with the texts this question's retrieval attached
        # to it, when it is one of its lower-ranked anchors).
        assert noise.has_image and noise.item == reference_items(store, [noise.item.id], attached)[0]
        assert noise.item.title not in {item.title for item in store.get_many(example.relevant_ids)}
