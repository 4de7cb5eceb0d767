"""WebQA as a retrieval corpus: the KB store built from WebQA's files holds every fact once, refers to
imgs.tsv instead of copying it, and reports unusable image facts (missing id, truncated line, not an
image) by record guid and image id, refusing or skipping them as ``data.kb.on_missing`` says."""

from __future__ import annotations

import logging
import pickle
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from rablip.benchmarks.webqa import load_webqa
from rablip.config.schema import KBConfig
from rablip.data.images import ImageLoader
from rablip.data.kb import KBStore
from rablip.data.kb_build import build_kb_from_config
from rablip.data.webqa import ImageTSV, TSVImage
from rablip.data.webqa_kb import keep_stored_sources
from rablip.errors import DataError
from rablip.synthetic.webqa_files import write_webqa
from tests.retrieval.tiny_world import TEST_WORLD, build_world

ROOT = Path(__file__).resolve().parents[2]


def kb_config(files, store_dir: Path, **values) -> KBConfig:
    return KBConfig(format="webqa", path=str(files.train_val), extra_paths=[str(files.test)],
                    webqa_images_tsv=str(files.tsv), store_dir=str(store_dir), **values)


def webqa_world(root: Path, n_questions: int, n_test: int, seed: int):
    """A synthetic world's tiny generator checkpoint under ``root/world`` and a WebQA under ``root/webqa`` with
    its KB store in ``root/store``: ``(root, files)``."""
    build_world(root / "world", *TEST_WORLD, parts=("world", "checkpoint"))
    files = write_webqa(root / "webqa", n_questions=n_questions, n_test=n_test, seed=seed)
    build_kb_from_config(kb_config(files, root / "store"), show_progress=False)
    return root, files


def test_store_holds_every_fact_once_and_reads_images_from_the_tsv(tmp_path):
    files = write_webqa(tmp_path / "webqa", n_questions=9, n_test=3)
    store = KBStore.open(build_kb_from_config(kb_config(files, tmp_path / "store"), show_progress=False))
    ids = list(store.ids())
    assert sorted(ids) == sorted(files.text_ids + files.image_ids) and len(ids) == len(set(ids))
    # Test-file sources are there too (data.kb.extra_paths), shared facts once.
    assert {files.first_guid[i] for i in ids} & set(files.test_guids)
    # No image bytes in the store: image facts keep their id and read imgs.tsv when used.
    assert all(value is None for value in store._dataset["image_bytes"])
    with ImageTSV(files.tsv, files.lineidx) as images:
        for image_id in files.image_ids:
            item = store[image_id]
            assert isinstance(item.image, TSVImage) and item.modality == "image+text"
            assert store.image_of(item) == images.get(int(image_id))
    assert ImageLoader(store.root).load(store[files.image_ids[0]].image, files.image_ids[0]).size == (8, 8)
    assert store[files.text_ids[0]].modality == "text" and store[files.text_ids[0]].image is None
    # A pickled store (a spawned data-loader worker) opens the TSV again on its own.
    copy = pickle.loads(pickle.dumps(store))
    assert copy.image_of(copy[files.image_ids[-1]]) == store.image_of(store[files.image_ids[-1]])
    assert store.manifest["image_tsv"] == {"tsv": str(files.tsv.resolve()), "lineidx": str(files.lineidx.resolve()),
                                           "tsv_bytes": files.tsv.stat().st_size, "id_modulus": 10_000_000}


def test_a_changed_tsv_is_refused_when_an_image_is_read(tmp_path):
    files = write_webqa(tmp_path / "webqa", n_questions=3, n_test=1)
    store = KBStore.open(build_kb_from_config(kb_config(files, tmp_path / "store"), show_progress=False))
    files.tsv.write_bytes(files.tsv.read_bytes() + b"30000999\tAAAA\n")
    reopened = KBStore.open(tmp_path / "store")
    assert reopened[files.text_ids[0]].text  # text items need no image file
    with pytest.raises(DataError, match="rebuild the store"):
        reopened.image_of(reopened[files.image_ids[0]])
    # Through an image loader the failure follows data.on_bad_image: skip reports it and goes on.
    loader = ImageLoader(None, "skip")
    assert loader.load(reopened[files.image_ids[0]].image, files.image_ids[0]) is None
    assert loader.report().skipped[0].record_id == files.image_ids[0]
    del store


