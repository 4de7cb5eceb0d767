"""Sample assembly: one QA example and its knowledge items (already chosen and ordered by the caller:
retrieval, ASKG mixing and shuffling belong to training) become a :class:`Sample` with decoded images
(or precomputed vision features) and its target.

What a sample holds is decided here: the question and its image, references 1..k in order, the
answer to train on (:func:`pick_answer`), and for an ASKG selection sample which reference is the
relevant one. How it is written for the model (prompt text, tokens, pixels) is the processor's
business (:mod:`rablip.models.processing`); nothing here tokenizes or formats a prompt.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from rablip.data.images import ImageRef
from rablip.data.records import KBItem, QAExample

SAMPLE_KINDS = {"qa": 0, "select": 1}
"""Sample kind -> the id the batch's ``sample_kind`` tensor carries."""

LoadImage = Callable[[ImageRef, str], "Image.Image | None"]
"""``(image reference, record id) -> RGB image or None``, e.g. ``ImageLoader(root).load``."""


@dataclass
class Reference:
    """One knowledge item in a sample, with its decoded image (None for text items or skipped images),
    or instead the vision encoder's patch features (P, D) of that image, precomputed."""

    item: KBItem
    image: Image.Image | None = None
    features: torch.Tensor | None = None

    @property
    def has_image(self) -> bool:
        """Whether the reference fills an image slot (a decoded image or its precomputed features)."""
        return self.image is not None or self.features is not None


@dataclass
class Sample:
    """One row of a batch before processing: question, image, ordered references and target."""

    question: str
    image: Image.Image | None
    references: list[Reference]
    target: str | None
    """The answer to train on (``qa``); None at inference and for ``select`` samples."""
    kind: str = "qa"
    """``qa`` or ``select`` (ASKG relevance selection)."""
    weight: float = 1.0
    choices: list[str] | None = None
    example_id: str = ""
    relevant: int | None = None
    """``select`` samples only: the 1-based number of the relevant reference, the one the target names
    (the processor writes it as the prompt templates' selection target, ``Reference N``)."""

    def __post_init__(self) -> None:
        if self.kind not in SAMPLE_KINDS:
            raise ValueError(
                f"sample {self.example_id!r}: kind must be one of {tuple(SAMPLE_KINDS)}, got {self.kind!r}"
            )
        if self.kind == "select" and not (
            isinstance(self.relevant, int) and 1 <= self.relevant <= len(self.references)
        ):
            raise ValueError(
                f"selection sample {self.example_id!r}: relevant must number one of its "
                f"{len(self.references)} references (1-based), got {self.relevant!r}"
            )


def pick_answer(example: QAExample) -> str | None:
    """The training target of an example: its most frequent answer (first seen wins a tie),
    else the correct multiple-choice option, else None (no answer known)."""
    if example.answers:
        return Counter(example.answers).most_common(1)[0][0]
    if example.choices is not None and example.correct_choice_idx is not None:
        return example.choices[example.correct_choice_idx]
    return None


def item_has_image(item: KBItem) -> bool:
    """Whether a knowledge item's image goes into an image slot (it has one and is not a text item)."""
    return item.modality != "text" and item.image is not None


def _load_references(
    items: Sequence[KBItem], load_item_image: LoadImage, item_features: Sequence[torch.Tensor | None] | None = None,
    view: Image.Image | None = None,
) -> list[Reference]:
    """References of ``items``; an item with features in ``item_features`` (aligned with ``items``) keeps
    them and its image is not decoded. With ``view`` (the question image), a text item gets it as its image:
    the processor then gives the reference an image slot whose Q-Former instruction holds the item's text."""
    if item_features is not None and len(item_features) != len(items):
        raise ValueError(f"{len(item_features)} feature entries for {len(items)} items")
    references = []
    for position, item in enumerate(items):
        has_image = item_has_image(item)
        features = item_features[position] if item_features is not None and has_image else None
        if features is not None:
            references.append(Reference(item, None, features))
        elif has_image:
            references.append(Reference(item, load_item_image(item.image, item.id)))
        else:
            references.append(Reference(item, view))
    return references


def _question_image(example: QAExample, load_image: LoadImage) -> Image.Image | None:
    return load_image(example.image, example.id) if example.image is not None else None


def make_qa_sample(
    example: QAExample,
    items: Sequence[KBItem],
    load_image: LoadImage,
    *,
    load_item_image: LoadImage | None = None,
    target: str | None = None,
    item_features: Sequence[torch.Tensor | None] | None = None,
    reference_views: bool = False,
) -> Sample:
    """A QA sample: ``items`` become references 1..k in the given order; the target is ``target``
    or :func:`pick_answer`. ``load_item_image`` (default ``load_image``) decodes item images, so
    question images and KB images can live under different roots. ``item_features`` (aligned with
    ``items``, e.g. from the feature cache) gives precomputed vision features that replace an item's
    image; None entries (and no list at all) mean: decode the image. ``reference_views``: every text reference
    is shown with the question image (config ``prompt.reference_views``)."""
    image = _question_image(example, load_image)
    return Sample(
        question=example.question,
        image=image,
        references=_load_references(items, load_item_image or load_image, item_features,
                                    image if reference_views else None),
        target=target if target is not None else pick_answer(example),
        kind="qa",
        weight=1.0,
        choices=list(example.choices) if example.choices is not None else None,
        example_id=example.id,
    )


def make_selection_sample(
    example: QAExample,
    items: Sequence[KBItem],
    relevant_index: int,
    weight: float,
    load_image: LoadImage,
    *,
    load_item_image: LoadImage | None = None,
    item_features: Sequence[torch.Tensor | None] | None = None,
    reference_views: bool = False,
) -> Sample:
    """An ASKG relevance-selection sample whose target names ``items[relevant_index]``: its
    ``relevant`` is ``relevant_index + 1`` (the processor trains on ``Reference N``); ``weight``
    scales its loss (e.g. 0.1). ``item_features`` and ``reference_views`` as in :func:`make_qa_sample`."""
    if not 0 <= relevant_index < len(items):
        raise ValueError(
            f"example {example.id!r}: relevant_index {relevant_index} does not index its {len(items)} items"
        )
    image = _question_image(example, load_image)
    return Sample(
        question=example.question,
        image=image,
        references=_load_references(items, load_item_image or load_image, item_features,
                                    image if reference_views else None),
        target=None,
        kind="select",
        weight=float(weight),
        example_id=example.id,
        relevant=relevant_index + 1,
    )
