"""The on-disk knowledge-base store: build, open, lookups, refusals, interrupted builds, config builder."""

from __future__ import annotations

import base64
import json
import pickle
import runpy
from pathlib import Path

import numpy as np
import pytest

from rablip.config.schema import KBConfig
from rablip.data import kb_index
from rablip.data.kb import MANIFEST_NAME, KBStore
from rablip.data.kb_build import build_kb_from_config
from rablip.data.kb_writer import build_kb_store
from rablip.data.records import KBItem
from rablip.data.webqa import TSVImage
from rablip.errors import ConfigError, DataError
from tests.data.image_fixtures import encoded_image

PNG_BYTES = b"\x89PNG\r\n\x1a\nnot-a-real-png-but-bytes"


def _mixed_items() -> list[KBItem]:
    items = [KBItem(id=f"text-{i}", modality="text", text=f"fact number {i}", title=f"Entity {i}", source="unit") for i in range(50)]
    items.append(KBItem(id="img-path", modality="image", image="photos/cat.jpg", source="unit"))
    items.append(KBItem(id="img-bytes", modality="image+text", image=PNG_BYTES, text="a caption", title="Cat"))
    return items


def _build(items, tmp_path: Path, name: str = "store", **kwargs) -> Path:
    root = tmp_path / "kb_root"
    (root / "photos").mkdir(parents=True, exist_ok=True)
    return build_kb_store(iter(items), tmp_path / name, kb_root=root, show_progress=False, **kwargs)


def _leftovers(tmp_path: Path) -> list[str]:
    """Everything in tmp_path besides the KB root: what a build left behind."""
    return sorted(path.name for path in tmp_path.iterdir() if path.name != "kb_root")


def test_round_trip_text_image_path_and_bytes(tmp_path):
    items = _mixed_items()
    out = _build(items, tmp_path, total=len(items), source_name="unit-test")
    store = KBStore.open(out)

    assert len(store) == len(items)
    assert store.root == (tmp_path / "kb_root").resolve()
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["count"] == len(items) and manifest["source"] == "unit-test"
    assert manifest["kb_root"] == str((tmp_path / "kb_root").resolve())
    assert manifest["schema_version"] == store.manifest["schema_version"]

    for item in items:
        assert store[item.id] == item
    assert list(store.ids()) == [item.id for item in items]
    batches = list(store.iter_batches(batch_size=16))
    assert [len(batch) for batch in batches] == [16, 16, 16, 4]
    assert [item for batch in batches for item in batch] == items

    assert store.image_of(store["img-path"]) == (tmp_path / "kb_root" / "photos" / "cat.jpg").resolve()
    assert store.image_of(store["img-bytes"]) == PNG_BYTES
    assert store.image_of(store["text-3"]) is None
    # A moved KB root is given on open and replaces the recorded one.
    moved = tmp_path / "elsewhere"
    assert KBStore.open(out, root=moved).image_of(store["img-path"]) == (moved / "photos" / "cat.jpg").resolve()


def test_pickles_as_a_reference_to_its_directory(tmp_path):
    store = KBStore.open(_build(_mixed_items(), tmp_path), root=tmp_path / "elsewhere")
    payload = pickle.dumps(store)
    assert len(payload) < 2_000  # the directory and root, not the data or the id index
    copy = pickle.loads(payload)
    assert copy.root == store.root and copy["img-bytes"] == store["img-bytes"]


def test_lookup_and_get_many_keep_the_order_asked(tmp_path):
    store = KBStore.open(_build(_mixed_items(), tmp_path))
    wanted = ["img-bytes", "text-7", "img-path", "text-7", "text-0"]
    assert [item.id for item in store.get_many(wanted)] == wanted
    assert store.get_many(["text-12"])[0].text == "fact number 12"
    assert store.get_many([]) == []
    assert "text-1" in store and "nope" not in store


def test_missing_id_names_the_id_and_the_store(tmp_path):
    out = _build(_mixed_items(), tmp_path)
    store = KBStore.open(out)
    with pytest.raises(DataError, match=r"'no-such-item'.*" + str(out)) as info:
        store["no-such-item"]
    assert isinstance(info.value, KeyError)
    with pytest.raises(KeyError, match="missing-in-batch"):
        store.get_many(["text-1", "missing-in-batch"])


