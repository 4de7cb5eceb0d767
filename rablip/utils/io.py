"""Reading JSON / JSONL with errors that point at the bad byte, and writing files atomically.

Every reader turns a malformed file into a :class:`~rablip.errors.DataError` that names the file
and the position (line and column for JSON, line for JSONL), so a user can open the file and fix it.
Writers go through a temporary file in the target directory, ``fsync`` and ``os.replace``, so a
crash never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from rablip.errors import DataError

PathLike = str | os.PathLike

# Read once at import: os.umask can only be read by setting it.
_UMASK = os.umask(0)
os.umask(_UMASK)

KeySpec = Mapping[str, type | tuple[type, ...] | None] | Iterable[str]
"""Keys a record must carry: a list of names, or a mapping from name to the expected type(s)
(``None`` means any type)."""


def _line_and_column(data: bytes, offset: int) -> tuple[int, int]:
    """1-based line and column of byte ``offset`` in ``data``."""
    line = data.count(b"\n", 0, offset) + 1
    column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
    return line, column


@contextmanager
def reading(path: PathLike, what: str) -> Iterator[None]:
    """Within the block, opening or reading ``path`` (a ``what``: "KB file", "split CSV", ...) fails with one
    DataError that says what is wrong with it (missing, a directory, unreadable) instead of an OSError."""
    try:
        yield
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}. Check the path in your config.") from None
    except IsADirectoryError:
        raise DataError(f"{what} {path} is a directory, expected a file.") from None
    except OSError as err:
        raise DataError(f"{what} {path} cannot be read: {err}") from None


def _read_bytes(path: Path, what: str) -> bytes:
    with reading(path, what):
        return path.read_bytes()


def _decode_utf8(data: bytes, path: Path, what: str, line: int | None = None) -> str:
    """Decode UTF-8 (a leading BOM is tolerated); a bad byte becomes a DataError with its line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        if line is None:
            bad_line, bad_column = _line_and_column(data, err.start)
            position = f"line {bad_line}, column {bad_column}"
        else:
            position = f"line {line}, byte {err.start + 1}"
        raise DataError(
            f"{what} {path}: not valid UTF-8 at {position} (byte 0x{data[err.start]:02x}). "
            "Re-save the file as UTF-8."
        ) from None


def read_json(path: PathLike, what: str = "JSON file") -> Any:
    """Parse a whole JSON file; ``what`` names the file's role in error messages."""
    path = Path(path)
    text = _decode_utf8(_read_bytes(path, what), path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{what} {path}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}. "
            "Fix the file or download it again."
        ) from None


def iter_jsonl_with_lines(path: PathLike, what: str = "JSONL file") -> Iterator[tuple[int, Any]]:
    """Stream ``(line_number, record)`` pairs from a JSON-lines file, skipping blank lines.

    The file is read line by line, never whole; line numbers are 1-based.
    """
    path = Path(path)
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}. Check the path in your config.") from None
    except OSError as err:
        raise DataError(f"{what} {path} cannot be read: {err}") from err
    with handle:
        for line_number, raw_line in enumerate(handle, start=1):
            text = _decode_utf8(raw_line, path, what, line=line_number)
            if not text.strip():
                continue
            try:
                yield line_number, json.loads(text)
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{what} {path}: malformed JSON on line {line_number} (column {err.colno}): "
                    f"{err.msg}. Each line must hold one complete JSON value."
                ) from None


def iter_jsonl(path: PathLike, what: str = "JSONL file") -> Iterator[Any]:
    """Stream the records of a JSON-lines file (see :func:`iter_jsonl_with_lines`)."""
    for _, record in iter_jsonl_with_lines(path, what):
        yield record


def read_jsonl(path: PathLike, what: str = "JSONL file") -> list[Any]:
    """All records of a JSON-lines file as a list."""
    return list(iter_jsonl(path, what))


def atomic_write(path: PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(handle)`` on a temporary binary file beside ``path`` and rename it onto ``path``, so
    that readers see either the old file or the whole new one (the temporary file goes on failure)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; give the file the mode a plain open() would (or the old file's).
        os.chmod(tmp_name, _target_mode(path))
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`); newlines are written as given."""
    data = text.encode(encoding)
    atomic_write(path, lambda handle: handle.write(data))


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def replace_directory(built: PathLike, target: PathLike, aside: PathLike,
                      remove: Callable[[Path], None] = _remove_tree) -> None:
    """Rename the finished directory ``built`` onto ``target``.

    An existing ``target`` is renamed to ``aside`` first and deleted (with ``remove``) only once
    ``built`` is in place, so a process killed at any point leaves a whole directory, old or new, at
    ``target`` or at ``aside``. A leftover ``aside`` is removed before; if the last rename fails, the
    old directory is put back.
    """
    built, target, aside = Path(built), Path(target), Path(aside)
    remove(aside)
    had_old = target.exists()
    if had_old:
        os.replace(target, aside)
    try:
        os.replace(built, target)
    except OSError:
        if had_old:
            os.replace(aside, target)
        raise
    if had_old:
        remove(aside)


def _target_mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_UMASK


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable; not possible on every platform, so best effort."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def atomic_write_json(path: PathLike, obj: Any, indent: int | None = 2) -> None:
    """Serialize ``obj`` (before touching the disk, so a bad object writes nothing) and write it atomically."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False)
    atomic_write_text(path, text + "\n")


def _type_names(expected: type | tuple[type, ...]) -> str:
    types = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join(_JSON_NAMES.get(t, t.__name__) for t in types)


_JSON_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "list", dict: "object"}


def is_instance_strict(value: Any, expected: type | tuple[type, ...]) -> bool:
    """``isinstance`` that does not let a JSON boolean pass for an integer or a number."""
    types = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


def check_type(value: Any, expected: type | tuple[type, ...], where: str, key: str) -> None:
    """Raise DataError if ``value`` (found under ``key`` at ``where``) is not of the ``expected`` type."""
    if not is_instance_strict(value, expected):
        raise DataError(
            f"{where}: key {key!r} should be {_with_article(_type_names(expected))}, got "
            f"{type(value).__name__} {_preview(value)}."
        )


def _with_article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _preview(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def require_keys(record: Any, keys: KeySpec, where: str) -> None:
    """Check that ``record`` is a JSON object carrying ``keys`` (and their types, when given).

    ``where`` says where the record is, e.g. ``"annotations file a.json, record 12"``; the
    DataError names it together with the missing key.
    """
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__} {_preview(record)}.")
    expected_types = keys if isinstance(keys, Mapping) else dict.fromkeys(keys)
    for key, expected in expected_types.items():
        if key not in record:
            present = ", ".join(sorted(map(str, record))) or "none"
            raise DataError(f"{where}: missing required key {key!r} (keys present: {present}).")
        if expected is not None:
            check_type(record[key], expected, where, key)


def record_location(what: str, path: PathLike, index: int) -> str:
    """The ``where`` string for record ``index`` (0-based) of a file, as error messages show it."""
    return f"{what} {path}, record {index}"
