"""Encyclopedic-VQA's Wikipedia knowledge base as store items, streamed page by page (``data.kb.format: evqa_wiki``).

Input: ``encyclopedic_kb_wiki.json`` (unzipped; ``.json.gz`` also works): one JSON object of about 2M
pages, ``wikipedia_url -> {title, section_titles, section_texts, image_urls, image_reference_descriptions,
image_section_indices, url}``. The file is read with :class:`~rablip.utils.json_stream.JsonStream`, one
page at a time, never whole.

Items, per page, in file order:
- one per section with text: id ``{wikipedia_url}#section={i}``, title = the page title, text = the
  section text, preceded by ``"{section title}: "`` when the section title is not the page title (section
  0's title is the page title). The section's first image (by ``image_section_indices``) is attached, which
  makes it an ``image+text`` item; a section without images is a ``text`` item.
- one per image: id ``{wikipedia_url}#image={j}``, the image URL with its reference description as text
  (an ``image`` item when the description is empty).
Images stay URLs (rablip never downloads; ``//host/...`` gets ``https:``), which the store keeps but cannot
show a model; with an image map (``data.kb.evqa_image_map``: a TSV of ``image URL<TAB>path`` under the KB
root, :func:`read_image_map`) a mapped image gets its local path and an unmapped one is left out (its
section becomes a ``text`` item; an empty map builds a text-only store). The question CSV's
``wikipedia_url`` (and ``evidence_section_id``) name these items: :func:`page_url` maps an item id back
to its page.

A page whose section lists (or image lists) differ in length, an image section index out of range, a
field of the wrong type is a DataError naming the file, the page key and the field. A page listed twice
gives duplicate item ids, which the store builder refuses (its duplicate check keeps memory flat).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from rablip.data.records import KBItem
from rablip.errors import DataError
from rablip.utils.json_stream import JsonStream, open_json_text
from rablip.utils.logging import get_logger

KB_WHAT = "Encyclopedic-VQA knowledge base"
SECTION_MARK = "#section="
IMAGE_MARK = "#image="
log = get_logger("rablip.data")


def section_item_id(url: str, index: int) -> str:
    """The item id of section ``index`` of page ``url``."""
    return f"{url}{SECTION_MARK}{index}"


def image_item_id(url: str, index: int) -> str:
    """The item id of image ``index`` of page ``url``."""
    return f"{url}{IMAGE_MARK}{index}"


def page_url(item_id: str) -> str:
    """The page an item id of this module belongs to (any other id is returned as it is)."""
    for mark in (SECTION_MARK, IMAGE_MARK):
        head, found, tail = item_id.rpartition(mark)
        if found and tail.isdecimal():
            return head
    return item_id


@dataclass
class EvqaImage:
    index: int
    """Position in the page's image lists (the item id keeps it, whether or not others are left out)."""
    url: str
    description: str
    section: int


@dataclass
class EvqaPage:
    """One checked page of the knowledge base."""

    url: str
    title: str
    section_titles: list[str]
    section_texts: list[str]
    images: list[EvqaImage]


def _string_list(page: dict, key: str, where: str, required: bool) -> list[Any]:
    if key not in page:
        if required:
            raise DataError(f"{where}: missing field {key!r}.")
        return []
    values = page[key]
    if not isinstance(values, list):
        raise DataError(f"{where}: field {key!r} should be a list, got {type(values).__name__}.")
    return values


def _image_url(url: Any, where: str, index: int) -> str | None:
    """An absolute URL (``//host`` gets ``https:``), None for an empty entry."""
    if not isinstance(url, str):
        raise DataError(f"{where}: field 'image_urls'[{index}] should be a string, got {type(url).__name__}.")
    if not url:
        return None
    if url.startswith("//"):
        return "https:" + url
    if "://" not in url:
        raise DataError(f"{where}: field 'image_urls'[{index}] {url[:80]!r} is not a URL.")
    return url


