"""Write a knowledge-base store: stream :class:`~rablip.data.records.KBItem` values into the layout
that :class:`rablip.data.kb.KBStore` opens.

:func:`build_kb_store` writes the Arrow data file, the id index (:mod:`rablip.data.kb_index`) and
``kb_manifest.json`` into a work directory beside the target and renames it into place once the
manifest, written last, is there (:func:`rablip.utils.artefacts.build_beside`): an interrupted
build leaves no directory at the target, and an older store is replaced only by a complete one.
Memory stays flat in the number of items: rows are written in batches and duplicate ids are found
by sorting 64-bit id hashes.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
from tqdm.auto import tqdm

from rablip.data.images import resolve_under_root
from rablip.data.kb import (
    DATA_FILE,
    ID_BATCH_ROWS,
    KB_FEATURES,
    MANIFEST_NAME,
    SCHEMA_VERSION,
    STORE_FORMAT,
    is_image_url,
)
from rablip.data.kb_index import HASHES_FILE, ID_HASH_NAME, ROWS_FILE, IdIndex
from rablip.data.records import KBItem
from rablip.data.webqa import LazyImageTSV, TSVImage
from rablip.errors import DataError
from rablip.utils.artefacts import build_beside

_WRITE_BATCH_ROWS = 10_000
_WRITE_BATCH_BYTES = 64 * 2**20


@contextlib.contextmanager
def _datasets_progress_bars_off() -> Iterator[None]:
    """Silence the ``datasets`` bars during a build (ours counts items); restore them after."""
    were_disabled = datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        yield
    finally:
        if not were_disabled:
            datasets.utils.enable_progress_bars()


def _check_image_path(item_id: str, image_path: str, position: int, root: Path | None, where: str) -> None:
    """Refuse a relative image path without a root, or one that leaves the root."""
    if root is None:
        raise DataError(
            f"{where}: item {item_id!r} (#{position}) has the image path {image_path!r} but no KB root "
            "was given; set the root (data.kb.root) that relative image paths are under."
        )
    try:
        resolve_under_root(root, image_path)
    except DataError as err:
        raise DataError(f"{where}: item {item_id!r} (#{position}): {err}") from None


class _ImageFile:
    """The one image container file (WebQA's imgs.tsv) a store's items refer to, if any.

    Its items keep only the image id in ``image_path``; the manifest's ``image_tsv`` entry says where
    the ids are read (:class:`rablip.data.kb.KBStore`). A store refers to one such file and holds
    no image paths besides, so that every ``image_path`` means one thing.
    """

    def __init__(self) -> None:
        self.tsv: LazyImageTSV | None = None
        self.paths = 0

    def note(self, item_id: str, image: Any, where: str) -> None:
        if isinstance(image, TSVImage):
            if self.tsv is None:
                self.tsv = image.images
            elif image.images.tsv_path != self.tsv.tsv_path:
                raise DataError(f"{where}: item {item_id!r} refers to images in {image.images.tsv_path}, others to "
                                f"{self.tsv.tsv_path}; a store refers to one image file.")
        elif isinstance(image, str):
            self.paths += 1
        if self.tsv is not None and self.paths:
            raise DataError(f"{where}: item {item_id!r}: the items mix image paths and images of "
                            f"{self.tsv.tsv_path}; a store holds one kind of image reference.")

    def manifest_entry(self) -> dict[str, Any] | None:
        if self.tsv is None:
            return None
        return {"tsv": str(self.tsv.tsv_path.resolve()), "lineidx": str(self.tsv.lineidx_path.resolve()),
                "tsv_bytes": self.tsv.expected_size, "id_modulus": self.tsv.id_modulus}


def _item_row(item: Any, position: int, root: Path | None, where: str, image_file: _ImageFile) -> dict[str, Any]:
    """One Arrow row of a KBItem, its image path checked against the root (a TSV image: its id)."""
    if not isinstance(item, KBItem):
        raise DataError(f"{where}: item #{position} is a {type(item).__name__}, not a KBItem.")
    image_path: str | None = None
    image_bytes: bytes | None = None
    image_file.note(item.id, item.image, where)
    if isinstance(item.image, bytes):
        image_bytes = item.image
    elif isinstance(item.image, TSVImage):
        image_path = str(item.image.image_id)
    elif item.image is not None:
        image_path = os.fspath(item.image)
        # URLs (WIT lists them) are kept as given; image_of refuses them, rablip does not download.
        if not is_image_url(image_path):
            _check_image_path(item.id, image_path, position, root, where)
    return {
        "id": item.id,
        "modality": item.modality,
        "image_path": image_path,
        "image_bytes": image_bytes,
        "text": item.text,
        "title": item.title,
        "source": item.source,
    }


def _write_rows(
    items: Iterable[KBItem], arrow_path: Path, root: Path | None, where: str, total: int | None, show_progress: bool,
    image_file: _ImageFile,
) -> datasets.Dataset:
    """Write items as Arrow record batches to ``arrow_path`` and memory-map them as a Dataset.

    Rows go to Arrow column by column, a batch at a time (bounded by rows and by bytes, so image
    bytes do not pile up); this is several times faster than ``Dataset.from_generator``, which
    encodes every example on its own through ``Features.encode_example``.
    """
    schema = KB_FEATURES.arrow_schema
    columns: dict[str, list[Any]] = {name: [] for name in KB_FEATURES}
    batch_bytes = 0
    with (
        pa.OSFile(str(arrow_path), "wb") as sink,
        pa.ipc.new_stream(sink, schema) as writer,
        tqdm(total=total, disable=not show_progress, unit=" items", desc="kb store") as bar,
    ):
        for position, item in enumerate(items):
            row = _item_row(item, position, root, where, image_file)
            for name, value in row.items():
                columns[name].append(value)
            batch_bytes += len(item.text) + len(row["image_bytes"] or b"")
            if len(columns["id"]) >= _WRITE_BATCH_ROWS or batch_bytes >= _WRITE_BATCH_BYTES:
                writer.write_batch(pa.RecordBatch.from_pydict(columns, schema=schema))
                bar.update(len(columns["id"]))
                columns = {name: [] for name in KB_FEATURES}
                batch_bytes = 0
        if columns["id"]:
            writer.write_batch(pa.RecordBatch.from_pydict(columns, schema=schema))
            bar.update(len(columns["id"]))
    return datasets.Dataset.from_file(str(arrow_path))


def _prepare_target(out_dir: Path, overwrite: bool) -> None:
    """Refuse an existing non-empty target unless ``overwrite`` and it is a store; make the parent."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"knowledge-base store target {out_dir} exists and is not a directory.")
    occupied = out_dir.is_dir() and any(out_dir.iterdir())
    if occupied and overwrite and not (out_dir / MANIFEST_NAME).is_file():
        raise DataError(
            f"knowledge-base store directory {out_dir} is not empty and holds no {MANIFEST_NAME}: it is not "
            "a store, so overwrite will not delete it. Choose another store_dir."
        )
    if occupied and not overwrite:
        raise DataError(
            f"knowledge-base store directory {out_dir} already exists and is not empty. Choose another "
            "store_dir or delete the old store first."
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)


def _manifest(count: int, started: float, source_name: str, root: Path | None,
              image_tsv: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "format": STORE_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "count": count,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(time.monotonic() - started, 3),
        "source": source_name,
        "kb_root": str(root) if root is not None else None,
        "id_index": {"hash": ID_HASH_NAME, "hashes_file": HASHES_FILE, "rows_file": ROWS_FILE},
        "data_file": DATA_FILE,
        "columns": list(KB_FEATURES),
        "image_tsv": image_tsv,
    }


def build_kb_store(
    items: Iterable[KBItem],
    out_dir: str | os.PathLike,
    *,
    kb_root: str | os.PathLike | None = None,
    total: int | None = None,
    show_progress: bool = True,
    source_name: str = "",
    overwrite: bool = False,
) -> Path:
    """Stream ``items`` into a new store at ``out_dir`` and return its path.

    ``kb_root`` is the directory that relative image paths are under; a path that leaves it is a
    DataError naming the item, as are duplicate ids and non-KBItem values. Items whose image is a
    :class:`~rablip.data.webqa.TSVImage` are stored by image id, not copied; the manifest's
    ``image_tsv`` says which TSV (and its size) the ids are read from. ``total`` (the item
    count, when known) sizes the progress bar. ``source_name`` is recorded in the manifest and
    names the input in error messages. The store is built in a work directory beside ``out_dir`` and
    renamed into place once its manifest is written, so a failed build leaves ``out_dir`` as it was. An existing
    non-empty ``out_dir`` is refused unless ``overwrite`` is set and it is itself a store (has a
    manifest); then the new store replaces it once complete.
    """
    started = time.monotonic()
    out_dir = Path(out_dir)
    root = Path(kb_root).resolve() if kb_root is not None and os.fspath(kb_root) != "" else None
    where = f"knowledge base {source_name!r}" if source_name else "knowledge base"
    _prepare_target(out_dir, overwrite)
    with build_beside(out_dir, MANIFEST_NAME) as build, _datasets_progress_bars_off():
        image_file = _ImageFile()
        dataset = _write_rows(items, build.path / DATA_FILE, root, where, total, show_progress, image_file)
        if len(dataset) == 0:
            raise DataError(f"{where}: no items to store; check the input file and its format.")
        # The Arrow file written above is the store's data file as it is: its record batches hold up
        # to _WRITE_BATCH_ROWS rows. (datasets' save_to_disk would rewrite it in batches of 100 rows
        # for a binary column, and opening a store costs memory per batch.)
        id_column = dataset.select_columns(["id"])
        index = IdIndex.build(
            (batch["id"] for batch in id_column.iter(batch_size=ID_BATCH_ROWS)),
            len(dataset),
            lambda row: id_column[row]["id"],
            where,
        )
        index.save(build.path)
        build.commit(_manifest(len(dataset), started, source_name, root, image_file.manifest_entry()))
    return out_dir
