"""Build a knowledge-base store from the ``data.kb`` config section (what scripts/build_kb.py runs).

:func:`build_kb_from_config` reads any object with the ``data.kb`` attribute names (the schema's
``KBConfig``, or a ``types.SimpleNamespace`` in tests), picks the reader of the input format and
streams its items into :func:`rablip.data.kb_writer.build_kb_store`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rablip.data.evqa_kb import iter_evqa_wiki, read_image_map
from rablip.data.kb_sources import TsvColumns, iter_kb_jsonl, iter_kb_tsv
from rablip.data.kb_writer import build_kb_store
from rablip.data.m2kr_passages import count_passages, iter_m2kr_passages
from rablip.data.records import KBItem
from rablip.data.webqa import ImageTSV
from rablip.data.webqa_kb import webqa_store_items
from rablip.errors import ConfigError, DataError

KB_FORMATS = ("jsonl", "wit_tsv", "webqa", "evqa_wiki", "m2kr_parquet")
_COUNT_CHUNK_BYTES = 1 << 20


def _required_path(kb_cfg: Any, key: str, must_exist: bool) -> Path:
    value = getattr(kb_cfg, key)
    if not value:
        raise ConfigError(f"data.kb.{key} is empty; set it to build the knowledge-base store.")
    path = Path(value)
    if must_exist and not path.is_file():
        raise DataError(f"data.kb.{key}: {path} is not a file.")
    return path


def _count_lines(path: Path) -> int:
    """Newlines in a plain-text file (a progress-bar total; one fast read, nothing parsed)."""
    count = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_COUNT_CHUNK_BYTES):
            count += chunk.count(b"\n")
    return count


def _extra_paths(kb_cfg: Any) -> list[Path]:
    """``data.kb.extra_paths``: further input files of the same format, each checked to exist."""
    paths = [Path(value) for value in getattr(kb_cfg, "extra_paths", None) or []]
    for path in paths:
        if not path.is_file():
            raise DataError(f"data.kb.extra_paths: {path} is not a file.")
    return paths


def _webqa_items(kb_cfg: Any, paths: list[Path]) -> Iterator[KBItem]:
    """Every fact of the WebQA files once, image facts checked against and referring to imgs.tsv
    (:func:`rablip.data.webqa_kb.webqa_store_items`); the TSV is opened before the first item."""
    if not kb_cfg.webqa_images_tsv:
        raise ConfigError(
            "data.kb.webqa_images_tsv is empty; WebQA image facts need imgs.tsv (with imgs.lineidx beside it) "
            "so that the store holds their images."
        )
    tsv_path = Path(kb_cfg.webqa_images_tsv)
    images = ImageTSV(tsv_path, tsv_path.with_suffix(".lineidx"))

    on_missing = getattr(kb_cfg, "on_missing", "error")

    def items() -> Iterator[KBItem]:
        with images:
            yield from webqa_store_items(paths, images, on_missing=on_missing, source="webqa")

    return items()


def kb_items_from_config(kb_cfg: Any) -> tuple[Iterator[KBItem], int | None]:
    """The item stream of the configured input and, when cheap to know, its approximate length."""
    if kb_cfg.format not in KB_FORMATS:
        raise ConfigError(f"data.kb.format: {kb_cfg.format!r} is not one of {', '.join(KB_FORMATS)}.")
    path = _required_path(kb_cfg, "path", must_exist=True)
    paths = [path, *_extra_paths(kb_cfg)]
    kb_root = kb_cfg.root or None
    if kb_cfg.format == "jsonl":
        items = itertools.chain.from_iterable(iter_kb_jsonl(each, kb_root=kb_root) for each in paths)
        return items, sum(_count_lines(each) for each in paths)
    if kb_cfg.format == "wit_tsv":
        columns = TsvColumns(
            id=kb_cfg.wit_id_column or None,
            title=kb_cfg.wit_title_column or None,
            text=kb_cfg.wit_text_column or None,
            image=kb_cfg.wit_image_column or None,
        )
        gzipped = any(each.suffix == ".gz" for each in paths)
        total = None if gzipped else sum(max(_count_lines(each) - 1, 0) for each in paths)
        items = itertools.chain.from_iterable(
            iter_kb_tsv(each, columns, has_header=kb_cfg.wit_has_header, kb_root=kb_root) for each in paths)
        return items, total
    if kb_cfg.format == "evqa_wiki":  # one JSON object of pages, streamed page by page
        image_map = read_image_map(kb_cfg.evqa_image_map) if getattr(kb_cfg, "evqa_image_map", "") else None
        return iter_evqa_wiki(paths, image_map=image_map), None
    if kb_cfg.format == "m2kr_parquet":  # M2KR *_passages parquet files, read in record batches
        total = sum(count_passages(each) for each in paths)
        return itertools.chain.from_iterable(iter_m2kr_passages(each) for each in paths), total
    return _webqa_items(kb_cfg, paths), None


def build_kb_from_config(kb_cfg: Any, *, show_progress: bool = True) -> Path:
    """Build the store of ``kb_cfg`` (``format``, ``path``, ``root``, ``store_dir``, ``wit_*``,
    ``webqa_images_tsv``; ``overwrite``, ``extra_paths`` and ``on_missing`` when the object has them)
    and return the store directory."""
    store_dir = _required_path(kb_cfg, "store_dir", must_exist=False)
    items, total = kb_items_from_config(kb_cfg)
    return build_kb_store(
        items,
        store_dir,
        kb_root=kb_cfg.root or None,
        total=total,
        show_progress=show_progress,
        source_name=f"{kb_cfg.format}:{kb_cfg.path}",
        overwrite=bool(getattr(kb_cfg, "overwrite", False)),
    )
