"""RORA-VLM's query-oriented visual token refinement on LLaVA's visual tokens: the model keeps exactly
the tokens the paper's formulas pick (top-m question-image tokens by ⟨x, t⟩, then per retrieved image
the top-m by s_j = Σ_i ⟨x_query,i, x_retrieved,j⟩ over the kept ones), in their original order; the
LLM reads exactly those; top_m >= tokens per image changes nothing; the processor emits top_m image
tokens per image and the question's token ids; ``model.refine.space`` is checked and reaches the model."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from rablip.config.load import CONFIGS_DIR, load_config
from rablip.data.records import KBItem
from rablip.data.samples import Reference, Sample
from rablip.errors import ConfigError
from rablip.evaluation.predict import choose_answers, generate_answers
from rablip.models.factory import load_generator
from rablip.models.llava import RablipLlavaForConditionalGeneration
from rablip.models.llava_refine import refinement_indices
from rablip.models.processing import build_collator
from tests.models.tiny_llava import build_tiny_llava

TOKENS = 16  # image tokens per image of the 56-px tiny LLaVA (14-px patches, CLS dropped)
TOP_M = 5
SLOTS = [[True, True, True], [True, False, True], [False, True, True]]  # the last row: no question image


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("llava_refine"), seed=5, image_size=56)


def _model(path, top_m=None, space="projected") -> RablipLlavaForConditionalGeneration:
    return RablipLlavaForConditionalGeneration.from_pretrained(path, refine_top_m=top_m, refine_space=space).eval()


def _batch(config, per_image: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Per real slot a block of ``per_image`` image tokens and two snippet tokens, then the question;
    left-padded; the question's token ids right-padded (row 1 is shorter)."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.tensor(SLOTS)
    pixel_values = torch.randn(*mask.shape, 3, 56, 56, generator=generator)
    pixel_values[~mask] = 0.0
    rows = []
    for real_slots in mask.tolist():
        ids = [1]
        for real in real_slots:
            ids += ([config.image_token_index] * per_image if real else []) + [20, 21]
        rows.append(ids + [30, 31, 32])
    length = max(len(row) for row in rows)
    question_ids = torch.randint(5, 40, (len(rows), 5), generator=generator)
    question_mask = torch.ones_like(question_ids)
    question_mask[1, 3:] = 0
    question_ids[1, 3:] = 3
    return {"pixel_values": pixel_values, "image_slot_mask": mask,
            "input_ids": torch.tensor([[3] * (length - len(row)) + row for row in rows]),
            "attention_mask": torch.tensor([[0] * (length - len(row)) + [1] * len(row) for row in rows]),
            "question_ids": question_ids, "question_mask": question_mask}


def _top(scores: torch.Tensor, m: int) -> list[int]:
    ranked = scores.argsort(descending=True)
    assert scores[ranked[m - 1]] - scores[ranked[m]] > 1e-4 * scores.abs().max()  # no near tie: a stable test
    return sorted(ranked[:m].tolist())


def _question(model, batch, b: int) -> torch.Tensor:
    """t: the mean LLM input embedding of example b's question tokens."""
    ids = batch["question_ids"][b][batch["question_mask"][b].bool()]
    return model.get_input_embeddings()(ids).float().mean(dim=0)


def _by_text(x: torch.Tensor, t: torch.Tensor, cosine: bool) -> torch.Tensor:
    scores = torch.stack([x[i] @ t for i in range(TOKENS)])  # <x_i, t>
    return scores / x.norm(dim=-1) if cosine else scores


@torch.no_grad()
def _reference(model, batch, m: int, space: str, cosine: bool = False):
    """Per real (example, slot): the kept token indices straight from the formulas (explicit sums), and
    the projected tokens of every real slot. ``cosine``: a wrong variant, to show the test tells them apart."""
    keep, projected, vision = {}, {}, {}
    for b, real_slots in enumerate(batch["image_slot_mask"].tolist()):
        t = _question(model, batch, b)
        for s in (s for s, real in enumerate(real_slots) if real):
            pixels = batch["pixel_values"][b, s].unsqueeze(0)
            projected[b, s] = model.encode_images(pixels)[0].float()
            vision[b, s] = model.vision_features(pixels)[0].float()
        compared = projected if space == "projected" else vision
        if real_slots[0]:
            kept_query = keep[b, 0] = _top(_by_text(projected[b, 0], t, cosine), m)
        for s in (s for s, real in enumerate(real_slots) if real and s > 0):
            if not real_slots[0]:  # no question image: scored by the question text
                keep[b, s] = _top(_by_text(projected[b, s], t, cosine), m)
                continue
            xq, xr = compared[b, 0], compared[b, s]
            keep[b, s] = _top(torch.stack([sum(xq[i] @ xr[j] for i in kept_query) for j in range(TOKENS)]), m)
    return keep, projected


