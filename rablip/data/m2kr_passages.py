"""The M2KR benchmark's passage corpora (``data.kb.format=m2kr_parquet``) streamed as text KBItems.

M2KR (PreFLMR, Lin et al. 2024; Hugging Face dataset
``BByrneLab/multi_task_multi_modal_knowledge_retrieval_benchmark_M2KR``) ships one ``<Task>_passages``
config per task, each split a parquet file such as ``OKVQA_passages/train_passages-00000-of-00001.parquet``
(FLMR/PreFLMR users have these files, or the same rows in ``datasets``' cache). What the dataset card's
``dataset_info`` header lists for the configs read here (read from a copy of the card's README.md in
the stored reference index; the hub's file tree shows the parquet paths above):

- ``OKVQA_passages``: ``passage_id``, ``passage_content``, ``title`` (splits train/valid/test_passages,
  114,809 rows each);
- ``Infoseek_passages``: ``passage_id``, ``passage_content``, ``title`` (train/test_passages, 98,276);
- ``EVQA_passages``: ``language``, ``passage_id``, ``passage_content`` (about 50k per split);
- ``OVEN_passages``: ``language``, ``passage_id``, ``passage_content`` (train 7,943, valid/test 3,192);
- ``WIT_passages``: WIT's columns (``page_title``, ``image_url``, ``img_path``, ...) plus
  ``passage_id`` and ``passage_content`` (train 4,120,010 rows).

Every config has ``passage_id`` and ``passage_content`` (both strings); those are required. The item's
title is ``title`` where the config has it, else ``page_title`` (WIT), else empty. M2KR's tasks retrieve
text passages (its image columns name files that are not in the parquet), so every item is a text
item whose text is ``passage_content`` as stored. Not confirmed here (no real file was read): whether
``passage_content`` already repeats the title (e.g. a ``title: ... content: ...`` prefix), and whether
``passage_id`` is unique across splits; ids are checked for uniqueness when the store is built.

The file is read in record batches (:meth:`pyarrow.parquet.ParquetFile.iter_batches`), never whole.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rablip.data.records import KBItem
from rablip.errors import DataError

ID_COLUMN = "passage_id"
TEXT_COLUMN = "passage_content"
REQUIRED_COLUMNS = (ID_COLUMN, TEXT_COLUMN)
TITLE_COLUMNS = ("title", "page_title")
"""Title columns in order of preference: OK-VQA/InfoSeek passages have ``title``, WIT ``page_title``."""
BATCH_ROWS = 4096


def open_passages(path: str | os.PathLike) -> pq.ParquetFile:
    """The parquet file at ``path`` with its columns checked; a missing file, a file that is not
    parquet, or a missing required column is a DataError naming the file and what to do."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"M2KR passages file not found: {path}. Check data.kb.path (and data.kb.extra_paths).")
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"M2KR passages file {path} is not a readable parquet file ({err}). Give one of the "
                        "<Task>_passages/*.parquet files of M2KR.") from None
    names = parquet.schema_arrow.names
    missing = [column for column in REQUIRED_COLUMNS if column not in names]
    if missing:
        raise DataError(f"M2KR passages file {path} has no column {', '.join(map(repr, missing))}; its columns are "
                        f"{names}. data.kb.format=m2kr_parquet reads the *_passages configs of M2KR, whose rows "
                        f"have {' and '.join(REQUIRED_COLUMNS)}.")
    return parquet


def count_passages(path: str | os.PathLike) -> int:
    """Rows of the file, from its footer (nothing else is read)."""
    return open_passages(path).metadata.num_rows


def _cell_text(value: object, where: str, column: str) -> str:
    if value is None:
        return ""
    if isinstance(value, int | str):
        return str(value).strip()
    raise DataError(f"{where}: {column!r} is a {type(value).__name__}, expected a string.")


def iter_m2kr_passages(path: str | os.PathLike, *, source: str | None = None,
                       batch_rows: int = BATCH_ROWS) -> Iterator[KBItem]:
    """Stream the passages of one M2KR ``*_passages`` parquet file as text KBItems, ``batch_rows`` rows at
    a time. A row with an empty ``passage_id`` or an empty ``passage_content`` is a DataError naming the
    file and the row (0-based, in file order); ``source`` defaults to the file name."""
    path = Path(path)
    parquet = open_passages(path)
    names = parquet.schema_arrow.names
    title_column = next((column for column in TITLE_COLUMNS if column in names), None)
    columns = [*REQUIRED_COLUMNS, *([title_column] if title_column else [])]
    source = source if source is not None else path.name
    row = 0
    try:
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
            values = batch.to_pydict()
            titles = values[title_column] if title_column else [None] * batch.num_rows
            for passage_id, content, title in zip(values[ID_COLUMN], values[TEXT_COLUMN], titles, strict=True):
                where = f"M2KR passages file {path}, row {row}"
                item_id = _cell_text(passage_id, where, ID_COLUMN)
                if not item_id:
                    raise DataError(f"{where}: {ID_COLUMN!r} is empty; every passage needs an id.")
                text = _cell_text(content, where, TEXT_COLUMN)
                if not text:
                    raise DataError(f"{where}: passage {item_id!r} has an empty {TEXT_COLUMN!r}.")
                yield KBItem(id=item_id, modality="text", text=text,
                             title=_cell_text(title, where, title_column or "title"), source=source)
                row += 1
    except pa.ArrowException as err:
        raise DataError(f"M2KR passages file {path}: cannot read the rows after row {row} ({err}); the file may "
                        "be truncated. Download it again.") from None
