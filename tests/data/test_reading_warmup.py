"""The tiny LLM's reading corpus (invented creatures only) and its text-only warm-up."""

import itertools
import re

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

from rablip.models import prompts
from rablip.synthetic.entities import sample_entities
from rablip.synthetic.llm_warmup import answer_loss, tokenize_pairs, warm_up_language_model
from rablip.synthetic.questions import TEMPLATES
from rablip.synthetic.reading import reading_examples
from rablip.synthetic.tokenizer_training import train_tokenizer
from rablip.synthetic.vocab import HIDDEN_FACTS, VISUAL_ATTRIBUTES

WORLD_ENTITIES = sample_entities(0, 96, 48, 0.3)
WORLD_NAMES = [entity.name for entity in WORLD_ENTITIES]
WORLD_LOOKS = [entity.attributes for entity in WORLD_ENTITIES]
YEARS = HIDDEN_FACTS["year"]


def _parts(example):
    lines = example.prompt.split(prompts.REFERENCE_SEPARATOR)
    return lines[:-1], lines[-1]


def _asked(question: str) -> str:
    asked = [a for a, templates in TEMPLATES.items() if any(question == prompts.qa_prompt(t) for t in templates)]
    assert len(asked) == 1
    return asked[0]


def test_a_knowledge_question_is_answered_by_the_first_fact_text_which_describes_the_pictured_look():
    examples = list(itertools.islice(reading_examples(0, WORLD_NAMES, WORLD_LOOKS), 400))
    assert examples == list(itertools.islice(reading_examples(0, WORLD_NAMES, WORLD_LOOKS), 400)), "seeded"
    assert examples != list(itertools.islice(reading_examples(1, WORLD_NAMES, WORLD_LOOKS), 400))
    fact_texts_seen, caption_first = set(), 0
    for example in examples:
        references, question = _parts(example)
        asked = _asked(question)
        if asked not in HIDDEN_FACTS:
            continue
        assert example.answer in HIDDEN_FACTS[asked]
        assert [line.split(":")[0] for line in references] == [f"Reference {n}" for n in range(1, len(references) + 1)]
        facts = [line for line in references if any(f" {year}." in line for year in YEARS)]
        assert example.answer in facts[0].split(": ", 2)[2]
        assert set(example.lead.split()) <= set(re.findall(r"[a-z]+", facts[0])), "it describes the pictured look"
        caption_first += references[0] != facts[0]
        fact_texts_seen.add(len(facts))
    assert fact_texts_seen == {1, 2, 3}, "one, two or three fact texts, the pictured creature's first"
    assert caption_first > 10, "the pictured creature's caption is sometimes ranked before its fact text"


def test_a_visual_question_is_answered_from_the_lead_whatever_the_references_say():
    examples = list(itertools.islice(reading_examples(0, WORLD_NAMES, WORLD_LOOKS), 400))
    visual = [e for e in examples if _asked(_parts(e)[1]) in VISUAL_ATTRIBUTES]
    assert 0.2 < len(visual) / len(examples) < 0.4
    for example in visual:
        lead = example.lead.split()
        assert len(lead) == 4
        assert example.answer == lead[[w in VISUAL_ATTRIBUTES[_asked(_parts(example)[1])] for w in lead].index(True)]
    assert len({e.lead.split()[0] for e in examples}) > 10, "the look words come in a random order"
    assert any(len(_parts(e)[0]) == 0 for e in visual) and any(len(_parts(e)[0]) == 3 for e in visual)


def test_invented_names_and_looks_never_are_the_worlds():
    examples = list(itertools.islice(reading_examples(0, WORLD_NAMES, WORLD_LOOKS), 500))
    names = {line.split("Reference ")[1].split(":")[1].strip() for e in examples for line in _parts(e)[0]}
    assert len(names) > 100 and not names & set(WORLD_NAMES)
    world_looks = {tuple(sorted(look.values())) for look in WORLD_LOOKS}
    assert not {tuple(sorted(e.lead.split())) for e in examples} & world_looks


def test_tokenized_rows_put_the_lead_before_the_start_token(tmp_path):
    examples = list(itertools.islice(reading_examples(0), 4))
    tokenizer = train_tokenizer([e.lead + " " + e.prompt + " " + e.answer for e in examples], tmp_path / "tok",
                                kind="causal", vocab_size=300)
    batch = tokenize_pairs(tokenizer, examples, decoder_only=True)
    for row, example in enumerate(examples):
        ids = batch["input_ids"][row][batch["attention_mask"][row] == 1].tolist()
        lead = tokenizer(example.lead, add_special_tokens=False)["input_ids"]
        assert ids[:len(lead) + 1] == lead + [tokenizer.bos_token_id]


@pytest.mark.parametrize("kind", ["causal", "t5"])
def test_warm_up_lowers_the_answer_loss(kind, tmp_path):
    corpus = [e.lead + " " + e.prompt + " " + e.answer for e in itertools.islice(reading_examples(0), 300)]
    tokenizer = train_tokenizer(corpus, tmp_path / "tok", kind=kind, vocab_size=400)
    if kind == "causal":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                             tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    else:
        model = T5ForConditionalGeneration(T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64,
                                                    num_layers=1, num_heads=2, decoder_start_token_id=0))
    losses = warm_up_language_model(model, tokenizer, reading_examples(0), steps=60, batch_size=8,
                                    show_progress=False)
    assert len(losses) == 60 and not model.training
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:5]) / 5


@pytest.mark.parametrize("kind", ["causal", "t5"])
def test_only_the_answer_and_its_end_are_targets(kind, tmp_path):
    examples = list(itertools.islice(reading_examples(0), 4))
    tokenizer = train_tokenizer([e.prompt + " " + e.answer for e in examples], tmp_path / "tok", kind=kind,
                                vocab_size=300)
    batch = tokenize_pairs(tokenizer, examples, decoder_only=kind == "causal")
    for row, example in enumerate(examples):
        labels = batch["labels"][row]
        assert tokenizer.decode(labels[labels != -100]).strip() == f"{example.answer}{tokenizer.eos_token}"
        if kind == "causal":
            ids = batch["input_ids"][row][batch["attention_mask"][row] == 1]
            assert torch.equal(ids[-len(labels[labels != -100]):], labels[labels != -100])


def test_answer_loss_equals_the_models_own_loss(tmp_path):
    examples = list(itertools.islice(reading_examples(0), 6))
    tokenizer = train_tokenizer([e.prompt + " " + e.answer for e in examples], tmp_path / "tok", kind="causal",
                                vocab_size=300)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                         pad_token_id=tokenizer.pad_token_id))
    batch = tokenize_pairs(tokenizer, examples, decoder_only=True)
    torch.testing.assert_close(answer_loss(model, batch), model(**batch).loss)
