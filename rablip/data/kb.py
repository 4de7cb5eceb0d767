"""The on-disk knowledge-base store: Arrow data (``datasets``), memory-mapped, looked up by item id.

A store directory holds what ``datasets.Dataset.save_to_disk`` writes (Arrow shards, one row per
:class:`~rablip.data.records.KBItem`), the id index of :mod:`rablip.data.kb_index`, and
``kb_manifest.json``. :func:`build_kb_store` streams items into a temporary sibling directory and
renames it into place only when everything, the manifest last, is written: an interrupted build
leaves no directory at the target, and :meth:`KBStore.open` refuses any directory without a
manifest. Memory stays flat in the number of items: rows are written in batches, duplicate ids are
found by sorting 64-bit id hashes, and opening maps files instead of reading them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
from tqdm.auto import tqdm

from rablip.data.images import resolve_under_root
from rablip.data.kb_index import HASHES_FILE, ID_HASH_NAME, ROWS_FILE, IdIndex
from rablip.data.records import KBItem
from rablip.errors import DataError, RablipError
from rablip.utils.io import atomic_write_json, replace_directory

SCHEMA_VERSION = 1
"""Version of the store layout; a store of another version is refused on open (rebuild it)."""
MANIFEST_NAME = "kb_manifest.json"
STORE_FORMAT = "rablip-kb-store"
KB_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "modality": datasets.Value("string"),
        "image_path": datasets.Value("string"),
        "image_bytes": datasets.Value("binary"),
        "text": datasets.Value("string"),
        "title": datasets.Value("string"),
        "source": datasets.Value("string"),
    }
)
_ID_BATCH_ROWS = 65_536
_WRITE_BATCH_ROWS = 10_000
DATA_FILE = "items.arrow"
"""The store's data: one Arrow stream file, memory-mapped when the store is opened."""
_WRITE_BATCH_BYTES = 64 * 2**20


class KBItemNotFoundError(DataError, KeyError):
    """An item id that the store does not hold (a KeyError too, so ``dict``-style code works)."""

    def __str__(self) -> str:
        # KeyError would print the repr of the message, quotes and escapes included.
        return str(self.args[0]) if self.args else ""


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


def _is_url(image_reference: str) -> bool:
    return "://" in image_reference


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


def _item_row(item: Any, position: int, root: Path | None, where: str) -> dict[str, Any]:
    """One Arrow row of a KBItem, its image path checked against the root."""
    if not isinstance(item, KBItem):
        raise DataError(f"{where}: item #{position} is a {type(item).__name__}, not a KBItem.")
    image_path: str | None = None
    image_bytes: bytes | None = None
    if isinstance(item.image, bytes):
        image_bytes = item.image
    elif item.image is not None:
        image_path = os.fspath(item.image)
        # URLs (WIT lists them) are kept as given; image_of refuses them, rablip does not download.
        if not _is_url(image_path):
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
    items: Iterable[KBItem], arrow_path: Path, root: Path | None, where: str, total: int | None, show_progress: bool
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
            row = _item_row(item, position, root, where)
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


