"""Reading one large JSON document piece by piece: object members and array elements one at a time.

Some official releases ship a single JSON document too large to load whole (Encyclopedic-VQA's
``encyclopedic_kb_wiki.json``: one object of 2M pages; iNaturalist's annotation files: an object whose
``images`` array holds millions of records). :class:`JsonStream` walks such a document with the
standard library's decoder (``json.JSONDecoder.raw_decode``) over a buffer that is refilled from the
file as needed and trimmed behind the read position, so memory holds one value at a time, not the file.

Use: ``for key in stream.members():`` then consume that member's value exactly once with
:meth:`JsonStream.value` (decode it) or :meth:`JsonStream.elements` (its array, element by element);
:meth:`JsonStream.finish` checks that nothing but white space follows the document. Malformed JSON
raises a :class:`~rablip.errors.DataError` naming the file, line and column.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from rablip.errors import DataError
from rablip.utils.io import PathLike, reading

CHUNK_CHARS = 1 << 20
"""Characters read per refill (a value longer than this is read in growing pieces)."""
_WHITESPACE = " \t\n\r"
_TRUNCATION_MARGIN = 64
"""A decode error this close to the buffer's end may be a value cut by the buffer: read more and retry."""


def open_json_text(path: PathLike, what: str) -> IO[str]:
    """``path`` opened as UTF-8 text (a ``.gz`` file decompressed; a leading BOM skipped)."""
    path = Path(path)
    with reading(path, what):
        if path.suffix == ".gz":
            return gzip.open(path, "rt", encoding="utf-8-sig")
        return path.open("r", encoding="utf-8-sig")


class JsonStream:
    """An incremental reader of one JSON document from a text handle (see the module docstring)."""

    def __init__(self, handle: IO[str], path: PathLike, what: str, chunk_chars: int = CHUNK_CHARS) -> None:
        self.handle, self.path, self.what = handle, Path(path), what
        self.chunk_chars = chunk_chars
        self.buf, self.pos, self.eof = "", 0, False
        self._lines_before = 0
        """Newlines in the text already dropped from the buffer."""
        self._columns_before = 0
        """Characters of the buffer's first line that were already dropped."""
        self._decoder = json.JSONDecoder()

    # --- positions and errors -----------------------------------------------------------------------

    def location(self, pos: int | None = None) -> str:
        """``line L, column C`` (1-based) of buffer position ``pos`` (default: the read position)."""
        pos = self.pos if pos is None else pos
        line = self._lines_before + self.buf.count("\n", 0, pos) + 1
        line_start = self.buf.rfind("\n", 0, pos) + 1
        column = pos - line_start + 1 + (self._columns_before if line_start == 0 else 0)
        return f"line {line}, column {column}"

    def error(self, message: str, pos: int | None = None) -> DataError:
        """A DataError naming the file and the position."""
        return DataError(f"{self.what} {self.path}: malformed JSON at {self.location(pos)}: {message}. "
                         "Fix the file or download it again.")

    # --- the buffer ---------------------------------------------------------------------------------

    def _fill(self) -> bool:
        """Read more text (at least as much as the buffer holds, so long values cost O(n log n)); False at EOF."""
        if self.eof:
            return False
        if self.pos > self.chunk_chars:  # drop what was read
            dropped = self.buf[:self.pos]
            newlines = dropped.count("\n")
            self._lines_before += newlines
            self._columns_before = (self._columns_before + len(dropped) if not newlines
                                    else len(dropped) - dropped.rfind("\n") - 1)
            self.buf, self.pos = self.buf[self.pos:], 0
        try:
            text = self.handle.read(max(self.chunk_chars, len(self.buf)))
        except UnicodeDecodeError:
            raise DataError(f"{self.what} {self.path}: not valid UTF-8 near {self.location(len(self.buf))}. "
                            "Re-save it as UTF-8.") from None
        except (OSError, EOFError) as err:
            raise DataError(f"{self.what} {self.path} cannot be read: {err}") from None
        if not text:
            self.eof = True
            return False
        self.buf += text
        return True

    def peek(self) -> str:
        """The next character that is not white space (not consumed); ``''`` at the end of the file."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in _WHITESPACE:
                self.pos += 1
            if self.pos < len(self.buf) or not self._fill():
                return self.buf[self.pos] if self.pos < len(self.buf) else ""

    def expect(self, char: str) -> None:
        """Consume ``char`` (after white space) or raise naming what was found."""
        found = self.peek()
        if found != char:
            raise self.error(f"expected {char!r}, found {found!r}" if found else f"expected {char!r}, found the end")
        self.pos += 1

    # --- values -------------------------------------------------------------------------------------

    def value(self) -> Any:
        """Decode the next complete JSON value.

        A value that ends at the buffer's end (a number: near it) is decoded again after a refill, since
        it could go on; a decode error near the end may be a value the buffer cut, so it is retried too.
        """
        if not self.peek():
            raise self.error("expected a value, found the end")
        while True:
            try:
                decoded, end = self._decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as err:
                cut = err.msg.startswith("Unterminated string") or err.pos + _TRUNCATION_MARGIN >= len(self.buf)
                if self.eof or not cut:
                    raise self.error(err.msg, err.pos) from None
            else:
                # A number near the end may go on in the next chunk ("1." + "5"): read more first.
                number = isinstance(decoded, (int, float)) and not isinstance(decoded, bool)
                if self.eof or (end + _TRUNCATION_MARGIN < len(self.buf) if number else end < len(self.buf)):
                    self.pos = end
                    return decoded
            self._fill()

    def members(self) -> Iterator[str]:
        """The keys of the object that comes next, one at a time; after each key, consume its value once
        (:meth:`value` or :meth:`elements`) before asking for the next key."""
        self.expect("{")
        if self.peek() == "}":
            self.pos += 1
            return
        while True:
            if self.peek() != '"':
                raise self.error("expected a member name in double quotes")
            key = self.value()
            self.expect(":")
            yield key
            separator = self.peek()
            if separator == "}":
                self.pos += 1
                return
            if separator != ",":
                raise self.error("expected ',' or '}' after an object member")
            self.pos += 1

    def elements(self) -> Iterator[Any]:
        """The elements of the array that comes next, each decoded on its own."""
        self.expect("[")
        if self.peek() == "]":
            self.pos += 1
            return
        while True:
            yield self.value()
            separator = self.peek()
            if separator == "]":
                self.pos += 1
                return
            if separator != ",":
                raise self.error("expected ',' or ']' after an array element")
            self.pos += 1

    def finish(self) -> None:
        """Check that only white space follows the document."""
        if self.peek():
            raise self.error("extra data after the document")