def test_duplicate_id_refused_and_nothing_left(tmp_path):
    items = _mixed_items()
    items.insert(30, KBItem(id="text-4", modality="text", text="a second text-4"))
    with pytest.raises(DataError, match=r"duplicate knowledge-base item id 'text-4' \(items #4 and #30"):
        _build(items, tmp_path)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("bad_path", ["../outside.jpg", "photos/../../outside.jpg", "/etc/passwd", "escape/outside.jpg"])
def test_image_path_escaping_the_root_refused(tmp_path, bad_path):
    outside = tmp_path / "outside_dir"
    outside.mkdir()
    (tmp_path / "kb_root").mkdir()
    (tmp_path / "kb_root" / "escape").symlink_to(outside, target_is_directory=True)
    items = [*_mixed_items()[:5], KBItem(id="sneaky", modality="image", image=bad_path)]
    with pytest.raises(DataError, match=r"item 'sneaky'.*" + bad_path.replace(".", r"\.")):
        _build(items, tmp_path)
    assert _leftovers(tmp_path) == ["outside_dir"]


def test_image_path_without_root_refused(tmp_path):
    items = [KBItem(id="p", modality="image", image="photos/cat.jpg")]
    with pytest.raises(DataError, match="no KB root"):
        build_kb_store(items, tmp_path / "store", show_progress=False)
    assert not (tmp_path / "store").exists()


def test_empty_input_refused(tmp_path):
    with pytest.raises(DataError, match="no items"):
        _build([], tmp_path)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("interruption", [RuntimeError, KeyboardInterrupt])
def test_interrupted_build_leaves_nothing_that_opens(tmp_path, interruption):
    def items_then_failure():
        yield from _mixed_items()[:20]
        raise interruption("source went away")

    with pytest.raises(interruption, match="source went away"):
        _build(items_then_failure(), tmp_path)
    assert _leftovers(tmp_path) == []
    with pytest.raises(DataError, match="not a directory"):
        KBStore.open(tmp_path / "store")


def test_failed_rebuild_keeps_the_old_store(tmp_path):
    out = _build(_mixed_items(), tmp_path)
    with pytest.raises(DataError, match="already exists"):
        _build(_mixed_items(), tmp_path)
    broken = [*_mixed_items()[:3], KBItem(id="text-0", modality="text", text="dup")]
    with pytest.raises(DataError, match="duplicate"):
        _build(broken, tmp_path, overwrite=True)
    assert len(KBStore.open(out)) == len(_mixed_items())
    _build(_mixed_items()[:5], tmp_path, overwrite=True)
    assert len(KBStore.open(out)) == 5
    assert _leftovers(tmp_path) == ["store"]


def test_overwrite_refuses_a_directory_that_is_not_a_store(tmp_path):
    precious = tmp_path / "store"
    precious.mkdir()
    (precious / "thesis.tex").write_text("keep me")
    with pytest.raises(DataError, match="not a store"):
        _build(_mixed_items(), tmp_path, overwrite=True)
    assert (precious / "thesis.tex").read_text() == "keep me"


def test_open_without_manifest_refused(tmp_path):
    out = _build(_mixed_items(), tmp_path)
    (out / MANIFEST_NAME).unlink()
    with pytest.raises(DataError, match=r"not a finished knowledge-base store: kb_manifest\.json is missing"):
        KBStore.open(out)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="kb_manifest.json is missing"):
        KBStore.open(tmp_path / "empty")


def test_open_refuses_count_mismatch(tmp_path):
    out = _build(_mixed_items(), tmp_path)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    manifest["count"] = 3
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="manifest says 3 items"):
        KBStore.open(out)