def _manifest(count: int, started: float, source_name: str, root: Path | None) -> dict[str, Any]:
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
    DataError naming the item, as are duplicate ids and non-KBItem values. ``total`` (the item
    count, when known) sizes the progress bar. ``source_name`` is recorded in the manifest and
    names the input in error messages. The store is built in a temporary sibling directory and
    renamed into place at the end, so a failed build leaves ``out_dir`` as it was. An existing
    non-empty ``out_dir`` is refused unless ``overwrite`` is set and it is itself a store (has a
    manifest); then the new store replaces it once complete.
    """
    started = time.monotonic()
    out_dir = Path(out_dir)
    root = Path(kb_root).resolve() if kb_root is not None and os.fspath(kb_root) != "" else None
    where = f"knowledge base {source_name!r}" if source_name else "knowledge base"
    _prepare_target(out_dir, overwrite)
    work_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        built_dir = work_dir / "store"
        with _datasets_progress_bars_off():
            dataset = _write_rows(items, work_dir / DATA_FILE, root, where, total, show_progress)
            if len(dataset) == 0:
                raise DataError(f"{where}: no items to store; check the input file and its format.")
            id_column = dataset.select_columns(["id"])
            index = IdIndex.build(
                (batch["id"] for batch in id_column.iter(batch_size=_ID_BATCH_ROWS)),
                len(dataset),
                lambda row: id_column[row]["id"],
                where,
            )
            # The Arrow file written above becomes the store's data file as it is: its record batches
            # hold up to _WRITE_BATCH_ROWS rows. (datasets' save_to_disk would rewrite it in batches
            # of 100 rows for a binary column, and opening a store costs memory per batch.)
            built_dir.mkdir()
            os.replace(work_dir / DATA_FILE, built_dir / DATA_FILE)
        index.save(built_dir)
        # The manifest is written last: its presence is what marks a store as complete.
        atomic_write_json(built_dir / MANIFEST_NAME, _manifest(len(dataset), started, source_name, root))
        replace_directory(built_dir, out_dir, work_dir / "replaced")
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return out_dir


def _read_manifest(directory: Path) -> dict[str, Any]:
    """The parsed and checked manifest of a store directory."""
    if not directory.is_dir():
        raise DataError(f"no knowledge-base store at {directory}: not a directory. Build one with scripts/build_kb.py.")
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.is_file():
        raise DataError(
            f"{directory} is not a finished knowledge-base store: {MANIFEST_NAME} is missing (an interrupted "
            "build, or not a store directory). Build it again with scripts/build_kb.py."
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{manifest_path} is not valid JSON ({err}); rebuild the store.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT:
        raise DataError(f"{manifest_path} is not a rablip knowledge-base manifest; rebuild the store.")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise DataError(
            f"{manifest_path}: store schema version {manifest.get('schema_version')!r}, but this rablip reads "
            f"version {SCHEMA_VERSION}. Rebuild the store with scripts/build_kb.py."
        )
    id_hash = manifest.get("id_index", {}).get("hash")
    if id_hash != ID_HASH_NAME:
        raise DataError(f"{manifest_path}: id index hash {id_hash!r} is not {ID_HASH_NAME!r}; rebuild the store.")
    return manifest


class KBStore:
    """A built knowledge-base store, memory-mapped: random access by item id and batched iteration.

    Open with :meth:`KBStore.open`. ``store[item_id]`` returns one :class:`KBItem`,
    :meth:`get_many` several in the order asked, :meth:`ids` and :meth:`iter_batches` walk the
    store in row order, and :meth:`image_of` turns an item's image into a checked path or bytes.
    """

    def __init__(
        self, directory: Path, dataset: datasets.Dataset, index: IdIndex, manifest: dict[str, Any], root: Path | None
    ) -> None:
        self.directory = directory
        self.manifest = manifest
        self._dataset = dataset
        self._index = index
        self._root = root

    @classmethod
    def open(cls, directory: str | os.PathLike, *, root: str | os.PathLike | None = None) -> KBStore:
        """Open the store at ``directory``; ``root`` replaces the KB root recorded at build time.

        A directory without a valid manifest, or whose data and index disagree with it, is a
        DataError that says to rebuild.
        """
        directory = Path(directory)
        manifest = _read_manifest(directory)
        try:
            data_file = manifest.get("data_file")
            if data_file:
                dataset = datasets.Dataset.from_file(str(directory / data_file))
            else:  # a store written with datasets' save_to_disk layout
                dataset = datasets.load_from_disk(str(directory), keep_in_memory=False)
            index = IdIndex.load(directory)
        except (OSError, ValueError) as err:
            raise DataError(f"knowledge-base store {directory} cannot be read ({err}); rebuild it.") from None
        if not isinstance(dataset, datasets.Dataset) or set(dataset.column_names) != set(KB_FEATURES):
            raise DataError(f"knowledge-base store {directory} does not hold the expected columns; rebuild it.")
        count = manifest.get("count")
        if len(dataset) != count or len(index) != count or index.rows.shape[0] != count:
            raise DataError(
                f"knowledge-base store {directory}: the manifest says {count} items but the data holds "
                f"{len(dataset)} and the id index {len(index)}; the store is damaged, rebuild it."
            )
        recorded_root = manifest.get("kb_root")
        if root is not None and os.fspath(root) != "":
            chosen_root: Path | None = Path(root).resolve()
        else:
            chosen_root = Path(recorded_root) if recorded_root else None
        return cls(directory, dataset, index, manifest, chosen_root)

    @property
    def root(self) -> Path | None:
        """The KB root that relative image paths resolve under (None when the store has none)."""
        return self._root

    def __len__(self) -> int:
        return len(self._dataset)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled (spawned data-loader workers) as "open this directory again": the memory-mapped
        # index and data would otherwise be copied into the pickle.
        return (_reopen, (str(self.directory), str(self._root) if self._root is not None else None))

    def __repr__(self) -> str:
        return f"KBStore({str(self.directory)!r}, items={len(self)})"

    def _row_of(self, item_id: str) -> int | None:
        """The row holding ``item_id``, or None."""
        for row in self._index.candidate_rows(item_id):
            if self._dataset[int(row)]["id"] == item_id:
                return int(row)
        return None

    def _not_found(self, item_id: Any) -> KBItemNotFoundError:
        return KBItemNotFoundError(
            f"item id {item_id!r} is not in the knowledge-base store {self.directory} ({len(self)} items). "
            "Check that the retriever index was built from this store."
        )

    def __contains__(self, item_id: object) -> bool:
        return isinstance(item_id, str) and self._row_of(item_id) is not None

    def __getitem__(self, item_id: str) -> KBItem:
        if not isinstance(item_id, str):
            raise self._not_found(item_id)
        for row in self._index.candidate_rows(item_id):
            record = self._dataset[int(row)]
            if record["id"] == item_id:
                return _item_from_record(record)
        raise self._not_found(item_id)

    def get_many(self, item_ids: Sequence[str]) -> list[KBItem]:
        """The items of ``item_ids`` in the order given (repeats allowed), read in one Arrow gather."""
        item_ids = list(item_ids)
        for item_id in item_ids:
            if not isinstance(item_id, str):
                raise self._not_found(item_id)
        rows = [int(row) for row in self._index.first_candidates(item_ids)]
        for position, item_id in enumerate(item_ids):
            if rows[position] < 0:
                raise self._not_found(item_id)
        batch = self._dataset[rows] if rows else {name: [] for name in KB_FEATURES}
        items = []
        for position, item_id in enumerate(item_ids):
            record = {name: batch[name][position] for name in KB_FEATURES}
            if record["id"] != item_id:
                # The first row with this id's hash belongs to another id (a hash collision).
                row = self._row_of(item_id)
                if row is None:
                    raise self._not_found(item_id)
                record = self._dataset[row]
            items.append(_item_from_record(record))
        return items

    def ids_at(self, rows: Sequence[int]) -> list[str]:
        """The ids stored in ``rows`` (row numbers in ``[0, len(store))``), in that order."""
        rows = [int(r) for r in rows]
        return list(self._dataset.select_columns(["id"])[rows]["id"]) if rows else []

    def rows_of(self, item_ids: Sequence[str]) -> list[int]:
        """The row of each of ``item_ids`` (KBItemNotFoundError for an id the store does not hold)."""
        item_ids = list(item_ids)
        for item_id in item_ids:
            if not isinstance(item_id, str):
                raise self._not_found(item_id)
        rows = [int(row) for row in self._index.first_candidates(item_ids)] if item_ids else []
        checked = iter(self.ids_at([row for row in rows if row >= 0]))
        for position, item_id in enumerate(item_ids):
            if rows[position] < 0 or next(checked) != item_id:
                # no row with this id's hash, or the first such row holds another id (a hash collision)
                row = self._row_of(item_id)
                if row is None:
                    raise self._not_found(item_id)
                rows[position] = row
        return rows

    def ids(self, batch_size: int = _ID_BATCH_ROWS) -> Iterator[str]:
        """Every item id in row order, read ``batch_size`` rows at a time."""
        for batch in self._dataset.select_columns(["id"]).iter(batch_size=batch_size):
            yield from batch["id"]

    def iter_batches(self, batch_size: int = 1024) -> Iterator[list[KBItem]]:
        """All items in row order as lists of at most ``batch_size`` items."""
        if batch_size < 1:
            raise DataError(f"iter_batches: batch_size must be >= 1, got {batch_size}.")
        for batch in self._dataset.iter(batch_size=batch_size):
            count = len(batch["id"])
            yield [_item_from_record({name: batch[name][i] for name in KB_FEATURES}) for i in range(count)]

    def image_of(self, item: KBItem) -> Path | bytes | None:
        """The item's image: encoded bytes, or its path resolved under the root; None for text items.

        A path that leaves the root (``..``, absolute, a symbolic link outside) is a DataError, and
        so is an image URL (stored as given at build time; rablip never downloads).
        """
        if item.image is None or isinstance(item.image, bytes):
            return item.image
        if _is_url(item.image):
            raise DataError(
                f"item {item.id!r} of the knowledge-base store {self.directory} has the image URL {item.image!r}; "
                "rablip does not download images. Fetch them and rebuild the store with local paths."
            )
        if self._root is None:
            raise DataError(
                f"item {item.id!r} of the knowledge-base store {self.directory} has the image path {item.image!r} "
                "but the store has no KB root; open it with root=<KB root directory>."
            )
        try:
            return resolve_under_root(self._root, item.image)
        except RablipError as err:
            raise DataError(f"knowledge-base store {self.directory}, item {item.id!r}: {err}") from None


def _reopen(directory: str, root: str | None) -> KBStore:
    """Unpickling helper: open the store directory again with the same root."""
    return KBStore.open(directory, root=root)


def _item_from_record(record: dict[str, Any]) -> KBItem:
    """The KBItem of one stored row."""
    image = record["image_path"] if record["image_path"] is not None else record["image_bytes"]
    return KBItem(
        id=record["id"],
        modality=record["modality"],
        image=image,
        text=record["text"],
        title=record["title"],
        source=record["source"],
    )
