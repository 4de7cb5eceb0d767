"""Stage 2 of two-stage retrieval attaches the snippet entity's texts even where the dense text search
ranks them below other entities' texts (``retrieval.snippet_search_depth``).

The synthetic demo's RORA run attached a fact text to ~20% of its anchors: its tiny retrieval encoder,
trained on image+question queries, ranks a made-up name's text low for a text-only query, and stage 2
kept only the entity's texts among the top ``snippet_texts x 5`` hits. Here the entity's one text is
ranked 8th of 8 for its expanded question: the default depth finds none, a depth that covers the text
group (capped at its size) finds it.
"""

from __future__ import annotations

import pytest
from PIL import Image

from rablip.config import load_config
from rablip.data.kb import KBStore
from rablip.data.kb_writer import build_kb_store
from rablip.data.records import KBItem
from rablip.retrieval.retriever import expand_question
from rablip.retrieval.snippets import retrieve_snippets, stage2_depth
from tests.retrieval.test_snippets import TableRetriever, _indexes, _png, _unit

QUESTION = "Where does it live?"
NAME = "Zorb Fish"
OTHERS = [f"Other {n}" for n in range(7)]
IMAGE_ITEMS = {"img-zorb": (KBItem("img-zorb", "image+text", _png((9, 99, 9)), "a green fish", NAME), _unit((0, 1.0)))}
TEXT_ITEMS = {  # the expanded question is axis 1: every other entity's text outranks the Zorb Fish's
    **{f"txt-{n}": (KBItem(f"txt-{n}", "text", None, f"{name} lives somewhere.", name), _unit((1, 0.99 - n / 100)))
       for n, name in enumerate(OTHERS)},
    "txt-zorb": (KBItem("txt-zorb", "text", None, "The Zorb Fish lives in the reef.", NAME), _unit((1, 0.1), (2, 1.0))),
}
TABLE = {"<image>": _unit((0, 1.0)), expand_question(QUESTION, [NAME]): _unit((1, 1.0))}


@pytest.fixture(scope="module")
def low_ranked(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("two_stage_texts")
    items = [item for item, _ in [*IMAGE_ITEMS.values(), *TEXT_ITEMS.values()]]
    store = KBStore.open(build_kb_store(items, tmp / "store", show_progress=False))
    return store, _indexes(tmp, "both", {"image": IMAGE_ITEMS, "text": TEXT_ITEMS})


def _texts(store, indexes, **kwargs) -> list[str]:
    retriever = TableRetriever(indexes, store, table=TABLE, **kwargs)
    snippets = retrieve_snippets(retriever, [Image.new("RGB", (32, 32))], [QUESTION], k=1, texts_per_snippet=1)[0]
    assert [s.image_id for s in snippets] == ["img-zorb"]
    return snippets[0].text_ids


def test_shallow_stage_two_misses_a_low_ranked_entity_text(low_ranked):
    store, indexes = low_ranked
    assert stage2_depth(TableRetriever(indexes, store, table=TABLE), 1) == 5  # snippet_texts x 5
    assert _texts(store, indexes) == []


def test_a_depth_covering_the_text_group_attaches_the_entity_text(low_ranked):
    store, indexes = low_ranked
    assert stage2_depth(TableRetriever(indexes, store, table=TABLE, snippet_search_depth=10**6), 1) == 8  # capped
    assert _texts(store, indexes, snippet_search_depth=10**6) == ["txt-zorb"]
    assert _texts(store, indexes, snippet_search_depth=8) == ["txt-zorb"]
    assert _texts(store, indexes, snippet_search_depth=7) == []


@pytest.mark.parametrize("name", ["synthetic_rora_finetune", "synthetic_rora_eval"])
def test_synthetic_rora_configs_filter_the_whole_text_group(name):
    cfg = load_config(f"configs/experiment/{name}.yaml")
    assert cfg.retrieval.mode == "two_stage"
    assert cfg.retrieval.snippet_search_depth >= 10**6  # more than any synthetic world's text items


def test_negative_depth_is_refused():
    with pytest.raises(Exception, match="snippet_search_depth"):
        load_config("configs/experiment/synthetic_rora_eval.yaml", ["retrieval.snippet_search_depth=-1"])
