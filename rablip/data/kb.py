"""The on-disk knowledge-base store: Arrow data (``datasets``), memory-mapped, looked up by item id.

A store directory holds ``items.arrow`` (one Arrow stream, one row per
:class:`~rablip.data.records.KBItem`), the id index of :mod:`rablip.data.kb_index`, and
``kb_manifest.json``, written last. :mod:`rablip.data.kb_writer` builds stores; this module holds
their layout and :class:`KBStore`, which opens one. :meth:`KBStore.open` refuses any directory
without a valid manifest, and maps files instead of reading them.

A store built from WebQA refers to its images instead of holding them: the manifest's ``image_tsv``
names ``imgs.tsv`` and ``imgs.lineidx`` (and the TSV's size then), ``image_path`` holds the image
id, and items carry a :class:`~rablip.data.webqa.TSVImage` that reads the image when it is decoded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets

from rablip.data.images import resolve_under_root
from rablip.data.kb_index import ID_HASH_NAME, IdIndex
from rablip.data.records import KBItem
from rablip.data.webqa import LazyImageTSV, TSVImage
from rablip.errors import DataError, RablipError

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
ID_BATCH_ROWS = 65_536
"""Rows of the id column read at a time when walking a store's ids."""
DATA_FILE = "items.arrow"
"""The store's data: one Arrow stream file, memory-mapped when the store is opened."""


class KBItemNotFoundError(DataError, KeyError):
    """An item id that the store does not hold (a KeyError too, so ``dict``-style code works)."""

    def __str__(self) -> str:
        # KeyError would print the repr of the message, quotes and escapes included.
        return str(self.args[0]) if self.args else ""


def is_image_url(image_reference: str) -> bool:
    """Whether an item's image reference is a URL (kept as given; rablip never downloads)."""
    return "://" in image_reference


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
        tsv = manifest.get("image_tsv")
        self._image_tsv = (LazyImageTSV(tsv["tsv"], tsv["lineidx"], int(tsv["id_modulus"]), tsv.get("tsv_bytes"))
                           if tsv else None)

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
                return self._item(record)
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
            items.append(self._item(record))
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

    def ids(self, batch_size: int = ID_BATCH_ROWS) -> Iterator[str]:
        """Every item id in row order, read ``batch_size`` rows at a time."""
        for batch in self._dataset.select_columns(["id"]).iter(batch_size=batch_size):
            yield from batch["id"]

    def iter_batches(self, batch_size: int = 1024) -> Iterator[list[KBItem]]:
        """All items in row order as lists of at most ``batch_size`` items."""
        if batch_size < 1:
            raise DataError(f"iter_batches: batch_size must be >= 1, got {batch_size}.")
        for batch in self._dataset.iter(batch_size=batch_size):
            count = len(batch["id"])
            yield [self._item({name: batch[name][i] for name in KB_FEATURES}) for i in range(count)]

    def _item(self, record: dict[str, Any]) -> KBItem:
        """The KBItem of one stored row (a WebQA store's image id becomes a :class:`TSVImage`)."""
        if self._image_tsv is not None and record["image_path"] is not None:
            try:
                image_id = int(record["image_path"])
            except ValueError:
                raise DataError(f"knowledge-base store {self.directory}, item {record['id']!r}: image reference "
                                f"{record['image_path']!r} is not an imgs.tsv image id; rebuild the store.") from None
            record = {**record, "image_path": None, "image_bytes": TSVImage(self._image_tsv, image_id)}
        return _item_from_record(record)

    def image_of(self, item: KBItem) -> Path | bytes | None:
        """The item's image: encoded bytes, or its path resolved under the root; None for text items.

        A :class:`TSVImage` (WebQA store) is read now, its bytes returned. A path that leaves the root
        (``..``, absolute, a symbolic link outside) is a DataError, and so is an image URL (stored
        as given at build time; rablip never downloads).
        """
        if item.image is None or isinstance(item.image, bytes):
            return item.image
        if isinstance(item.image, TSVImage):
            try:
                return item.image.read_bytes()
            except DataError as err:
                raise DataError(f"knowledge-base store {self.directory}, item {item.id!r}: {err}") from None
        if is_image_url(item.image):
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