def parse_page(key: str, page: Any, where: str) -> EvqaPage:
    """Check one page record (see the module docstring) and return it with its images."""
    if not isinstance(page, dict):
        raise DataError(f"{where}: expected a page object, got {type(page).__name__}.")
    title = page.get("title")
    if not isinstance(title, str):
        raise DataError(f"{where}: field 'title' should be a string, got {type(title).__name__}.")
    titles = _string_list(page, "section_titles", where, required=True)
    texts = _string_list(page, "section_texts", where, required=True)
    if len(titles) != len(texts):
        raise DataError(f"{where}: field 'section_texts' has {len(texts)} entries but 'section_titles' has "
                        f"{len(titles)}; the section lists must have one entry per section.")
    for field_name, values in (("section_titles", titles), ("section_texts", texts)):
        for index, value in enumerate(values):
            if not isinstance(value, str):
                raise DataError(f"{where}: field {field_name!r}[{index}] should be a string, "
                                f"got {type(value).__name__}.")
    urls = _string_list(page, "image_urls", where, required=False)
    descriptions = _string_list(page, "image_reference_descriptions", where, required=False)
    indices = _string_list(page, "image_section_indices", where, required=False)
    for field_name, values in (("image_reference_descriptions", descriptions), ("image_section_indices", indices)):
        if len(values) != len(urls):
            raise DataError(f"{where}: field {field_name!r} has {len(values)} entries but 'image_urls' has "
                            f"{len(urls)}; the image lists must have one entry per image.")
    images = []
    for index, (url, description, section) in enumerate(zip(urls, descriptions, indices)):
        if not isinstance(description, str):
            raise DataError(f"{where}: field 'image_reference_descriptions'[{index}] should be a string.")
        if isinstance(section, bool) or not isinstance(section, int) or not 0 <= section < len(titles):
            raise DataError(f"{where}: field 'image_section_indices'[{index}] is {section!r}, not a section "
                            f"index (0 to {len(titles) - 1}).")
        absolute = _image_url(url, where, index)
        if absolute is not None:
            images.append(EvqaImage(index, absolute, description, section))
    return EvqaPage(key, title, list(titles), list(texts), images)


def page_items(page: EvqaPage, source: str) -> Iterator[KBItem]:
    """The section items, then the image items, of one page."""
    first_image: dict[int, str] = {}
    for image in page.images:
        first_image.setdefault(image.section, image.url)
    for index, (section_title, text) in enumerate(zip(page.section_titles, page.section_texts)):
        if not text.strip():
            continue
        shown = text if not section_title or section_title == page.title else f"{section_title}: {text}"
        image = first_image.get(index)
        yield KBItem(id=section_item_id(page.url, index), modality="image+text" if image else "text",
                     image=image, text=shown, title=page.title, source=source)
    for image in page.images:
        yield KBItem(id=image_item_id(page.url, image.index), modality="image+text" if image.description else "image",
                     image=image.url, text=image.description, title=page.title, source=source)


def read_image_map(path: str | os.PathLike) -> dict[str, str]:
    """``image URL -> local path`` from a TSV of two columns per line (no header; blank lines skipped)."""
    mapping: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                cells = line.rstrip("\r\n").split("\t")
                if len(cells) != 2 or not all(cells):
                    raise DataError(f"Encyclopedic-VQA image map {path}, line {line_number}: expected 'image URL<TAB>"
                                    f"path', got {len(cells)} column(s) {line.strip()[:80]!r}.")
                mapping[cells[0]] = cells[1]
    except FileNotFoundError:
        raise DataError(f"Encyclopedic-VQA image map not found: {path}. Check data.kb.evqa_image_map.") from None
    except UnicodeDecodeError:
        raise DataError(f"Encyclopedic-VQA image map {path} is not valid UTF-8. Re-save it as UTF-8.") from None
    return mapping


def localize_images(page: EvqaPage, image_map: dict[str, str]) -> int:
    """Replace the page's image URLs by their mapped paths, leaving unmapped images out; returns how many."""
    kept = [EvqaImage(image.index, image_map[image.url], image.description, image.section)
            for image in page.images if image.url in image_map]
    dropped = len(page.images) - len(kept)
    page.images = kept
    return dropped


def iter_evqa_wiki(paths: Sequence[str | os.PathLike], source: str = "evqa_wiki",
                   image_map: dict[str, str] | None = None) -> Iterator[KBItem]:
    """Stream the items of one or more knowledge-base files (each one JSON object of pages); with
    ``image_map``, images get local paths and unmapped ones are left out (see the module docstring)."""
    pages = dropped = 0
    for path in paths:
        with open_json_text(path, KB_WHAT) as handle:
            stream = JsonStream(handle, path, KB_WHAT)
            for key in stream.members():
                where = f"{KB_WHAT} {path}, page {key!r}"
                page = parse_page(key, stream.value(), where)
                if image_map is not None:
                    dropped += localize_images(page, image_map)
                yield from page_items(page, source)
                pages += 1
            stream.finish()
    log.info("read %d Encyclopedic-VQA knowledge-base pages%s", pages,
             f"; {dropped} images without a local copy in the image map were left out" if dropped else "")
