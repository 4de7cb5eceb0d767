"""WebQA's knowledge: the facts of ``WebQA_train_val.json`` / ``WebQA_test.json`` and the ``imgs.tsv`` images.

The questions are read by :mod:`rablip.benchmarks.webqa` with the record helpers here. The JSON
files are objects keyed by Guid. A train/val record carries ``Q``, ``A`` (list), ``Keywords_A``,
``Qcate``, ``split``, ``txt_posFacts`` / ``txt_negFacts`` (``{fact, url,
snippet_id, title}``) and ``img_posFacts`` / ``img_negFacts`` (``{image_id, title, caption, url,
imgUrl}``); test records have unlabelled ``txt_Facts`` / ``img_Facts`` and no answers. WebQA
questions have no image of their own: the question is text, the sources are images and texts.

Images live in ``imgs.tsv`` (``image_id<TAB>base64`` per line) with ``imgs.lineidx`` (the byte
offset of each line). As in the official baseline, image ``i`` sits on line ``i % 10_000_000``.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from rablip.data.images import StoredImage
from rablip.data.records import KBItem
from rablip.errors import DataError
from rablip.utils.io import check_type, read_json, require_keys

# The official baseline reads image i from line lineidx[i % 10_000_000].
WEBQA_ID_MODULUS = 10_000_000
TEXT_FACT_KEYS = {"snippet_id": str, "fact": str}
IMAGE_FACT_KEYS = {"image_id": int, "caption": str}
LABELLED_FACT_LISTS = ("txt_posFacts", "img_posFacts", "txt_negFacts", "img_negFacts")
UNLABELLED_FACT_LISTS = ("txt_Facts", "img_Facts")


class ImageTSV:
    """Random access to ``imgs.tsv`` by image id through ``imgs.lineidx`` (seek + readline).

    Only the offsets are held in memory. ``lineidx`` may also be the two-column
    ``image_id<TAB>offset`` form some WebQA tools write (``imgs.lineidx.new``); then ids are looked
    up in that map instead of by line position. Safe to use in data-loader workers (forked or
    spawned): each process opens its own file handle. ``image_id in tsv`` only says that the
    lineidx has a line for the id; :meth:`get` checks that the line really holds it.
    """

    def __init__(
        self, tsv_path: str | os.PathLike, lineidx_path: str | os.PathLike, id_modulus: int = WEBQA_ID_MODULUS
    ) -> None:
        self.tsv_path = Path(tsv_path)
        self.lineidx_path = Path(lineidx_path)
        self.id_modulus = id_modulus
        if not self.tsv_path.is_file():
            raise DataError(f"WebQA image TSV not found: {self.tsv_path}. Check the path in your config.")
        self.tsv_size = self.tsv_path.stat().st_size
        self.offsets: list[int] = []
        self.offset_by_id: dict[int, int] | None = None
        self._read_lineidx()
        self._handle: IO[bytes] | None = None
        self._handle_pid: int | None = None

    def _read_lineidx(self) -> None:
        try:
            lines = self.lineidx_path.read_text(encoding="ascii").splitlines()
        except FileNotFoundError:
            raise DataError(f"WebQA lineidx file not found: {self.lineidx_path}.") from None
        except UnicodeDecodeError as err:
            raise DataError(
                f"lineidx file {self.lineidx_path} holds non-ASCII bytes ({err.reason}); expected integers."
            ) from None
        two_columns = bool(lines) and "\t" in lines[0]
        if two_columns:
            self.offset_by_id = {}
        for line_number, line in enumerate(lines, start=1):
            fields = line.split("\t")
            try:
                values = [int(field) for field in fields]
            except ValueError:
                values = []
            if len(values) != (2 if two_columns else 1):
                raise DataError(
                    f"lineidx file {self.lineidx_path}, line {line_number}: expected "
                    f"{'image_id<TAB>offset' if two_columns else 'one byte offset'}, got {line!r}."
                )
            if self.offset_by_id is not None:
                self.offset_by_id[values[0]] = values[1]
            else:
                self.offsets.append(values[0])

    def __len__(self) -> int:
        return len(self.offset_by_id) if self.offset_by_id is not None else len(self.offsets)

    def _locate(self, image_id: int) -> tuple[int, str]:
        """Byte offset of ``image_id``'s line and how to name that line in messages."""
        if self.offset_by_id is not None:
            if image_id not in self.offset_by_id:
                raise DataError(f"image id {image_id} is not listed in {self.lineidx_path}.")
            offset = self.offset_by_id[image_id]
            return offset, f"line at byte offset {offset}"
        line_index = image_id % self.id_modulus
        if line_index >= len(self.offsets):
            raise DataError(
                f"image id {image_id} maps to line {line_index + 1} but {self.lineidx_path} lists only "
                f"{len(self.offsets)} lines."
            )
        offset = self.offsets[line_index]
        return offset, f"line {line_index + 1} (byte offset {offset})"

    def __contains__(self, image_id: object) -> bool:
        try:
            self._locate(int(image_id))  # type: ignore[arg-type]
        except (DataError, TypeError, ValueError):
            return False
        return True

    def __getstate__(self) -> dict[str, Any]:
        # Data-loader workers started with "spawn" receive a pickled copy: send no file handle.
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_handle_pid"] = None
        return state

    def _file(self) -> IO[bytes]:
        if self._handle is None or self._handle_pid != os.getpid():
            self._handle = self.tsv_path.open("rb")
            self._handle_pid = os.getpid()
        return self._handle

    def _read_line(self, image_id: int | str) -> tuple[bytes, str]:
        """The base64 field of ``image_id``'s line (checked to hold that id) and the line's name."""
        image_id = _as_image_id(image_id, str(self.tsv_path))
        offset, line_name = self._locate(image_id)
        where = f"{self.tsv_path}, {line_name}, image id {image_id}"
        if not 0 <= offset < self.tsv_size:
            raise DataError(
                f"{where}: the offset from {self.lineidx_path} is past the end of the TSV "
                f"({self.tsv_size} bytes). The TSV is truncated or the lineidx belongs to another file."
            )
        handle = self._file()
        handle.seek(offset)
        fields = handle.readline().rstrip(b"\r\n").split(b"\t")
        if len(fields) != 2:
            raise DataError(
                f"{where}: expected 'image_id<TAB>base64', found {len(fields)} field(s); the line is garbled."
            )
        if fields[0].strip() != str(image_id).encode():
            raise DataError(
                f"{where}: the line holds image id {fields[0][:40]!r}, not {image_id}; "
                "lineidx and TSV are out of sync or the TSV is garbled."
            )
        return fields[1], where

    def get(self, image_id: int | str) -> bytes:
        """The encoded image bytes (JPEG/PNG as stored) of ``image_id``."""
        encoded, where = self._read_line(image_id)
        try:
            return base64.b64decode(encoded, validate=True)
        except binascii.Error as err:
            raise DataError(f"{where}: invalid base64 ({err}); the line is truncated or garbled.") from None

    __getitem__ = get

    def close(self) -> None:
        """Close the TSV handle (it reopens on the next access)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> ImageTSV:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class LazyImageTSV:
    """An :class:`ImageTSV` opened on first use, so that a store whose items only refer to its images
    costs nothing until an image is read. ``expected_size`` (bytes of the TSV when the store was
    built) is checked on opening: a changed TSV would hand out other images under the same ids."""

    def __init__(self, tsv_path: str | os.PathLike, lineidx_path: str | os.PathLike,
                 id_modulus: int = WEBQA_ID_MODULUS, expected_size: int | None = None,
                 opened: ImageTSV | None = None) -> None:
        self.tsv_path = Path(tsv_path)
        self.lineidx_path = Path(lineidx_path)
        self.id_modulus = id_modulus
        self.expected_size = expected_size
        self._opened = opened

    def get(self) -> ImageTSV:
        """The opened ImageTSV (DataError when the files are gone or the TSV changed size)."""
        if self._opened is None:
            images = ImageTSV(self.tsv_path, self.lineidx_path, self.id_modulus)
            if self.expected_size is not None and images.tsv_size != self.expected_size:
                raise DataError(
                    f"{self.tsv_path} holds {images.tsv_size} bytes but held {self.expected_size} when the "
                    "knowledge-base store was built from it; rebuild the store (scripts/build_kb.py)."
                )
            self._opened = images
        return self._opened

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_opened"] = None  # each process opens its own (and reads the lineidx again)
        return state


class TSVImage(StoredImage):
    """Image ``image_id`` of WebQA's ``imgs.tsv``, read when it is decoded (see :class:`StoredImage`)."""

    def __init__(self, images: LazyImageTSV, image_id: int) -> None:
        self.images = images
        self.image_id = image_id

    def read_bytes(self) -> bytes:
        return self.images.get().get(self.image_id)

    def __str__(self) -> str:
        return f"{self.images.tsv_path} image id {self.image_id}"

    def __repr__(self) -> str:
        return f"TSVImage({str(self.images.tsv_path)!r}, {self.image_id})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, TSVImage) and other.image_id == self.image_id
                and other.images.tsv_path == self.images.tsv_path)

    def __hash__(self) -> int:
        return hash((str(self.images.tsv_path), self.image_id))


