"""WebQA as a retrieval corpus: every text and image fact of the WebQA files once, as store items.

:func:`webqa_store_items` feeds the knowledge-base store builder (``data.kb.format: webqa``). Text
facts are stored as they are. Image facts are stored by reference: the item's image is a
:class:`~rablip.data.webqa.TSVImage` (image id in ``imgs.tsv``), which the store keeps as the id and
reads through ``imgs.lineidx`` when the image is decoded, so the 50 GB TSV is never copied.

Every image fact is checked while the store is built: its id must have a line in ``imgs.lineidx``
that holds that id, the line must be whole (valid base64) and its payload a decodable image. The
facts that fail are reported in one message, with their count and the first few (record guid, source
id and reason), and then refused (``on_missing: error``: a DataError, nothing written) or left out
(``on_missing: skip``: a warning; the store holds every other fact).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rablip.data.images import decoding_problem
from rablip.data.kb import KBStore
from rablip.data.records import KBItem, QAExample
from rablip.data.webqa import ImageTSV, LazyImageTSV, TSVImage, fact_id, iter_facts
from rablip.errors import DataError
from rablip.utils.logging import get_logger

log = get_logger("rablip.data")
ON_MISSING = ("error", "skip")
SHOWN_PROBLEMS = 5
"""Bad image facts named in the report (the count covers all of them)."""


@dataclass
class BadImageFact:
    """An image fact whose image cannot be used, with the record that lists it first."""

    guid: str
    source_id: str
    reason: str


def image_problem(images: ImageTSV, image_id: int) -> str | None:
    """Why image ``image_id`` of ``images`` cannot be used (missing id, garbled or truncated line,
    not an image), or None when it decodes."""
    try:
        data = images.get(image_id)
    except DataError as err:
        return str(err)
    return decoding_problem(data)


def bad_facts_message(bad: Sequence[BadImageFact], image_facts: int, tsv_path: Path) -> str:
    """One message for all bad image facts: how many, and the first :data:`SHOWN_PROBLEMS` of them."""
    shown = "; ".join(f"record {fact.guid!r}, image fact {fact.source_id}: {fact.reason.rstrip('.')}"
                      for fact in bad[:SHOWN_PROBLEMS])
    more = f"; and {len(bad) - SHOWN_PROBLEMS} more" if len(bad) > SHOWN_PROBLEMS else ""
    return (f"{len(bad)} of {image_facts} WebQA image facts have no usable image in {tsv_path} "
            f"(first {min(len(bad), SHOWN_PROBLEMS)}: {shown}{more}).")


def webqa_store_items(json_paths: Sequence[str | os.PathLike], images: ImageTSV, on_missing: str = "error",
                      source: str = "webqa") -> Iterator[KBItem]:
    """Every fact of ``json_paths`` (all splits, positive, negative and unlabelled) once, in file order.

    A text fact is a ``text`` item, an image fact an ``image+text`` item (text = caption) whose
    image is a :class:`TSVImage` of ``images``. Image facts whose image is unusable are collected and,
    once every fact has been read, refused (``on_missing="error"``: DataError) or reported and left
    out (``"skip"``); see the module docstring.
    """
    if on_missing not in ON_MISSING:
        raise DataError(f"data.kb.on_missing must be one of {', '.join(ON_MISSING)}, got {on_missing!r}.")
    lazy = LazyImageTSV(images.tsv_path, images.lineidx_path, images.id_modulus, images.tsv_size, opened=images)
    seen: set[str] = set()
    bad: list[BadImageFact] = []
    image_facts = 0
    for json_path in json_paths:
        for guid, fact in iter_facts(json_path):
            item_id = fact_id(fact)
            if item_id in seen:
                continue
            seen.add(item_id)
            title = fact.get("title", "")
            if "snippet_id" in fact:
                yield KBItem(id=item_id, modality="text", text=fact["fact"], title=title, source=source)
                continue
            image_facts += 1
            reason = image_problem(images, fact["image_id"])
            if reason is not None:
                bad.append(BadImageFact(guid, item_id, reason))
                continue
            yield KBItem(id=item_id, modality="image+text", image=TSVImage(lazy, fact["image_id"]),
                         text=fact["caption"], title=title, source=source)
    if bad:
        message = bad_facts_message(bad, image_facts, images.tsv_path)
        if on_missing == "error":
            raise DataError(f"{message} Repair imgs.tsv / imgs.lineidx, or set data.kb.on_missing=skip to build "
                            "the store without these facts.")
        log.warning("%s Left out of the store (data.kb.on_missing=skip).", message)


def keep_stored_sources(examples: Sequence[QAExample], kb: KBStore) -> list[QAExample]:
    """``examples`` with the fact ids the store does not hold removed from ``relevant_ids`` and
    ``extra["negative_ids"]`` / ``extra["candidate_ids"]`` (a store built with ``on_missing=skip``),
    so that training never asks the store for a left-out fact; how many were removed is logged."""
    stored = set(kb.ids())
    kept, removed = [], 0
    for example in examples:
        extra = dict(example.extra)
        for key in ("negative_ids", "candidate_ids"):
            if key in extra:
                extra[key] = [item_id for item_id in extra[key] if item_id in stored]
                removed += len(example.extra[key]) - len(extra[key])
        relevant = example.relevant_ids
        if relevant is not None:
            relevant = [item_id for item_id in relevant if item_id in stored]
            removed += len(example.relevant_ids) - len(relevant)
        kept.append(dataclasses.replace(example, relevant_ids=relevant, extra=extra))
    if removed:
        log.warning("%d listed source(s) of %d questions are not in the knowledge-base store %s (left out when it "
                    "was built); the questions are used without them", removed, len(examples), kb.directory)
    return kept