def test_hash_collisions_never_return_the_wrong_item(tmp_path, monkeypatch):
    # A deliberately weak hash (the id's length) makes most ids collide.
    monkeypatch.setattr(kb_index, "hash_id", lambda item_id: len(item_id))
    monkeypatch.setattr(kb_index, "hash_ids", lambda ids: np.array([len(i) for i in ids], dtype=np.uint64))
    items = [KBItem(id=f"id{i}", modality="text", text=f"t{i}") for i in range(30)]
    store = KBStore.open(_build(items, tmp_path))
    assert all(store[item.id] == item for item in items)
    assert [item.id for item in store.get_many(["id29", "id3", "id17"])] == ["id29", "id3", "id17"]
    with pytest.raises(KeyError, match="id99"):
        store["id99"]  # same hash as id10..id29, but absent
    with pytest.raises(KeyError, match="id77"):
        store.get_many(["id77"])
    colliding_duplicate = [*items, KBItem(id="id12", modality="text", text="again")]
    with pytest.raises(DataError, match="duplicate knowledge-base item id 'id12'"):
        _build(colliding_duplicate, tmp_path, name="second")


def _kb_cfg(**values) -> KBConfig:
    return KBConfig(**values)


def test_config_builder_on_generic_jsonl(tmp_path):
    root = tmp_path / "kb"
    (root / "images").mkdir(parents=True)
    records = [
        {"id": "e1", "title": "Eiffel Tower", "text": "A wrought-iron tower in Paris."},
        {"id": "e2", "title": "Big Ben", "image": "images/bigben.jpg", "text": "Clock tower in London."},
        {"id": 3, "image_base64": base64.b64encode(PNG_BYTES).decode()},
    ]
    (root / "kb.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    out = build_kb_from_config(
        _kb_cfg(path=str(root / "kb.jsonl"), root=str(root), store_dir=str(tmp_path / "store")), show_progress=False
    )
    store = KBStore.open(out)
    assert list(store.ids()) == ["e1", "e2", "3"]
    assert store["e2"].modality == "image+text"
    assert store.image_of(store["e2"]) == (root / "images" / "bigben.jpg").resolve()
    assert store["3"].modality == "image" and store.image_of(store["3"]) == PNG_BYTES
    assert store.manifest["source"] == f"jsonl:{root / 'kb.jsonl'}"

    with pytest.raises(ConfigError, match="data.kb.format"):
        build_kb_from_config(_kb_cfg(format="csv", path=str(root / "kb.jsonl"), store_dir=str(tmp_path / "x")))
    with pytest.raises(ConfigError, match="data.kb.store_dir"):
        build_kb_from_config(_kb_cfg(path=str(root / "kb.jsonl")))


def test_config_builder_on_wit_tsv_keeps_urls_but_image_of_refuses_them(tmp_path):
    tsv = tmp_path / "wit.tsv"
    tsv.write_text(
        "page_title\treference_description\timage_url\n"
        "Lighthouse\tA tall tower with a light.\thttps://upload.example.org/a.jpg\n"
        "Harbour\tWhere ships dock.\t\n"
    )
    cfg = _kb_cfg(format="wit_tsv", path=str(tsv), store_dir=str(tmp_path / "store"))
    store = KBStore.open(build_kb_from_config(cfg, show_progress=False))
    first, second = store.get_many(list(store.ids()))
    assert (first.title, first.modality, first.image) == ("Lighthouse", "image+text", "https://upload.example.org/a.jpg")
    assert (second.title, second.modality) == ("Harbour", "text")
    with pytest.raises(DataError, match="does not download"):
        store.image_of(first)


