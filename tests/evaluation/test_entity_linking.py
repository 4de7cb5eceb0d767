"""rablip.evaluation.entity_linking (names -> QIDs over a Wiki6M list) and rablip.data.wiki6m (its reader)."""

from __future__ import annotations

import gzip
import json

import pytest

from rablip.data.wiki6m import iter_entities
from rablip.errors import DataError
from rablip.evaluation.entity_linking import EntityLinker, bm25_idf, normalize_name

ENTITIES = [
    ("Q1", "Paris Paris"),
    ("Q2", "Paris"),
    ("Q31", "Belgium"),
    ("Q308", "Mercury (planet)"),
    ("Q925", "Mercury (element)"),
    ("Q1234", "Café de Flore"),
    ("Q10", "Red Fox"),
    ("Q11", "Fox Red"),
    ("Q20", "John Adams"),
    ("Q21", "John Lennon"),
    ("Q22", "John Wayne"),
    ("Q23", "Will Smith"),
]


def write_entities(path, entities=ENTITIES, compress=False):
    lines = "".join(json.dumps({"wikidata_id": qid, "wikipedia_title": title, "wikipedia_content": f"About {title}.",
                                "wikipedia_image_url": ""}) + "\n" for qid, title in entities)
    if compress:
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(lines)
    else:
        path.write_text(lines, encoding="utf-8")
    return path


def test_normalize_name():
    assert normalize_name("Café  de Flore!") == "cafe de flore"
    assert normalize_name("Q.E.D.") == "q e d"
    assert normalize_name("  Straße_Nord ") == "strasse nord"
    assert normalize_name("Mercury (planet)") == "mercury planet"
    assert normalize_name("?!") == ""


def test_exact_title_first_then_bm25(tmp_path):
    linker = EntityLinker(write_entities(tmp_path / "wiki6m.jsonl"))
    # 'Paris' is a title (Q2), though BM25 alone prefers 'Paris Paris' (tf 2 outweighs the longer title);
    # with a word no title has, the exact step fails and BM25 picks Q1.
    assert linker.link(["PARIS!", "paris city"]) == ["Q2", "Q1"]
    assert linker.method("PARIS!") == "exact" and linker.method("paris city") == "bm25"
    assert linker.link(["cafe de flore", "Belgium"]) == ["Q1234", "Q31"]


def test_bm25_top1(tmp_path):
    linker = EntityLinker(write_entities(tmp_path / "wiki6m.jsonl"))
    # both words of 'Mercury (planet)' beat one word of 'Mercury (element)'.
    assert linker.link(["the planet Mercury"]) == ["Q308"]
    # 'smith' is in one title, 'john' in three: the rarer word decides.
    assert linker.link(["John Smith"]) == ["Q23"]
    # 'Red Fox' and 'Fox Red' score the same: the earlier entity wins.
    assert linker.link(["a fox that is red"]) == ["Q10"]
    assert bm25_idf(12, 1) > bm25_idf(12, 3) > 0
    assert bm25_idf(12, 12) > 0  # never negative, even for a word in every title


def test_no_match_maps_to_empty_and_results_are_memoised(tmp_path):
    linker = EntityLinker(write_entities(tmp_path / "wiki6m.jsonl"))
    assert linker.link(["zebra", "", "...", "Belgium"]) == ["", "", "", "Q31"]
    assert linker.method("zebra") == "none" and linker.passes == 1
    assert linker.link(["belgium", "Zebra"]) == ["Q31", ""] and linker.passes == 1
    assert linker.link(["Adams"]) == ["Q20"] and linker.passes == 2
    with pytest.raises(KeyError):
        linker.method("never seen")


def test_gzip_list(tmp_path):
    path = write_entities(tmp_path / "Wiki6M_ver_1_0.jsonl.gz", compress=True)
    assert [qid for _, qid, _ in iter_entities(path)][:3] == ["Q1", "Q2", "Q31"]
    assert EntityLinker(path).link(["mercury element"]) == ["Q925"]


def test_bad_entity_lists(tmp_path):
    path = tmp_path / "wiki.jsonl"
    path.write_text('{"wikidata_id": "Q1", "wikipedia_title": "A"}\n{"wikidata_id": "Q2"}\n')
    with pytest.raises(DataError, match=r"wiki\.jsonl, line 2: missing required key 'wikipedia_title'"):
        EntityLinker(path).link(["a b"])
    path.write_text('{"wikidata_id": "Q1", "wikipedia_title": "A"}\n{"wikidata_id": \n')
    with pytest.raises(DataError, match=r"wiki\.jsonl, line 2: malformed JSON"):
        list(iter_entities(path))
    with pytest.raises(DataError, match="Wiki6M entity list not found"):
        list(iter_entities(tmp_path / "nope.jsonl.gz"))
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(write_entities(tmp_path / "whole.jsonl.gz", compress=True).read_bytes()[:40])
    with pytest.raises(DataError, match=r"cut\.jsonl\.gz: the gzip stream is damaged or cut short"):
        list(iter_entities(cut))
    path.write_text("\n")
    with pytest.raises(DataError, match="holds no entities"):
        EntityLinker(path).link(["a"])
