"""Opening images from paths or bytes: EXIF orientation, RGB, clear errors, a skip policy.

``load_image`` is the one place an image is decoded. It applies the EXIF orientation tag (phone
photos are stored sideways with a tag that says so), converts to RGB, and turns a missing,
truncated or non-image file into a :class:`~rablip.errors.DataError` that names the file and the
record. ``resolve_under_root`` keeps knowledge-base paths inside their root. ``ImageLoader`` adds
the ``on_bad_image`` policy: ``"error"`` (default) raises, ``"skip"`` returns ``None`` and keeps a
list of every skipped record for the run report.
"""

from __future__ import annotations

import abc
import io
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from PIL import Image, ImageOps

from rablip.errors import DataError

BAD_IMAGE_POLICIES = ("error", "skip")


class StoredImage(abc.ABC):
    """An image kept in a container file and read on demand (e.g. a line of WebQA's ``imgs.tsv``).

    A knowledge-base store hands these out instead of copying the bytes of a large image file into
    itself; :func:`load_image` reads :meth:`read_bytes` only when the image is decoded. Subclasses
    raise DataError from :meth:`read_bytes` when the stored image cannot be read, so a read error
    follows the same ``on_bad_image`` policy as a bad image file.
    """

    @abc.abstractmethod
    def read_bytes(self) -> bytes:
        """The encoded image (JPEG/PNG bytes as stored)."""

    @abc.abstractmethod
    def __str__(self) -> str:
        """Where the image is kept, for messages (container file and the image's key in it)."""


ImageRef = str | os.PathLike | bytes | StoredImage

# What Pillow raises on corrupt data varies by format and by how far decoding got.
_DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    struct.error,
    Image.DecompressionBombError,
)


def resolve_under_root(root: str | os.PathLike, relative: str | os.PathLike) -> Path:
    """Join ``relative`` to ``root`` and refuse any result outside ``root``.

    Absolute paths, ``..`` that climbs out, and symbolic links that point outside the root all
    raise DataError. Returns the resolved path (which need not exist).
    """
    relative_text = os.fspath(relative)
    if not relative_text:
        raise DataError(f"empty image path under root {root}.")
    if PurePosixPath(relative_text).is_absolute() or PureWindowsPath(relative_text).drive:
        raise DataError(
            f"image path {relative_text!r} is absolute; knowledge-base image paths must be relative "
            f"to the root {root}."
        )
    root_resolved = Path(root).resolve()
    candidate = (root_resolved / relative_text).resolve()
    if not candidate.is_relative_to(root_resolved):
        raise DataError(
            f"image path {relative_text!r} resolves to {candidate}, outside the root {root_resolved} "
            "(via '..' or a symbolic link). Keep every image inside the root."
        )
    return candidate


def _describe(ref: ImageRef) -> str:
    if isinstance(ref, bytes):
        return f"<{len(ref)} bytes of encoded image>"
    return str(ref)


def _record_suffix(record: str | None) -> str:
    return f" (record {record})" if record is not None else ""


def _open_source(ref: ImageRef, root: str | os.PathLike | None, record: str | None) -> tuple[Any, str]:
    """What to hand to ``Image.open`` and how to name it in messages."""
    if isinstance(ref, bytes):
        return io.BytesIO(ref), _describe(ref)
    if isinstance(ref, StoredImage):
        return io.BytesIO(ref.read_bytes()), str(ref)
    if not isinstance(ref, (str, os.PathLike)):
        raise DataError(
            f"image reference{_record_suffix(record)} must be a path or bytes, got {type(ref).__name__}."
        )
    text = os.fspath(ref)
    if "://" in text:
        raise DataError(
            f"image {text}{_record_suffix(record)} is a URL; rablip does not download images. "
            "Fetch the images first and point the record at the local file."
        )
    path = resolve_under_root(root, text) if root is not None else Path(text)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise DataError(
            f"image file {path}{_record_suffix(record)} {what}. Check the image root and the record."
        )
    return path, str(path)


def load_image(
    ref: ImageRef, root: str | os.PathLike | None = None, *, record: str | None = None
) -> Image.Image:
    """Decode an image from a path, encoded bytes or a :class:`StoredImage`, orientation fixed, as RGB.

    A string or path is opened as given when ``root`` is None; with a ``root`` it must be
    relative and stay inside the root (see :func:`resolve_under_root`). ``record`` is the id of the
    record the image belongs to, named in error messages.
    """
    source, name = _open_source(ref, root, record)
    try:
        with Image.open(source) as opened:
            opened.load()  # decode now, so a truncated file fails here and not in a worker later
            oriented = ImageOps.exif_transpose(opened)
            return oriented.convert("RGB")
    except Image.UnidentifiedImageError:
        raise DataError(f"{name}{_record_suffix(record)} is not an image Pillow can read.") from None
    except _DECODE_ERRORS as err:
        raise DataError(
            f"image {name}{_record_suffix(record)} cannot be decoded ({err}); it may be truncated or corrupt."
        ) from err


def decoding_problem(data: bytes) -> str | None:
    """Why the encoded image ``data`` cannot be decoded, or None when it can.

    Decodes the whole stream (a truncated file fails) but, for JPEG, at 1/8 scale (``draft``): a
    check of every image of a large collection costs a small part of a full decode.
    """
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.draft("RGB", (64, 64))
            opened.load()
    except Image.UnidentifiedImageError:
        return "the payload is not an image Pillow can read"
    except _DECODE_ERRORS as err:
        return f"the image cannot be decoded ({err}); it may be truncated or corrupt"
    return None


@dataclass
class SkippedImage:
    """One record whose image could not be loaded under the ``skip`` policy."""

    record_id: str | None
    file: str
    reason: str


@dataclass
class ImageLoadReport:
    """How many images an :class:`ImageLoader` loaded and which records it skipped."""

    loaded: int = 0
    skipped: list[SkippedImage] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary for the run directory."""
        return {
            "loaded": self.loaded,
            "skipped_count": len(self.skipped),
            "skipped": [vars(entry).copy() for entry in self.skipped],
        }

    def __str__(self) -> str:
        lines = [f"{self.loaded} images loaded, {len(self.skipped)} skipped"]
        lines += [f"  record {entry.record_id}: {entry.file}: {entry.reason}" for entry in self.skipped]
        return "\n".join(lines)


class ImageLoader:
    """Loads images under one root with an ``on_bad_image`` policy (``"error"`` or ``"skip"``)."""

    def __init__(self, root: str | os.PathLike | None = None, on_bad_image: str = "error") -> None:
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise DataError(f"on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}.")
        self.root = root
        self.on_bad_image = on_bad_image
        self._report = ImageLoadReport()

    def load(self, ref: ImageRef, record_id: str | None = None) -> Image.Image | None:
        """The decoded RGB image, or None when it is bad and the policy is ``skip``."""
        try:
            image = load_image(ref, self.root, record=record_id)
        except DataError as err:
            if self.on_bad_image == "error":
                raise
            self._report.skipped.append(SkippedImage(record_id, _describe(ref), str(err)))
            return None
        self._report.loaded += 1
        return image

    def report(self) -> ImageLoadReport:
        """Counts so far and every skipped record with its file and reason."""
        return self._report
