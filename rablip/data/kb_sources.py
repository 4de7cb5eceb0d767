"""Knowledge-base sources streamed as KBItems: rablip's generic JSONL and WIT-style TSV files.

Generic JSONL, one item per line: ``{"id", "text", "title", "image"}`` where ``image`` is a path
relative to the KB root, or ``"image_base64"`` with the encoded image. The modality follows from
what is there: ``image+text`` when both, ``image`` with only an image, ``text`` with only text.

WIT-style TSV (optionally gzipped): one item per row, with a column mapping that says which
column holds the id, title, text and image path-or-URL. Both readers stream; neither loads the file.
"""

from __future__ import annotations

import base64
import binascii
import csv
import gzip
import os
import posixpath
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO, Any

from rablip.data.images import resolve_under_root
from rablip.data.records import KBItem
from rablip.errors import DataError
from rablip.utils.io import check_type, iter_jsonl_with_lines, require_keys

_OPTIONAL_STRING_KEYS = ("text", "title", "image", "image_base64", "source", "modality")


def infer_modality(has_image: bool, has_text: bool) -> str | None:
    """``image+text``, ``image`` or ``text`` from what an item carries; None when it carries nothing."""
    if has_image:
        return "image+text" if has_text else "image"
    return "text" if has_text else None


def check_image_reference(image: str, where: str, kb_root: str | os.PathLike | None) -> str:
    """Accept a URL, or a path relative to the KB root that stays inside it; return it unchanged.

    Without ``kb_root`` the check is lexical (no absolute path, no ``..`` climbing out); with it,
    symbolic links are followed too (see :func:`rablip.data.images.resolve_under_root`).
    """
    if "://" in image:
        return image
    try:
        if kb_root is not None:
            resolve_under_root(kb_root, image)
        elif PurePosixPath(image).is_absolute() or PureWindowsPath(image).drive:
            raise DataError(f"image path {image!r} is absolute; it must be relative to the KB root.")
        elif posixpath.normpath(image.replace("\\", "/")).split("/")[0] == "..":
            raise DataError(f"image path {image!r} climbs out of the KB root with '..'.")
    except DataError as err:
        raise DataError(f"{where}: {err}") from None
    return image


def _jsonl_item(record: Any, where: str, source: str, kb_root: str | os.PathLike | None) -> KBItem:
    require_keys(record, {"id": (str, int)}, where)
    for key in _OPTIONAL_STRING_KEYS:
        if key in record:
            check_type(record[key], str, where, key)
    if "image" in record and "image_base64" in record:
        raise DataError(f"{where}: give either 'image' or 'image_base64', not both.")
    image: str | bytes | None = None
    if "image" in record:
        image = check_image_reference(record["image"], where, kb_root)
    elif "image_base64" in record:
        try:
            image = base64.b64decode(record["image_base64"], validate=True)
        except binascii.Error as err:
            raise DataError(f"{where}: 'image_base64' is not valid base64 ({err}).") from None
    text = record.get("text", "")
    modality = infer_modality(image is not None, bool(text))
    if modality is None:
        raise DataError(f"{where}: item {record['id']!r} has neither text nor an image.")
    if "modality" in record and record["modality"] != modality:
        raise DataError(
            f"{where}: 'modality' says {record['modality']!r} but the item's fields make it {modality!r}."
        )
    return KBItem(
        id=str(record["id"]),
        modality=modality,
        image=image,
        text=text,
        title=record.get("title", ""),
        source=record.get("source", source),
    )


def kb_item_from_record(record: Any, where: str, source: str, kb_root: str | os.PathLike | None = None) -> KBItem:
    """One generic-JSONL record as a KBItem, checked as :func:`iter_kb_jsonl` checks each line;
    ``where`` (file and line) starts every error message."""
    return _jsonl_item(record, where, source, kb_root)


def iter_kb_jsonl(
    path: str | os.PathLike, *, kb_root: str | os.PathLike | None = None, source: str | None = None
) -> Iterator[KBItem]:
    """Stream the items of a generic KB JSONL file; a repeated id raises DataError with both lines.

    ``kb_root``, when given, is where relative image paths live (checked to stay inside it).
    ``source`` defaults to the file name; a record's own ``source`` key wins.
    """
    what = "knowledge-base file"
    source = source if source is not None else Path(path).name
    first_line: dict[str, int] = {}
    for line_number, record in iter_jsonl_with_lines(path, what):
        where = f"{what} {path}, line {line_number}"
        item = _jsonl_item(record, where, source, kb_root)
        if item.id in first_line:
            raise DataError(
                f"{where}: duplicate id {item.id!r}, first on line {first_line[item.id]}. Ids must be unique."
            )
        first_line[item.id] = line_number
        yield item


