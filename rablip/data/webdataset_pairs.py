"""Image-text pairs in WebDataset tar shards (the format of img2dataset and open_clip's training data).

A shard is a tar file whose members are grouped into samples by key, as the ``webdataset`` package
groups them: ``000123.jpg``, ``000123.txt`` and ``000123.json`` are the sample ``000123``. A sample used
as a pre-training pair holds

- an image: one member ending ``.jpg``, ``.jpeg``, ``.png`` or ``.webp``: the query image;
- a caption: ``.txt`` (UTF-8 text), or else the ``caption`` (or ``text``) string of the ``.json``
  member: the text of the target item;
- optionally, in the ``.json`` member: ``question`` (the query text; absent or empty: the reader of the
  pair draws one), ``title`` (the target's title) and ``id`` (the target's id; default
  ``<shard name>/<key>``). img2dataset's ``.json`` (``caption``, ``url``, ``key``, ...) fits as it is.

The target is a text item: the pair teaches the encoder to find a caption from its image, as RA-BLIP's
fusion module is pre-trained on image-text pairs. Shards are read with ``webdataset``'s tar iterator
(any URL ``webdataset.gopen`` opens: a local path, ``pipe:...``, ``http(s)://``), one sample at a time;
images are decoded only when a pair is loaded.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from webdataset.tariterators import base_plus_ext, tarfile_samples

from rablip.data.records import KBItem
from rablip.errors import DataError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
TEXT_EXTENSIONS = ("txt",)
_SKIPPED_MEMBER = re.compile(r"__[^/]*__($|/)")
"""Members webdataset's tar iterator leaves out (its ``skip_meta``); counting leaves them out too."""


def count_tar_samples(path: str | Path) -> int:
    """Samples in one tar shard, as webdataset groups them (consecutive members with the same key),
    from the tar headers alone: an uncompressed shard's contents are skipped over, not read."""
    count, previous = 0, None
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if not member.isreg() or _SKIPPED_MEMBER.match(member.name):
                    continue
                key, _ = base_plus_ext(member.name)
                if key is not None and key != previous:
                    count += 1
                    previous = key
    except FileNotFoundError:
        raise DataError(f"WebDataset shard not found: {path}. Check data.extra_pairs.path.") from None
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"WebDataset shard {path} is not a readable tar file ({err}).") from None
    return count


def iter_tar_samples(url: str) -> Iterator[dict[str, Any]]:
    """The samples of one shard in file order: dicts of ``__key__`` and one raw ``bytes`` value per
    member extension (lower case). A shard that cannot be read is a DataError naming it."""
    try:
        for sample in tarfile_samples([{"url": url}]):
            yield {key if key.startswith("__") else key.lower(): value for key, value in sample.items()}
    except (tarfile.TarError, OSError, EOFError, ValueError) as err:
        raise DataError(f"WebDataset shard {url} cannot be read ({err}). Check the file, or write it again.") from None


def _json_member(sample: dict[str, Any], where: str) -> dict[str, Any]:
    if "json" not in sample:
        return {}
    try:
        meta = json.loads(sample["json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{where}: the .json member is not valid UTF-8 JSON ({err}).") from None
    if not isinstance(meta, dict):
        raise DataError(f"{where}: the .json member is a {type(meta).__name__}, expected an object.")
    for name in ("caption", "text", "question", "title", "id"):
        value = meta.get(name)
        if value is not None and not isinstance(value, str | int):
            raise DataError(f"{where}: the .json member's {name!r} is a {type(value).__name__}, expected a string.")
    return meta


def tar_sample_pair(sample: dict[str, Any], shard: str) -> tuple[bytes, str, KBItem]:
    """One sample as (encoded query image, question or "", target text item); a sample without an image
    or a caption is a DataError naming the shard and the key and saying what a sample needs."""
    key = sample.get("__key__", "?")
    where = f"WebDataset shard {shard}, sample {key!r}"
    image = next((sample[ext] for ext in IMAGE_EXTENSIONS if ext in sample), None)
    if image is None:
        raise DataError(f"{where} has no image (members: {sorted(k for k in sample if not k.startswith('__'))}); "
                        f"every sample needs one of .{', .'.join(IMAGE_EXTENSIONS)}.")
    meta = _json_member(sample, where)
    if "txt" in sample:
        try:
            caption = sample["txt"].decode("utf-8").strip()
        except UnicodeDecodeError:
            raise DataError(f"{where}: the .txt member is not UTF-8 text.") from None
    else:
        caption = str(meta.get("caption") or meta.get("text") or "").strip()
    if not caption:
        raise DataError(f"{where} has no caption; every sample needs a non-empty .txt member or a .json member "
                        "with a 'caption' string.")
    item = KBItem(id=str(meta.get("id") or f"{Path(shard).name.split('.')[0]}/{key}"), modality="text",
                  text=caption, title=str(meta.get("title") or ""), source=Path(shard).name)
    return image, str(meta.get("question") or "").strip(), item
