"""prompt.reference_views: each text reference is shown with the question image, seen through its text."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BlipImageProcessor

from rablip.config.load import load_config
from rablip.data.records import KBItem, QAExample
from rablip.data.samples import make_qa_sample, make_selection_sample
from rablip.errors import ConfigError
from rablip.models import prompts
from rablip.models.processing import Collator
from rablip.synthetic.tokenizer_training import train_tokenizer

QUESTION = "what does the red creature eat"
ITEMS = [KBItem(id="facts", modality="text", title="zorb", text="the zorb is a red star and eats moss"),
         KBItem(id="look", modality="image+text", image="zorb.png", title="zorb", text="a red star"),
         KBItem(id="other", modality="text", title="blix", text="the blix is a blue circle and eats fish")]


@pytest.fixture(scope="module")
def collator(tmp_path_factory) -> Collator:
    root = tmp_path_factory.mktemp("views")
    corpus = [QUESTION, prompts.qa_prompt(QUESTION), prompts.select_prompt(QUESTION), prompts.select_target(1)]
    for number, item in enumerate(ITEMS, start=1):
        corpus += [prompts.qa_reference_line(number, item.title, item.text),
                   prompts.qformer_instruction(QUESTION, prompts.item_caption(item.title, item.text))]
    bert = train_tokenizer(corpus * 3, root / "bert", kind="bert", vocab_size=200)
    causal = train_tokenizer(corpus * 3, root / "causal", kind="causal", vocab_size=300)
    return Collator(bert, causal, BlipImageProcessor(size={"height": 16, "width": 16}), num_query_tokens=2,
                    is_encoder_decoder=False, max_references=3, max_input_length=256, max_target_length=8,
                    qformer_max_length=48)


def _load(ref, record_id) -> Image.Image:
    value = 40 if ref == "q.png" else 220
    return Image.fromarray(np.full((16, 16, 3), value, dtype=np.uint8))


EXAMPLE = QAExample(id="q1", image="q.png", question=QUESTION, answers=["moss"])


def test_text_references_get_the_question_image_seen_through_their_text(collator):
    plain = collator([make_qa_sample(EXAMPLE, ITEMS, _load)])
    viewed = collator([make_qa_sample(EXAMPLE, ITEMS, _load, reference_views=True)])
    assert plain["image_slot_mask"].tolist() == [[True, False, True, False]]
    assert viewed["image_slot_mask"].tolist() == [[True, True, True, True]]
    pixels = viewed["pixel_values"][0]
    assert torch.equal(pixels[1], pixels[0]) and torch.equal(pixels[3], pixels[0]), "text slots: the question image"
    assert not torch.equal(pixels[2], pixels[0]), "an image item keeps its own image"
    bert = collator.qformer_tokenizer
    for slot, item in ((1, ITEMS[0]), (3, ITEMS[2])):
        text = bert.decode(viewed["qformer_input_ids"][0, slot], skip_special_tokens=True)
        assert QUESTION in text and item.text in text
    image_token = collator.image_token_id
    assert (viewed["input_ids"] == image_token).sum() == 4 * 2 and (plain["input_ids"] == image_token).sum() == 2 * 2
    selection = make_selection_sample(EXAMPLE, ITEMS[::2], 0, 0.1, _load, reference_views=True)
    assert all(reference.image is not None for reference in selection.references)


def test_reference_views_need_the_rablip_template():
    assert load_config("configs/experiment/synthetic_finetune.yaml",
                       ["prompt.reference_views=true"]).prompt.reference_views
    with pytest.raises(ConfigError, match="prompt.reference_views"):
        load_config("configs/experiment/synthetic_finetune.yaml",
                    ["prompt.reference_views=true", "prompt.template=release"])