@dataclass
class TsvColumns:
    """Which TSV column holds which KBItem field: a header name, or a 0-based index without header.

    ``None`` leaves the field out (no id column: ids are ``{file stem}-{row number}``). The
    defaults are the column names of the WIT release.
    """

    id: str | int | None = None
    title: str | int | None = "page_title"
    text: str | int | None = "context_page_description"
    image: str | int | None = "image_url"


def _open_text(path: Path) -> IO[str]:
    try:
        if path.suffix == ".gz":
            return gzip.open(path, "rt", encoding="utf-8", newline="")
        return path.open("r", encoding="utf-8", newline="")
    except FileNotFoundError:
        raise DataError(f"knowledge-base TSV not found: {path}. Check the path in your config.") from None


def _column_positions(columns: TsvColumns, header: list[str] | None, path: Path) -> dict[str, int]:
    positions: dict[str, int] = {}
    for field_name in ("id", "title", "text", "image"):
        column = getattr(columns, field_name)
        if column is None:
            continue
        if isinstance(column, int):
            positions[field_name] = column
        elif header is None:
            raise DataError(
                f"{path}: column {column!r} for {field_name} is a name, but has_header=False; give an index."
            )
        elif column not in header:
            raise DataError(
                f"{path}: no column {column!r} (for {field_name}) in the header; columns are {header}."
            )
        else:
            positions[field_name] = header.index(column)
    if "text" not in positions and "image" not in positions:
        raise DataError(f"{path}: the column mapping names neither a text nor an image column.")
    return positions


def _rows(reader: Any, path: Path) -> Iterator[list[str]]:
    """Rows of ``reader`` with decoding and CSV errors turned into DataErrors naming the line."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except UnicodeDecodeError:
            raise DataError(
                f"{path}: not valid UTF-8 near line {reader.line_num + 1}. Re-save it as UTF-8."
            ) from None
        except csv.Error as err:
            raise DataError(f"{path}, line {reader.line_num}: cannot parse the TSV row ({err}).") from None
        yield row


def iter_kb_tsv(
    path: str | os.PathLike,
    columns: TsvColumns | None = None,
    *,
    has_header: bool = True,
    kb_root: str | os.PathLike | None = None,
    source: str | None = None,
) -> Iterator[KBItem]:
    """Stream KBItems from a WIT-style TSV (``.tsv`` or ``.tsv.gz``), one per row.

    Empty cells count as absent; a row with neither text nor image raises DataError, as does a
    repeated id when an id column is mapped.
    """
    path = Path(path)
    columns = columns if columns is not None else TsvColumns()
    source = source if source is not None else path.name
    id_prefix = path.name.split(".")[0]
    # WIT page descriptions exceed csv's default 128 KiB field limit.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with _open_text(path) as handle:
        reader = csv.reader(handle, delimiter="\t")
        rows = _rows(reader, path)
        header = next(rows, None) if has_header else None
        if has_header and header is None:
            raise DataError(f"{path}: the file is empty; expected a header row (or pass has_header=False).")
        positions = _column_positions(columns, header, path)
        first_line: dict[str, int] = {}
        for row_number, row in enumerate(rows):
            line = reader.line_num
            where = f"knowledge-base TSV {path}, line {line}"
            if not row:
                continue
            if max(positions.values()) >= len(row):
                raise DataError(
                    f"{where}: {len(row)} column(s), but the mapping reads column {max(positions.values())}."
                )
            cells = {name: row[position] for name, position in positions.items()}
            if "id" in cells and not cells["id"]:
                raise DataError(f"{where}: the id column is empty.")
            item_id = cells.get("id") or f"{id_prefix}-{row_number}"
            image = cells.get("image") or None
            if image is not None:
                check_image_reference(image, where, kb_root)
            text = cells.get("text", "")
            modality = infer_modality(image is not None, bool(text))
            if modality is None:
                raise DataError(f"{where}: row has neither text nor an image.")
            if "id" in cells:  # generated ids are unique by construction
                if item_id in first_line:
                    raise DataError(
                        f"{where}: duplicate id {item_id!r}, first on line {first_line[item_id]}."
                    )
                first_line[item_id] = line
            yield KBItem(
                id=item_id,
                modality=modality,
                image=image,
                text=text,
                title=cells.get("title", ""),
                source=source,
            )