def test_config_builder_on_webqa_refers_to_tsv_images(tmp_path):
    """The store holds image ids, not the TSV's bytes; the image is read from imgs.tsv when asked for."""
    real_png = encoded_image((8, 8), fmt="PNG")
    facts_image = {"image_id": 1, "title": "Bridge", "caption": "A red bridge.", "url": "u", "imgUrl": "i"}
    facts_text = {"snippet_id": "snip-1", "fact": "The bridge opened in 1937.", "title": "Bridge", "url": "u"}
    record = {"Q": '"When?"', "A": ['"1937"'], "Qcate": "number", "split": "val", "txt_posFacts": [facts_text],
              "img_posFacts": [facts_image], "txt_negFacts": [], "img_negFacts": []}
    (tmp_path / "WebQA_train_val.json").write_text(json.dumps({"guid-1": record}))
    lines = [f"0\t{base64.b64encode(b'zero').decode()}\n", f"1\t{base64.b64encode(real_png).decode()}\n"]
    (tmp_path / "imgs.tsv").write_text("".join(lines))
    (tmp_path / "imgs.lineidx").write_text(f"0\n{len(lines[0])}\n")
    cfg = _kb_cfg(format="webqa", path=str(tmp_path / "WebQA_train_val.json"), store_dir=str(tmp_path / "store"),
                  webqa_images_tsv=str(tmp_path / "imgs.tsv"))
    store = KBStore.open(build_kb_from_config(cfg, show_progress=False))
    assert len(store) == 2
    assert store["snip-1"].text == "The bridge opened in 1937."
    assert store.image_of(store["1"]) == real_png and store["1"].text == "A red bridge."
    assert isinstance(store["1"].image, TSVImage) and store["1"].image.image_id == 1
    assert store.manifest["image_tsv"]["tsv"] == str((tmp_path / "imgs.tsv").resolve())
    assert store._dataset["image_bytes"] == [None, None] and store._dataset["image_path"] == [None, "1"]
    with pytest.raises(ConfigError, match="webqa_images_tsv"):
        build_kb_from_config(_kb_cfg(format="webqa", path=cfg.path, store_dir=str(tmp_path / "other")))


def test_build_kb_script_builds_and_reports_user_errors(tmp_path, capsys):
    script = runpy.run_path(str(Path(__file__).resolve().parents[2] / "scripts" / "build_kb.py"), run_name="build_kb")
    (tmp_path / "kb.jsonl").write_text('{"id": "a", "text": "alpha"}\n{"id": "b", "image": "../b.jpg"}\n')
    config = tmp_path / "kb.yaml"
    config.write_text(f"data:\n  kb:\n    format: jsonl\n    path: {tmp_path / 'kb.jsonl'}\n    root: {tmp_path / 'root'}\n")
    with pytest.raises(SystemExit) as exit_info:
        script["run_main"](script["main"], ["--config", str(config), f"data.kb.store_dir={tmp_path / 'bad'}"])
    assert exit_info.value.code == 2
    assert "'../b.jpg'" in capsys.readouterr().err and not (tmp_path / "bad").exists()

    (tmp_path / "kb.jsonl").write_text('{"id": "a", "text": "alpha"}\n')
    assert script["main"](["--config", str(config), f"data.kb.store_dir={tmp_path / 'good'}"]) == 0
    assert "1 items" in capsys.readouterr().out
    assert KBStore.open(tmp_path / "good")["a"].text == "alpha"


def test_data_file_keeps_large_record_batches_and_binary_rows(tmp_path):
    # Opening a store costs memory per Arrow record batch; images force datasets' save_to_disk down
    # to 100-row batches, so the store keeps the batches it wrote (up to 10,000 rows).
    import pyarrow as pa

    png = base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
    items = [KBItem(f"i{n}", "image+text" if n % 3 == 0 else "text", png if n % 3 == 0 else None, f"text {n}")
             for n in range(2500)]
    store_dir = _build(items, tmp_path)
    with pa.OSFile(str(store_dir / "items.arrow"), "rb") as source:
        batches = list(pa.ipc.open_stream(source))
    assert len(batches) == 1 and batches[0].num_rows == 2500
    store = KBStore.open(store_dir)
    assert store["i2498"].text == "text 2498" and store["i2498"].modality == "text"
    assert store["i0"].image == png


def test_a_store_in_the_save_to_disk_layout_still_opens(tmp_path):
    import datasets

    store_dir = _build(_mixed_items(), tmp_path)
    old = tmp_path / "old"
    datasets.Dataset.from_file(str(store_dir / "items.arrow")).save_to_disk(str(old))
    for name in ("id_hashes.npy", "id_rows.npy"):
        (old / name).write_bytes((store_dir / name).read_bytes())
    manifest = json.loads((store_dir / MANIFEST_NAME).read_text())
    del manifest["data_file"]
    (old / MANIFEST_NAME).write_text(json.dumps(manifest))
    new_store, old_store = KBStore.open(store_dir), KBStore.open(old)
    assert [item.id for item in old_store.get_many(new_store.ids())] == list(new_store.ids())