def test_the_selection_follows_the_papers_formulas_on_hand_built_tokens():
    # question image, tokens in the question's (projected) space; t = (1, 0)
    query = torch.tensor([[0.5, 0.0], [3.0, 0.0], [0.0, -20.0], [2.0, 5.0]])  # <x,t>: .5 3 0 2 -> keep 1, 3
    retrieved = torch.tensor([[1.0, 0.0], [0.0, 1.2], [-1.0, -1.0], [0.9, 0.0]])  # s_j vs (5,5): 5 6 -10 4.5
    later = torch.tensor([[0.0, 0.0], [5.0, 5.0], [0.1, 0.0], [9.0, 9.0]])  # top-2 is (3, 1): kept as (1, 3)
    tokens = torch.stack([query, retrieved, later, retrieved])
    question = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    batch_index, slot_index = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 1, 2, 1])  # example 1: no question image
    kept = refinement_indices(tokens, tokens, question, batch_index, slot_index, 2)
    # cosine would keep (0, 1) of the question image; summing over ALL query tokens would keep (0, 3) of
    # the retrieved one, as would scoring it by the text (which example 1, lacking a question image, does)
    assert kept.tolist() == [[1, 3], [0, 1], [1, 3], [0, 3]]
    # step 2 in another space: the kept query tokens' own vectors there are summed
    compared = tokens.clone()
    compared[0] = torch.tensor([[9.0, 9.0], [1.0, -1.0], [9.0, 9.0], [0.0, -2.0]])  # anchor (1, -3)
    kept = refinement_indices(tokens, compared, question, batch_index, slot_index, 2)
    assert kept.tolist() == [[1, 3], [0, 2], [0, 2], [0, 3]]  # step 1 still by the text, in ``tokens``
    with pytest.raises(ValueError, match="between 1 and the tokens per image"):
        refinement_indices(tokens, tokens, question, batch_index, slot_index, 5)


@pytest.mark.parametrize("space", ["projected", "vision"])
def test_the_model_keeps_the_reference_tokens_in_order_and_the_llm_reads_them(llava_dir, space):
    model = _model(llava_dir, TOP_M, space)
    assert model.config.num_query_tokens == TOP_M and model.config.patch_tokens == TOKENS
    batch = _batch(model.config, TOP_M)
    keep, projected = _reference(model, batch, TOP_M, space)
    # the reference discriminates: not the first m, not cosine, not "every slot by the text"
    assert any(kept != list(range(TOP_M)) for kept in keep.values())
    assert keep != _reference(model, batch, TOP_M, space, cosine=True)[0]
    with torch.no_grad():  # retrieved images of examples with a question image are not scored by the text
        assert any(keep[b, s] != _top(_by_text(projected[b, s], _question(model, batch, b), False), TOP_M)
                   for b, s in keep if SLOTS[b][0] and s > 0)

    inputs = {key: batch[key] for key in ("pixel_values", "image_slot_mask", "input_ids", "question_ids", "question_mask")}
    with torch.no_grad():
        embeds = model.embed_inputs(**inputs)
    expected = []
    for b, real_slots in enumerate(SLOTS):
        positions = (batch["input_ids"][b] == model.config.image_token_index).nonzero().flatten()
        blocks = positions.view(-1, TOP_M)
        slots = [s for s, real in enumerate(real_slots) if real]
        assert len(blocks) == len(slots)
        for block, s in zip(blocks, slots, strict=True):
            chosen = projected[b, s][keep[b, s]]
            assert torch.allclose(embeds[b, block].float(), chosen, atol=1e-5), (b, s)
            expected.append(chosen)

    # the logits are those of a forward whose image tokens hold the reference's tokens, inserted by hand
    with torch.no_grad():
        by_hand = model.get_input_embeddings()(batch["input_ids"])
        image_positions = (batch["input_ids"] == model.config.image_token_index).unsqueeze(-1)
        by_hand = by_hand.masked_scatter(image_positions, torch.cat(expected).to(by_hand.dtype))
        hidden = model.language_model(inputs_embeds=by_hand, attention_mask=batch["attention_mask"]).last_hidden_state
        got = model(**batch).logits
    assert torch.allclose(got, model.lm_head(hidden), atol=1e-5)


