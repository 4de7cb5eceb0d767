"""The two record types every loader produces and every later stage consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rablip.data.images import StoredImage

MODALITIES = ("image", "text", "image+text")


@dataclass
class QAExample:
    """One question about one image, as every benchmark loader returns it."""

    id: str
    """Question id as a string (OK-VQA's int ids are kept as their decimal string)."""
    image: str | bytes | None
    """Image reference: a path (absolute, or relative to the loader's image root) or encoded bytes."""
    question: str
    answers: list[str] = field(default_factory=list)
    """Ground-truth answers (OK-VQA: the 10 annotator answers; empty for test-style splits)."""
    choices: list[str] | None = None
    """Multiple-choice options (A-OKVQA)."""
    correct_choice_idx: int | None = None
    question_type: str | None = None
    relevant_ids: list[str] | None = None
    """Ids of knowledge items known to be relevant (WebQA positive facts, synthetic world)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else the source carries (answer_type, rationales, split, entity, ...)."""


@dataclass
class KBItem:
    """One knowledge-base item: an image, a text, or an image with its text."""

    id: str
    modality: str
    """One of ``image``, ``text``, ``image+text``."""
    image: str | bytes | StoredImage | None = None
    """Relative path under the KB root, encoded image bytes, or an image read on demand (WebQA's
    imgs.tsv: :class:`rablip.data.webqa.TSVImage`); None for text items."""
    text: str = ""
    title: str = ""
    """Title or entity name."""
    source: str = ""
    """Where the item came from (dataset name, file)."""

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"KBItem {self.id!r}: modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.modality != "text" and self.image is None:
            raise ValueError(f"KBItem {self.id!r}: modality {self.modality!r} needs an image")
