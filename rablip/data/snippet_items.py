"""Knowledge snippets (RORA-VLM) as sample references: one snippet is one reference.

A snippet is anchored on an image item that two-stage retrieval found with the question image
(:mod:`rablip.retrieval.snippets`); the text items that the question, expanded with the anchor's
entity name, found for that entity are attached to it. The generator meets a snippet as ONE
reference: the anchor's image in an image slot, followed by one text, ``entity: description``
(the anchor's title and its own text) and then the attached texts, in retrieval order. Both
generator families take references as image slots plus reference text (InstructBLIP: the image in a
Q-Former slot and the text as a ``Reference N:`` line; LLaVA: the refined visual block followed by
that line), so a snippet needs no new prompt machinery: it is a composite
:class:`~rablip.data.records.KBItem` whose id is the anchor's id.

Because the composite keeps the anchor's id and image, everything keyed by item id keeps working:
retrieval metrics (recall@k counts the anchors: stage 1), the frozen-feature cache (the anchor's
image features), ASKG relevance and counterfactual swaps (on the composite's text).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rablip.data.kb import KBStore
from rablip.data.records import KBItem

SnippetTexts = Mapping[str, Sequence[str]]
"""Anchor (image item) id -> ids of the text items attached to its snippet, best first."""
TEXT_SEPARATOR = " "
"""Between the description and each attached text in a snippet's text."""


def snippet_text(description: str, texts: Sequence[str]) -> str:
    """The text of a snippet after its entity name: the description, then each attached text, each
    stripped, empty parts left out, joined by :data:`TEXT_SEPARATOR`."""
    return TEXT_SEPARATOR.join(part for part in (text.strip() for text in (description, *texts)) if part)


def snippet_item(anchor: KBItem, texts: Sequence[KBItem]) -> KBItem:
    """The composite reference of one snippet: the anchor's id, image, title (the entity name) and
    source, and the text ``description + attached texts`` (:func:`snippet_text`). A text anchor (no
    image) stays a text item; an image-only anchor with texts becomes ``image+text``."""
    text = snippet_text(anchor.text, [item.text for item in texts])
    modality = anchor.modality if anchor.modality == "text" or not text else "image+text"
    return KBItem(id=anchor.id, modality=modality, image=anchor.image, text=text, title=anchor.title,
                  source=anchor.source)


def reference_items(kb: KBStore, ids: Sequence[str], texts: SnippetTexts | None = None) -> list[KBItem]:
    """The knowledge items of references ``ids``, in order: an id with attached texts in ``texts``
    becomes its snippet (:func:`snippet_item`), any other id its plain KB item (an anchor without
    attached texts, a random noise snippet not among the question's anchors, or a reference that is no
    snippet at all; an image item's text is then already its description, written after its title).
    Every item is read in one gather."""
    ids = list(ids)
    texts = texts or {}
    attached = [text_id for item_id in ids for text_id in texts.get(item_id, ())]
    items = kb.get_many(ids + attached)
    plain, extra = items[:len(ids)], iter(items[len(ids):])
    out = []
    for item in plain:
        wanted = texts.get(item.id, ())
        out.append(snippet_item(item, [next(extra) for _ in wanted]) if wanted else item)
    return out