def _as_image_id(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DataError(f"{where}: image id must be an integer, got {value!r}.")
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{where}: image id must be an integer, got {value!r}.") from None


def fact_list(record: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    """The validated facts under ``key`` (empty when the record lacks it)."""
    facts = record.get(key, [])
    check_type(facts, list, where, key)
    required = TEXT_FACT_KEYS if key.startswith("txt") else IMAGE_FACT_KEYS
    for position, fact in enumerate(facts):
        fact_where = f"{where}, {key}[{position}]"
        require_keys(fact, required, fact_where)
        if "title" in fact:
            check_type(fact["title"], str, fact_where, "title")
    return facts


def fact_id(fact: dict[str, Any]) -> str:
    """A fact's KB id: a text fact's ``snippet_id``, an image fact's ``image_id`` as a string."""
    return fact["snippet_id"] if "snippet_id" in fact else str(fact["image_id"])


def read_records(json_path: Path) -> dict[str, Any]:
    """The records of a WebQA JSON file (an object keyed by Guid)."""
    what = "WebQA file"
    document = read_json(json_path, what)
    if not isinstance(document, dict):
        raise DataError(
            f"{what} {json_path}: expected a JSON object keyed by Guid, got {type(document).__name__}."
        )
    return document


def in_split(record: dict[str, Any], split: str | None, where: str) -> bool:
    """Whether ``record`` belongs to ``split`` (every record when None); a record without ``split`` is an error."""
    if split is None:
        return True
    if "split" not in record:
        raise DataError(f"{where}: no 'split' key to filter on; load this file without split=.")
    return record["split"] == split


def _kb_item(fact: dict[str, Any], images: ImageTSV | None, source: str) -> KBItem:
    title = fact.get("title", "")
    if "snippet_id" in fact:
        return KBItem(id=fact["snippet_id"], modality="text", text=fact["fact"], title=title, source=source)
    image_id = fact["image_id"]
    image = images.get(image_id) if images is not None else str(image_id)
    return KBItem(
        id=str(image_id), modality="image+text", image=image, text=fact["caption"], title=title, source=source
    )


def iter_facts(json_path: str | os.PathLike, split: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(guid, fact)`` for every fact list entry of the file's records (of ``split`` when given), in
    file order: positive, negative and unlabelled lists, text before image; repeats included."""
    json_path = Path(json_path)
    for guid, record in read_records(json_path).items():
        where = f"WebQA file {json_path}, record {guid!r}"
        require_keys(record, {}, where)
        if not in_split(record, split, where):
            continue
        for key in (*LABELLED_FACT_LISTS, *UNLABELLED_FACT_LISTS):
            for fact in fact_list(record, key, where):
                yield guid, fact


def load_webqa_kb(
    json_path: str | os.PathLike,
    images: ImageTSV | None = None,
    split: str | None = None,
    source: str = "webqa",
) -> Iterator[KBItem]:
    """Every fact of the file (positive, negative, unlabelled) as a KBItem, each id once.

    Text facts become ``text`` items (text = fact, title = title). Image facts become
    ``image+text`` items (text = caption); their image is the encoded bytes from ``images`` when
    given, else the image id as a string, to be resolved through an :class:`ImageTSV` later.
    (The store builder, :mod:`rablip.data.webqa_kb`, refers to the images instead of copying them.)
    """
    seen: set[str] = set()
    for _, fact in iter_facts(json_path, split):
        item_id = fact_id(fact)
        if item_id not in seen:
            seen.add(item_id)
            yield _kb_item(fact, images, source)
