"""Pre-training pairs from a corpus split into shards, read as streams: WebDataset tar shards
(:mod:`rablip.data.webdataset_pairs`) or JSONL shards (one extra-pairs record per line, the format of
:mod:`rablip.data.extra_pairs`, images relative to each shard's directory).

The shards (a directory's ``*.tar``/``*.jsonl`` files in name order, a brace pattern such as
``cc3m/{00000..00099}.tar``, or one file) are dealt to ``streams`` readers: stream s reads shards
s, s + streams, s + 2 x streams, ... so no two streams share a shard (the trainer runs one stream per
process and DataLoader worker: :mod:`rablip.training.stream_slots`). A stream is an endless sequence of
samples: its shards in an order drawn for each pass (seeded by the run seed, the stream and the pass),
each shard's samples in file order. :meth:`ShardedPairs.load` takes a stream and a position in it, finds
the shard and the offset from the shard sizes, and reads forward from where the stream's reader stands;
a position behind it, or in another shard, opens that shard anew. A run that resumes therefore opens
the shard of its first position directly: the shards before it are never read again.

Shard sizes come from ``sizes.json`` in the shards' directory when it lists the shard (open_clip's
convention: ``{"00000.tar": 10000, ...}``), else from counting (tar headers; JSONL non-blank lines),
each stream counting only its own shards, when it first needs them. A shard that holds fewer samples
than its size says is a DataError naming it. Only local files are read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from webdataset.shardlists import expand_urls

from rablip.data.extra_pairs import pair_from_record
from rablip.data.images import ImageLoader
from rablip.data.records import KBItem
from rablip.data.webdataset_pairs import count_tar_samples, iter_tar_samples, tar_sample_pair
from rablip.errors import DataError
from rablip.utils.io import iter_jsonl_with_lines

SHARD_FORMATS = {"webdataset": (".tar", ".tar.gz", ".tgz"), "jsonl": (".jsonl",)}
"""File endings of the shards of each ``data.extra_pairs.format`` (in a directory)."""
SIZES_FILE = "sizes.json"

PairTuple = tuple[Image.Image | None, str, KBItem, Image.Image | None]


def is_sharded(path: str | os.PathLike) -> bool:
    """Whether ``path`` names several shards: a directory or a brace pattern (``{a..b}``, ``{a,b}``)."""
    text = str(path)
    return Path(text).is_dir() or ("{" in text and "}" in text)


def list_shards(path: str | os.PathLike, shard_format: str) -> list[Path]:
    """The shard files of ``path`` (a directory, a brace pattern or one file), each checked to exist."""
    if shard_format not in SHARD_FORMATS:
        raise DataError(f"data.extra_pairs.format: {shard_format!r} is not one of {', '.join(SHARD_FORMATS)}.")
    text = str(path)
    if Path(text).is_dir():
        shards = sorted(p for p in Path(text).iterdir() if p.is_file() and p.name.endswith(SHARD_FORMATS[shard_format]))
        if not shards:
            raise DataError(f"data.extra_pairs.path: {text} holds no {'/'.join(SHARD_FORMATS[shard_format])} files "
                            f"(data.extra_pairs.format={shard_format}).")
        return shards
    shards = [Path(each) for each in expand_urls(text)]
    missing = [str(p) for p in shards if not p.is_file()]
    if missing:
        raise DataError(f"data.extra_pairs.path: {len(missing)} of {len(shards)} shard(s) of {text} are not files, "
                        f"first {missing[0]}. Check the path or the pattern.")
    return shards


def _declared_sizes(shards: list[Path]) -> dict[str, int]:
    """``sizes.json`` of the shards' directories, shard file name -> samples; {} when there is none."""
    sizes: dict[str, int] = {}
    for directory in sorted({shard.parent for shard in shards}):
        path = directory / SIZES_FILE
        if not path.is_file():
            continue
        try:
            declared = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DataError(f"{path} is not valid JSON ({err}); it should map shard file names to sample counts.") from None
        if not isinstance(declared, dict) or not all(isinstance(v, int) and v >= 0 for v in declared.values()):
            raise DataError(f"{path} should map shard file names to sample counts, e.g. {{\"00000.tar\": 10000}}.")
        sizes.update({str(directory / name): count for name, count in declared.items()})
    return sizes


def _count_jsonl_records(path: Path) -> int:
    """Non-blank lines of a JSONL shard (its records; nothing is parsed)."""
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


@dataclass
class _Stream:
    """One stream's shards and their sizes (in shard-list order)."""

    shards: list[Path]
    sizes: list[int]
    passes: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    """Pass -> (shard order, cumulative sizes in that order); the last pass only."""
    total: int = field(init=False)
    """Samples in one pass."""

    def __post_init__(self) -> None:
        self.total = sum(self.sizes)


@dataclass
class _Reader:
    """Where one stream's reader stands: the open shard and the offset of the next sample in it."""

    shard: Path
    samples: Iterator[Any]
    next: int = 0