BROKEN = {"missing": 2, "truncated": 2, "not_image": 3}


def test_unusable_image_facts_are_refused_in_one_message_naming_guid_and_id(tmp_path):
    files = write_webqa(tmp_path / "webqa", n_questions=9, **BROKEN)
    with pytest.raises(DataError) as error:
        build_kb_from_config(kb_config(files, tmp_path / "store"), show_progress=False)
    message = str(error.value)
    total_images = len(files.image_ids) + len(files.broken)
    assert message.startswith(f"{len(files.broken)} of {total_images} WebQA image facts have no usable image")
    listed = list(files.broken)
    in_file_order = sorted(listed, key=lambda image_id: (files.first_guid[image_id], listed.index(image_id)))
    for image_id in in_file_order[:5]:  # the first five, each with the record that lists it
        assert f"record {files.first_guid[image_id]!r}, image fact {image_id}:" in message
    assert all(f"image fact {image_id}:" not in message for image_id in in_file_order[5:])
    assert "and 2 more" in message and "on_missing=skip" in message
    assert "lists only" in message and "invalid base64" in message and "not an image" in message
    assert "image file is truncated" in message
    assert not (tmp_path / "store").exists()  # nothing half-written


def test_unusable_image_facts_are_skipped_and_reported(tmp_path, caplog):
    files = write_webqa(tmp_path / "webqa", n_questions=9, **BROKEN)
    with caplog.at_level(logging.WARNING, logger="rablip.data"):
        store = KBStore.open(build_kb_from_config(kb_config(files, tmp_path / "store", on_missing="skip"),
                                                  show_progress=False))
    assert sorted(store.ids()) == sorted(files.text_ids + files.image_ids)
    assert not any(image_id in store for image_id in files.broken)
    warning = " ".join(record.getMessage() for record in caplog.records)
    assert f"{len(files.broken)} of " in warning and "Left out of the store" in warning
    first = next(iter(files.broken))
    assert f"record {files.first_guid[first]!r}, image fact {first}" in warning


def test_training_questions_drop_the_sources_a_skipping_build_left_out(tmp_path, caplog):
    files = write_webqa(tmp_path / "webqa", n_questions=6, missing=1, not_image=1)
    store = KBStore.open(build_kb_from_config(kb_config(files, tmp_path / "store", on_missing="skip"),
                                              show_progress=False))
    examples = load_webqa(files.train_val)
    with caplog.at_level(logging.WARNING, logger="rablip.data"):
        kept = keep_stored_sources(examples, store)
    assert "2 listed source(s)" in " ".join(record.getMessage() for record in caplog.records)
    for before, after in zip(examples, kept, strict=True):
        assert after.relevant_ids == before.relevant_ids  # positives are never broken here
        assert after.extra["negative_ids"] == [i for i in before.extra["negative_ids"] if i not in files.broken]
        assert all(item_id in store for item_id in after.extra["negative_ids"])
    assert sum(len(b.extra["negative_ids"]) - len(a.extra["negative_ids"]) for b, a in zip(examples, kept)) == 2


def test_build_kb_script_exits_2_with_the_report_and_no_traceback(tmp_path):
    files = write_webqa(tmp_path / "webqa", n_questions=4, missing=1, not_image=1)
    config = tmp_path / "kb.yaml"
    config.write_text(f"data:\n  dataset: webqa\n  kb:\n    format: webqa\n    path: {files.train_val}\n"
                      f"    extra_paths: [{files.test}]\n    webqa_images_tsv: {files.tsv}\n"
                      f"    store_dir: {tmp_path / 'store'}\n")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_kb.py"), "--config", str(config)],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and result.stderr.strip().splitlines()[-1].startswith("error: 2 of ")
    for image_id in files.broken:
        assert f"record {files.first_guid[image_id]!r}, image fact {image_id}" in result.stderr
    assert not (tmp_path / "store").exists()

    script = runpy.run_path(str(ROOT / "scripts" / "build_kb.py"), run_name="build_kb")
    assert script["main"](["--config", str(config), "data.kb.on_missing=skip"]) == 0
    assert len(KBStore.open(tmp_path / "store")) == len(files.text_ids) + len(files.image_ids)
