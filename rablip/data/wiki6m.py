"""Reading OVEN's Wiki6M entity list, one entity at a time.

OVEN labels every image with one of about 6M Wikipedia entities. The list ships as
``Wiki6M_ver_1_0.jsonl.gz`` (every field: ``wikidata_id``, ``wikipedia_title``, ``wikipedia_content``,
``wikipedia_image_url``, ...) and as ``Wiki6M_ver_1_0_title_only.jsonl`` (``wikidata_id`` and
``wikipedia_title``); both are JSON lines, gzip-compressed when the name ends in ``.gz``. Only the two
fields every version carries are read here: the Wikidata QID (``"Q31"``) and the page title.

The file is streamed line by line (never loaded whole: the full version is several GB), and a
malformed file raises one :class:`~rablip.errors.DataError` naming the file and line.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from rablip.errors import DataError
from rablip.utils.io import PathLike, require_keys

WHAT = "Wiki6M entity list"
ENTITY_KEYS = {"wikidata_id": str, "wikipedia_title": str}
"""The fields read from each record, with their JSON types."""


def _open(path: Path) -> IO[bytes]:
    """``path`` opened for binary reading, decompressed when its name ends in ``.gz``."""
    try:
        return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")
    except FileNotFoundError:
        raise DataError(f"{WHAT} not found: {path}. Set data.<split>.entities to Wiki6M_ver_1_0.jsonl.gz "
                        "or Wiki6M_ver_1_0_title_only.jsonl.") from None
    except IsADirectoryError:
        raise DataError(f"{WHAT} {path} is a directory, expected a file.") from None
    except OSError as err:
        raise DataError(f"{WHAT} {path} cannot be read: {err}") from None


def iter_entities(path: PathLike) -> Iterator[tuple[int, str, str]]:
    """Stream ``(line_number, wikidata_id, wikipedia_title)`` in file order, skipping blank lines.

    Line numbers are 1-based (of the decompressed text). A line that is not JSON, not valid UTF-8,
    or lacks either field (or holds a non-string) is a DataError naming the file and line, as is a
    damaged or truncated gzip stream.
    """
    path = Path(path)
    line_number = 0
    with _open(path) as handle:
        try:
            for line_number, raw in enumerate(handle, start=1):  # noqa: B007 (read after the loop on errors)
                if not raw.strip():
                    continue
                where = f"{WHAT} {path}, line {line_number}"
                try:
                    record = json.loads(raw.decode("utf-8-sig"))
                except UnicodeDecodeError as err:
                    raise DataError(f"{where}: not valid UTF-8 (byte {err.start + 1}). Re-save the file as "
                                    "UTF-8 or download it again.") from None
                except json.JSONDecodeError as err:
                    raise DataError(f"{where}: malformed JSON (column {err.colno}): {err.msg}. Each line must "
                                    "hold one JSON object; download the file again.") from None
                require_keys(record, ENTITY_KEYS, where)
                yield line_number, record["wikidata_id"], record["wikipedia_title"]
        except (gzip.BadGzipFile, EOFError, zlib.error) as err:
            raise DataError(f"{WHAT} {path}: the gzip stream is damaged or cut short after line {line_number} "
                            f"({err}). Download the file again.") from None