class ShardedPairs:
    """The pairs of a sharded corpus, read as ``streams`` disjoint streams (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, shard_format: str, streams: int, seed: int = 0,
                 on_bad_image: str = "error") -> None:
        self.path, self.format, self.streams, self.seed = str(path), shard_format, streams, seed
        self.on_bad_image = on_bad_image
        self.shards = list_shards(path, shard_format)
        if len(self.shards) < streams:
            raise DataError(
                f"data.extra_pairs.path {path} has {len(self.shards)} shard(s), fewer than the {streams} streams "
                "that read it (processes x max(1, data.num_workers)), each of which reads shards no other reads. "
                "Split the corpus into more shards, or lower data.num_workers.")
        self._declared = _declared_sizes(self.shards)
        self._streams: dict[int, _Stream] = {}
        self._readers: dict[int, _Reader] = {}
        self._images: dict[Path, ImageLoader] = {}
        self.opened: list[Path] = []
        """Shards opened by this process, in order (several times when a stream jumped back)."""

    def __getstate__(self) -> dict[str, Any]:
        """Open readers (generators) stay behind when the object is sent to a DataLoader worker."""
        return {**self.__dict__, "_readers": {}}

    def stream_shards(self, stream: int) -> list[Path]:
        """The shards stream ``stream`` reads (and no other stream does)."""
        if not 0 <= stream < self.streams:
            raise ValueError(f"stream {stream} is not in [0, {self.streams})")
        return self.shards[stream::self.streams]

    def _size(self, shard: Path) -> int:
        if str(shard) in self._declared:
            return self._declared[str(shard)]
        return count_tar_samples(shard) if self.format == "webdataset" else _count_jsonl_records(shard)

    def _stream(self, stream: int) -> _Stream:
        if stream not in self._streams:
            shards = self.stream_shards(stream)
            plan = _Stream(shards, [self._size(shard) for shard in shards])
            if plan.total == 0:
                raise DataError(f"the shards {', '.join(map(str, shards))} of data.extra_pairs.path {self.path} hold "
                                "no samples.")
            self._streams[stream] = plan
        return self._streams[stream]

    def locate(self, stream: int, position: int) -> tuple[Path, int]:
        """The shard and the offset in it of sample ``position`` of stream ``stream``."""
        plan = self._stream(stream)
        number, within = divmod(position, plan.total)
        if number not in plan.passes:
            order = np.random.default_rng([self.seed, stream, number]).permutation(len(plan.shards))
            plan.passes = {number: (order, np.cumsum(np.asarray(plan.sizes)[order]))}
        order, ends = plan.passes[number]
        slot = int(np.searchsorted(ends, within, side="right"))
        start = int(ends[slot - 1]) if slot else 0
        return plan.shards[int(order[slot])], within - start

    def _open(self, shard: Path) -> Iterator[Any]:
        self.opened.append(shard)
        if self.format == "webdataset":
            return iter_tar_samples(str(shard))
        return iter_jsonl_with_lines(shard, "extra-pairs shard")

    def _next_sample(self, reader: _Reader) -> Any:
        try:
            sample = next(reader.samples)
        except StopIteration:
            raise DataError(f"shard {reader.shard} of data.extra_pairs.path ended after {reader.next} samples, but "
                            f"its size is {self._size(reader.shard)} ({SIZES_FILE} or a count when the run started). "
                            f"Correct or delete {SIZES_FILE}, or do not change shards during a run.") from None
        reader.next += 1
        return sample

    def sample_at(self, stream: int, position: int) -> tuple[Path, Any]:
        """The raw sample at ``position`` of ``stream`` (a tar sample dict or a JSONL (line, record))."""
        shard, offset = self.locate(stream, position)
        reader = self._readers.get(stream)
        if reader is None or reader.shard != shard or reader.next > offset:
            reader = self._readers[stream] = _Reader(shard, self._open(shard))
        while reader.next < offset:
            self._next_sample(reader)
        return shard, self._next_sample(reader)

    def load(self, stream: int, position: int) -> PairTuple:
        """Sample ``position`` of ``stream`` as (query image, question or "", target item, target image)."""
        shard, sample = self.sample_at(stream, position)
        loader = self._images.setdefault(shard.parent, ImageLoader(shard.parent, self.on_bad_image))
        if self.format == "webdataset":
            image, question, item = tar_sample_pair(sample, str(shard))
            return loader.load(image, f"WebDataset shard {shard}, sample {sample.get('__key__')!r}"), question, item, None
        line, record = sample
        pair = pair_from_record(record, f"extra-pairs shard {shard}, line {line}", shard.parent, line, shard.name)
        where = f"{shard}, line {line}"
        item_image = loader.load(pair.item.image, where) if pair.item.modality != "text" else None
        return loader.load(pair.image, where), pair.question, pair.item, item_image