def test_refinement_trains_the_projector_and_needs_the_question(llava_dir):
    model = _model(llava_dir, TOP_M)
    batch = _batch(model.config, TOP_M)
    labels = batch["input_ids"].clone()
    labels[:, :-3] = -100
    model(**batch, labels=labels, return_logits=False).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.language_projection.parameters())
    without = {key: value for key, value in batch.items() if not key.startswith("question_")}
    with pytest.raises(ValueError, match="question_ids"):
        model(**without)


@pytest.mark.parametrize("top_m", [TOKENS, 40])
def test_top_m_of_at_least_the_tokens_per_image_keeps_everything(llava_dir, top_m):
    refined, plain = _model(llava_dir, top_m), _model(llava_dir)
    assert refined.config.num_query_tokens == plain.config.num_query_tokens == TOKENS
    batch = _batch(plain.config, TOKENS)
    with torch.no_grad():
        assert torch.equal(refined(**batch).logits, plain(**batch).logits)


def _cfg(llava_dir, *overrides: str):
    return load_config(CONFIGS_DIR / "model" / "llava15_7b.yaml",
                       [f"model.checkpoint={llava_dir}", "model.lora.r=0", *overrides])


def _samples() -> list[Sample]:
    red, blue = Image.new("RGB", (60, 50), "red"), Image.new("RGB", (50, 60), "blue")
    references = [Reference(KBItem(id="a", modality="image+text", image="a.jpg", text="red castle", title="castle"),
                            image=red),
                  Reference(KBItem(id="b", modality="text", text="blue river", title="river"))]
    return [Sample(question="what color is the castle ?", image=blue, references=references, target="red",
                   choices=["red", "blue"]),
            Sample(question="which city ?", image=None, references=references, target="2", choices=["1", "2", "3"])]


def test_the_collator_emits_top_m_image_tokens_per_image_and_the_question(llava_dir):
    cfg = _cfg(llava_dir, "model.refine.enabled=true", "model.refine.top_m=3")
    model = load_generator(cfg).eval()
    assert (model.config.refine_top_m, model.config.refine_space, model.config.num_query_tokens) == (3, "projected", 3)
    collator = build_collator(cfg, model, max_references=2)
    tokenizer = collator.llm_tokenizer
    samples = _samples()
    batch = collator(samples)
    assert batch["image_slot_mask"].tolist() == [[True, True, False], [False, True, False]]
    image_tokens = (batch["input_ids"] == model.config.image_token_index).sum(dim=1)
    assert image_tokens.tolist() == [2 * 3, 1 * 3]
    for row, sample in enumerate(samples):
        ids = batch["question_ids"][row][batch["question_mask"][row].bool()].tolist()
        assert ids == tokenizer(sample.question, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        assert torch.isfinite(model(**{k: v for k, v in batch.items() if not k.startswith("sample_")}).loss)
    scored = collator.with_mode("score")(samples)  # one row per choice: each row carries its sample's question
    assert torch.equal(scored["question_ids"], batch["question_ids"][scored["example_index"]])
    assert len(generate_answers(model, collator, samples, batch_size=2, max_new_tokens=2)) == 2
    assert len(choose_answers(model, collator, samples, batch_size=2)) == 2

    off = _cfg(llava_dir)
    plain_batch = build_collator(off, load_generator(off), max_references=2)(samples)
    assert "question_ids" not in plain_batch
    assert (plain_batch["input_ids"] == model.config.image_token_index).sum(dim=1).tolist() == [2 * TOKENS, TOKENS]


def test_the_refine_space_is_checked_and_reaches_the_model(llava_dir):
    assert load_config(None).model.refine.space == "projected"
    with pytest.raises(ConfigError, match="model.refine.space"):
        load_config(None, ["model.refine.space=clip"])
    model = load_generator(_cfg(llava_dir, "model.refine.enabled=true", "model.refine.top_m=2",
                                "model.refine.space=vision"))
    assert (model.config.refine_top_m, model.config.refine_space) == (2, "vision")
    assert load_generator(_cfg(llava_dir, "model.refine.top_m=2")).config.refine_top_m is None  # not enabled
    with pytest.raises(ConfigError, match="refine_space"):
        _model(llava_dir, 2, "clip")
    with pytest.raises(ConfigError, match="refine_top_m"):
        _model(llava_dir, 0)
