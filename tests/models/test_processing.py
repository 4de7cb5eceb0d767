"""The generator's processor (Collator), sample assembly and prompt templates: the model batch contract
for both LLM families."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BlipImageProcessor

from rablip.data.images import ImageLoader
from rablip.data.kb import KBStore
from rablip.data.kb_writer import build_kb_store
from rablip.data.records import KBItem, QAExample
from rablip.data.samples import make_qa_sample, make_selection_sample, pick_answer
from rablip.errors import ConfigError, DataError
from rablip.models import prompts
from rablip.models.processing import IGNORE_INDEX, Collator
from rablip.synthetic.tokenizer_training import train_tokenizer

NUM_QUERY = 4
IMAGE_SIZE = 16
FAMILIES = ("t5", "causal")

QUESTION = "what color is the double decker bus"
ITEMS = [
    KBItem(
        id="bus", modality="image+text", image="bus.png", title="London bus", text="a red double decker bus"
    ),
    KBItem(id="tower", modality="text", title="Eiffel Tower", text="the eiffel tower is a tower in paris"),
    KBItem(id="cat", modality="image", image="cat.png"),
]


def _corpus() -> list[str]:
    lines = [
        QUESTION,
        "red blue green yellow paris london tower bus cat dog horse 1999 year",
        prompts.qa_prompt(QUESTION, ["red", "blue", "green"]),
        prompts.select_prompt(QUESTION),
        prompts.select_target(1),
        prompts.select_target(2),
        prompts.select_target(3),
    ]
    for number, item in enumerate(ITEMS, start=1):
        lines.append(prompts.qa_reference_line(number, item.title, item.text))
        lines.append(prompts.select_reference_line(number, item.modality != "text", item.title, item.text))
        lines.append(prompts.qformer_instruction(QUESTION, prompts.item_caption(item.title, item.text)))
    return lines * 3


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict:
    """Trained tokenizer dirs (bert, t5, causal) and a saved BlipImageProcessor dir."""
    root = tmp_path_factory.mktemp("collate_assets")
    tokenizers = {
        kind: train_tokenizer(_corpus(), root / kind, kind=kind, vocab_size=400 if kind == "causal" else 200)
        for kind in ("bert", "t5", "causal")
    }
    processor = BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor.save_pretrained(str(root / "image_processor"))
    return {"root": root, "tokenizers": tokenizers, "processor": processor}


def _collator(saved: dict, family: str, **overrides) -> Collator:
    settings = dict(
        num_query_tokens=NUM_QUERY,
        is_encoder_decoder=family == "t5",
        max_references=3,
        max_input_length=512,
        max_target_length=16,
        qformer_max_length=64,
    )
    settings.update(overrides)
    tokenizers = saved["tokenizers"]
    return Collator(tokenizers["bert"], tokenizers[family], saved["processor"], **settings)


def _image(value: int) -> Image.Image:
    return Image.fromarray(np.full((20, 24, 3), value, dtype=np.uint8))


def _load(ref, record_id) -> Image.Image:
    return _image(200)


def _example(image: str | None = "q.png", **fields) -> QAExample:
    values = dict(id="q1", image=image, question=QUESTION, answers=["red", "red", "crimson"])
    values.update(fields)
    return QAExample(**values)


def _real(batch: dict, row: int, key: str = "input_ids") -> list[int]:
    """The unpadded ids of one row."""
    return batch[key][row][batch["attention_mask"][row].bool()].tolist()


def _image_runs(ids: list[int], image_token_id: int) -> list[tuple[int, int]]:
    """(start, length) of every run of image tokens."""
    runs, start = [], None
    for position, token in enumerate([*ids, -1]):
        if token == image_token_id and start is None:
            start = position
        elif token != image_token_id and start is not None:
            runs.append((start, position - start))
            start = None
    return runs


def _answer_text(tokenizer, labels: torch.Tensor) -> str:
    return tokenizer.decode(labels[labels != IGNORE_INDEX].tolist(), skip_special_tokens=True).strip()


def _three_samples():
    return [
        make_qa_sample(_example(), ITEMS[:2], _load),  # question image, image+text item, text item
        make_qa_sample(_example(image=None, answers=["blue"]), ITEMS[2:], _load),  # no question image
        make_qa_sample(_example(answers=["1999"]), [], _load),  # no references
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_shapes_slot_masks_and_qformer_instructions(saved, family):
    collator = _collator(saved, family)
    batch = collator(_three_samples())
    assert batch["pixel_values"].shape == (3, 3, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert batch["pixel_values"].dtype == torch.float32
    expected_mask = torch.tensor([[True, True, False], [False, True, False], [True, False, False]])
    assert torch.equal(batch["image_slot_mask"], expected_mask)
    assert batch["pixel_values"][~expected_mask].abs().sum() == 0
    assert (batch["pixel_values"][expected_mask].abs().flatten(1).sum(1) > 0).all()
    qformer_ids, qformer_mask = batch["qformer_input_ids"], batch["qformer_attention_mask"]
    assert qformer_ids.shape[:2] == (3, 3) and qformer_ids.shape == qformer_mask.shape
    # Right-padded: every mask row is ones then zeros.
    flat_mask = qformer_mask.reshape(-1, qformer_mask.shape[-1])
    assert torch.equal(flat_mask, flat_mask.sort(dim=1, descending=True).values)
    bert = saved["tokenizers"]["bert"]
    for row in range(3):
        for slot in range(3):
            text = bert.decode(
                qformer_ids[row, slot][qformer_mask[row, slot].bool()], skip_special_tokens=True
            )
            assert QUESTION in text
    assert "a red double decker bus" in bert.decode(qformer_ids[0, 1], skip_special_tokens=True)
    assert "caption" not in bert.decode(qformer_ids[0, 2], skip_special_tokens=True)  # text-only slot
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["input_ids"].dtype == torch.long


@pytest.mark.parametrize("family", FAMILIES)
def test_image_tokens_count_and_positions(saved, family):
    collator = _collator(saved, family)
    tokenizer = saved["tokenizers"][family]
    assert collator.image_token_id == tokenizer.convert_tokens_to_ids("<image>")
    batch = collator(_three_samples())
    for row, real_slots in enumerate(batch["image_slot_mask"].sum(1).tolist()):
        ids = _real(batch, row)
        assert ids.count(collator.image_token_id) == NUM_QUERY * real_slots
        assert all(length % NUM_QUERY == 0 for _, length in _image_runs(ids, collator.image_token_id))
    # Row 0: question image first (then the tokenizer's prefix, e.g. <s>), then reference 1's image
    # right before its line; reference 2 is text only.
    ids = _real(batch, 0)
    block = [collator.image_token_id] * NUM_QUERY
    prefix = collator.prefix_ids
    assert ids[: 2 * NUM_QUERY + len(prefix)] == block + prefix + block
    assert ids.count(collator.image_token_id) == 2 * NUM_QUERY
    after_second = tokenizer.decode(ids[2 * NUM_QUERY + len(prefix) :], skip_special_tokens=True).strip()
    assert after_second.startswith("Reference 1: London bus: a red double decker bus")
    text = tokenizer.decode(ids, skip_special_tokens=True)
    assert text.index("Reference 1") < text.index("Reference 2") < text.index("Question:")
    # Row 1: no question image; the only image block belongs to reference 1 (the image-only item).
    ids = _real(batch, 1)
    if family == "causal":  # the tokenizer's <s> is kept, after the question image as in InstructBLIP
        assert prefix == [tokenizer.bos_token_id] and ids[0] == tokenizer.bos_token_id
    else:
        assert prefix == [] and collator.suffix_ids == [tokenizer.eos_token_id]
    runs = _image_runs(ids, collator.image_token_id)
    assert len(runs) == 1
    before = tokenizer.decode(ids[: runs[0][0]], skip_special_tokens=True).strip()
    after = tokenizer.decode(ids[runs[0][0] + NUM_QUERY :], skip_special_tokens=True).strip()
    assert before == "" and after.startswith("Reference 1: image")


@pytest.mark.parametrize("family", FAMILIES)
def test_labels_cover_only_the_answer(saved, family):
    collator = _collator(saved, family)
    tokenizer = saved["tokenizers"][family]
    batch = collator(_three_samples())
    labels = batch["labels"]
    for row, answer in enumerate(["red", "blue", "1999"]):
        assert _answer_text(tokenizer, labels[row]) == answer
        labeled = labels[row][labels[row] != IGNORE_INDEX].tolist()
        assert labeled[-1] == tokenizer.eos_token_id
    if family == "causal":
        assert labels.shape == batch["input_ids"].shape
        labeled = labels != IGNORE_INDEX
        assert torch.equal(labels[labeled], batch["input_ids"][labeled])
        # The labeled tokens are the last real tokens of each (left-padded) row.
        for row in range(3):
            count = int(labeled[row].sum())
            assert labeled[row, -count:].all() and not labeled[row, :-count].any()
    else:
        assert labels.shape[0] == 3 and labels.shape[1] <= collator.max_target_length
        for row in range(3):  # inputs end with </s>, targets do not appear in them
            ids = _real(batch, row)
            assert ids[-1] == tokenizer.eos_token_id
            assert "Short answer:" in tokenizer.decode(ids, skip_special_tokens=True)
    assert torch.equal(batch["sample_weight"], torch.ones(3))
    assert torch.equal(batch["sample_kind"], torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_sides(saved, family):
    collator = _collator(saved, family)
    tokenizer = saved["tokenizers"][family]
    batch = collator(_three_samples())
    mask = batch["attention_mask"]
    shortest = int(mask.sum(1).argmin())
    assert mask[shortest].sum() < mask.shape[1]
    if family == "causal":  # left padding: the row ends with real tokens
        assert mask[:, -1].all() and not mask[shortest, 0]
        assert batch["input_ids"][shortest, 0] == tokenizer.pad_token_id
        assert (batch["labels"][mask == 0] == IGNORE_INDEX).all()
    else:  # right padding: the row starts with real tokens, labels padded with -100 on the right
        assert mask[:, 0].all() and not mask[shortest, -1]
        assert batch["input_ids"][shortest, -1] == tokenizer.pad_token_id
        labels = batch["labels"]
        assert (labels[:, 0] != IGNORE_INDEX).all()
        for row in labels:
            real = row != IGNORE_INDEX
            assert torch.equal(real, real.sort(descending=True).values)


@pytest.mark.parametrize("family", FAMILIES)
def test_truncation_shortens_references_but_keeps_question_and_images(saved, family, caplog):
    tokenizer = saved["tokenizers"][family]
    long_items = [
        KBItem(id="a", modality="image+text", image="a.png", title="London bus", text="red bus " * 60),
        KBItem(id="b", modality="text", title="Eiffel Tower", text="paris tower " * 60),
    ]
    sample = make_qa_sample(_example(), long_items, _load)
    untruncated = _collator(saved, family, max_input_length=4096)([sample])
    full_length = len(_real(untruncated, 0))
    if family == "causal":
        full_length -= int((untruncated["labels"][0] != IGNORE_INDEX).sum())
    limit = full_length // 2
    collator = _collator(saved, family, max_input_length=limit)
    with caplog.at_level(logging.WARNING, logger="rablip.models.prompt_packing"):
        batch = collator([sample])
    assert any("truncated" in record.message for record in caplog.records)
    ids = _real(batch, 0)
    target_length = 0 if family == "t5" else int((batch["labels"][0] != IGNORE_INDEX).sum())
    assert len(ids) - target_length <= limit
    assert ids.count(collator.image_token_id) == 2 * NUM_QUERY
    text = tokenizer.decode(ids, skip_special_tokens=True)
    assert prompts.qa_prompt(QUESTION) in text
    assert "Reference 1:" in text and "Reference 2:" in text
    assert text.count("tower") < 60 and text.count("bus") < 60
    assert _answer_text(tokenizer, batch["labels"][0]) == "red"
    with pytest.raises(DataError, match="max_input_length"):
        _collator(saved, family, max_input_length=2 * NUM_QUERY + 3)([sample])


@pytest.mark.parametrize("family", FAMILIES)
def test_target_truncated_to_max_target_length(saved, family):
    collator = _collator(saved, family, max_target_length=3)
    batch = collator([make_qa_sample(_example(), [], _load, target="red blue green yellow paris")])
    labeled = batch["labels"][0][batch["labels"][0] != IGNORE_INDEX].tolist()
    assert len(labeled) == 3 and labeled[-1] == saved["tokenizers"][family].eos_token_id


@pytest.mark.parametrize("family", FAMILIES)
def test_selection_samples_targets_weights_and_descriptions(saved, family):
    tokenizer = saved["tokenizers"][family]
    collator = _collator(saved, family)
    example = _example()
    qa = make_qa_sample(example, ITEMS[:2], _load)
    select = make_selection_sample(example, [ITEMS[1], ITEMS[0]], 1, 0.1, _load)
    assert select.relevant == 2 and select.target is None and select.kind == "select"
    batch = collator([qa, select])
    assert torch.allclose(batch["sample_weight"], torch.tensor([1.0, 0.1]))
    assert torch.equal(batch["sample_kind"], torch.tensor([0, 1]))
    assert _answer_text(tokenizer, batch["labels"][1]) == "Reference 2"
    text = tokenizer.decode(_real(batch, 1), skip_special_tokens=True)
    assert "Reference 1: text: Eiffel Tower: the eiffel tower is a tower in paris" in text
    assert "Reference 2: image with caption: London bus: a red double decker bus" in text
    assert "Relevant reference:" in text
    assert torch.equal(batch["image_slot_mask"][1], torch.tensor([True, False, True]))
    with pytest.raises(ValueError, match="relevant_index"):
        make_selection_sample(example, ITEMS[:2], 2, 0.1, _load)
    too_many = make_selection_sample(example, ITEMS, 0, 0.1, _load)
    with pytest.raises(DataError, match="max_references"):
        _collator(saved, family, max_references=2)([too_many])


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_mode_ends_with_the_answer_prefix(saved, family):
    tokenizer = saved["tokenizers"][family]
    train_batch = _collator(saved, family)(_three_samples())
    collator = _collator(saved, family).with_mode("generate")
    batch = collator(_three_samples())
    assert "labels" not in batch and "sample_weight" not in batch
    for row in range(3):
        ids = _real(batch, row)
        if family == "causal":
            assert tokenizer.decode(ids, skip_special_tokens=True).endswith("Short answer:")
            target_length = int((train_batch["labels"][row] != IGNORE_INDEX).sum())
            assert ids == _real(train_batch, row)[:-target_length]
        else:
            assert ids == _real(train_batch, row)
    unanswered = make_qa_sample(_example(answers=[]), [], _load)
    assert unanswered.target is None
    collator([unanswered])
    with pytest.raises(DataError, match="no target"):
        _collator(saved, family)([unanswered])


@pytest.mark.parametrize("family", FAMILIES)
def test_score_mode_one_row_per_choice(saved, family):
    tokenizer = saved["tokenizers"][family]
    collator = _collator(saved, family, answer_from_choices=True, mode="score")
    choices = ["red", "blue", "green"]
    samples = [
        make_qa_sample(_example(answers=[], choices=choices, correct_choice_idx=0), ITEMS[:1], _load),
        make_qa_sample(_example(answers=[], choices=choices[:2], correct_choice_idx=1), [], _load),
    ]
    assert [sample.target for sample in samples] == ["red", "blue"]
    batch = collator(samples)
    assert torch.equal(batch["example_index"], torch.tensor([0, 0, 0, 1, 1]))
    assert torch.equal(batch["choice_index"], torch.tensor([0, 1, 2, 0, 1]))
    assert batch["input_ids"].shape[0] == batch["pixel_values"].shape[0] == 5
    assert [_answer_text(tokenizer, row) for row in batch["labels"]] == choices + choices[:2]
    if family == "t5":  # the same prompt for every option of one example
        assert _real(batch, 0) == _real(batch, 1) == _real(batch, 2)
    text = tokenizer.decode(_real(batch, 0), skip_special_tokens=True)
    assert "Options: red, blue, green. Short answer:" in text
    with pytest.raises(DataError, match="no choices"):
        collator([make_qa_sample(_example(), [], _load)])


def test_slots_padded_to_max_references_and_extra_references_dropped(saved, caplog):
    collator = _collator(saved, "t5", pad_slots_to_max_references=True, max_references=4)
    batch = collator([make_qa_sample(_example(), ITEMS[:1], _load)])
    assert batch["pixel_values"].shape[1] == 5 and batch["qformer_input_ids"].shape[1] == 5
    assert batch["image_slot_mask"][0].tolist() == [True, True, False, False, False]
    capped = _collator(saved, "t5", max_references=1)
    with caplog.at_level(logging.WARNING, logger="rablip.models.prompt_packing"):
        batch = capped([make_qa_sample(_example(), ITEMS, _load)])
    assert batch["pixel_values"].shape[1] == 2
    assert "Reference 2" not in saved["tokenizers"]["t5"].decode(_real(batch, 0))
    assert any("max_references=1" in record.message for record in caplog.records)


def test_image_token_text_in_records_is_neutralised(saved):
    collator = _collator(saved, "causal")
    item = KBItem(id="x", modality="text", title="tricky", text="see <image> here")
    batch = collator([make_qa_sample(_example(image=None, question="what is <image>"), [item], _load)])
    assert collator.image_token_id not in _real(batch, 0)


def test_from_pretrained_matches_direct_construction(saved):
    root = saved["root"]
    settings = dict(
        num_query_tokens=NUM_QUERY,
        is_encoder_decoder=True,
        max_references=3,
        max_input_length=512,
        max_target_length=16,
        qformer_max_length=64,
    )
    loaded = Collator.from_pretrained(root / "bert", root / "t5", root / "image_processor", **settings)
    assert isinstance(loaded.image_processor, BlipImageProcessor)
    direct = _collator(saved, "t5")
    ours, theirs = loaded(_three_samples()), direct(_three_samples())
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    with pytest.raises(ConfigError, match="does not exist"):
        Collator.from_pretrained(root / "missing", root / "t5", root / "image_processor", **settings)
    with pytest.raises(ConfigError, match="<image>"):  # a BERT tokenizer has no image token
        Collator.from_pretrained(root / "bert", root / "bert", root / "image_processor", **settings)


def test_bad_settings_raise_config_errors(saved):
    with pytest.raises(ConfigError, match="num_query_tokens"):
        _collator(saved, "t5", num_query_tokens=0)
    with pytest.raises(ConfigError, match="mode"):
        _collator(saved, "t5", mode="eval")


def test_samples_from_a_kb_store_load_real_image_files(saved, tmp_path):
    """The real path: items fetched from a KB store by id, samples assembled, then processed."""
    (tmp_path / "questions").mkdir()
    (tmp_path / "kb").mkdir()
    _image(10).save(tmp_path / "questions" / "q.png")
    _image(250).save(tmp_path / "kb" / "bus.png")
    _image(90).save(tmp_path / "kb" / "cat.png")
    build_kb_store(iter(ITEMS), tmp_path / "store", kb_root=tmp_path / "kb", show_progress=False)
    store = KBStore.open(tmp_path / "store")
    question_loader, kb_loader = ImageLoader(tmp_path / "questions"), ImageLoader(store.root)
    examples = [_example(), _example(image=None, answers=["blue"])]
    fetched = [store.get_many(ids) for ids in (["cat", "tower", "bus"], [])]
    assert [[item.id for item in items] for items in fetched] == [["cat", "tower", "bus"], []]
    samples = [
        make_qa_sample(example, items, question_loader.load, load_item_image=kb_loader.load)
        for example, items in zip(examples, fetched, strict=True)
    ]
    batch = _collator(saved, "t5")(samples)
    assert batch["image_slot_mask"].tolist() == [[True, True, False, True], [False, False, False, False]]
    assert kb_loader.report().loaded == 2 and question_loader.report().loaded == 1
    # Brighter source pixels stay brighter after normalisation: slot order follows the id order.
    means = batch["pixel_values"][0].mean(dim=(1, 2, 3))
    assert means[0] < means[1] < means[3]
    with pytest.raises(DataError, match="not in the knowledge-base store"):
        store.get_many(["cat", "missing"])
    with pytest.raises(DataError, match="does not exist"):
        make_qa_sample(_example(image="missing.png"), [], question_loader.load)


def test_pick_answer_and_prompt_templates():
    assert pick_answer(_example(answers=["a", "b", "b", "a", "c"])) == "a"  # tie: first seen
    assert pick_answer(_example(answers=["a", "b", "b"])) == "b"
    assert pick_answer(_example(answers=[], choices=["x", "y"], correct_choice_idx=1)) == "y"
    assert pick_answer(_example(answers=[])) is None
    assert prompts.qa_reference_line(1, "Title", "some\n text") == "Reference 1: Title: some text"
    assert prompts.qa_reference_line(3, "", "") == "Reference 3: image"
    assert prompts.select_reference_line(2, True, "", "a cat") == "Reference 2: image with caption: a cat"
    assert prompts.select_reference_line(1, False, "T", "fact") == "Reference 1: text: T: fact"
    assert prompts.select_target(2) == "Reference 2"
    with pytest.raises(ValueError):
        prompts.select_target(0)
    assert prompts.qformer_instruction("q?") == "Question: q?"
    assert prompts.qformer_instruction("q?", "cap") == "Question: q? Image caption: cap"
    assert prompts.qa_prompt("q?", ["a", "b"]) == "Question: q? Options: a, b. Short answer:"


def _tiny_instructblip(saved: dict, family: str, collator: Collator):
    """A 1-layer, 16-wide transformers InstructBLIP over the test tokenizers (the reference model)."""
    from transformers import InstructBlipConfig, InstructBlipForConditionalGeneration

    llm, bert = saved["tokenizers"][family], saved["tokenizers"]["bert"]
    special = dict(pad_token_id=llm.pad_token_id, eos_token_id=llm.eos_token_id, vocab_size=len(llm))
    if family == "t5":
        text = dict(model_type="t5", d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, **special)
        text["decoder_start_token_id"] = llm.pad_token_id
    else:
        text = dict(model_type="opt", hidden_size=16, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2)
        text.update(
            word_embed_proj_dim=16, max_position_embeddings=512, bos_token_id=llm.bos_token_id, **special
        )
    config = InstructBlipConfig(
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=16,
            patch_size=8,
        ),
        qformer_config=dict(
            vocab_size=len(bert),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            encoder_hidden_size=16,
            max_position_embeddings=128,
        ),
        text_config=text,
        num_query_tokens=NUM_QUERY,
        image_token_index=collator.image_token_id,
    )
    torch.manual_seed(0)
    return InstructBlipForConditionalGeneration(config).eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_single_slot_batch_runs_through_transformers_instructblip(saved, family):
    """With one slot (no references) the batch is exactly what transformers' InstructBLIP takes."""
    collator = _collator(saved, family, max_references=0)
    samples = [make_qa_sample(_example(answers=[a]), [], _load) for a in ("red", "blue green")]
    model = _tiny_instructblip(saved, family, collator)
    batch = collator(samples)

    def one_slot(b: dict) -> dict:
        inputs = {key: b[key] for key in ("input_ids", "attention_mask")}
        inputs.update(
            {key: b[key][:, 0] for key in ("pixel_values", "qformer_input_ids", "qformer_attention_mask")}
        )
        return inputs

    with torch.no_grad():
        output = model(**one_slot(batch), labels=batch["labels"])
        assert torch.isfinite(output.loss)
        generated = model.generate(**one_slot(collator.with_mode("generate")(samples)), max_new_tokens=3)
    assert generated.shape[0] == 2
