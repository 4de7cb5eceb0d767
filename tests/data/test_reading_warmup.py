"""The tiny LLM's reading corpus (invented creatures only) and its text-only warm-up."""

import itertools

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

from rablip.data import prompts
from rablip.data.synthetic.entities import sample_entities
from rablip.data.synthetic.questions import TEMPLATES
from rablip.data.synthetic.reading import reading_examples
from rablip.data.synthetic.vocab import HIDDEN_FACTS
from rablip.data.tokenizer_training import train_tokenizer
from rablip.models.llm_warmup import answer_loss, tokenize_pairs, warm_up_language_model

WORLD_NAMES = [entity.name for entity in sample_entities(0, 96, 48, 0.3)]


def test_each_example_holds_one_fact_text_that_states_the_answer_to_its_question():
    examples = list(itertools.islice(reading_examples(0, WORLD_NAMES), 200))
    assert examples == list(itertools.islice(reading_examples(0, WORLD_NAMES), 200)), "seeded"
    assert examples != list(itertools.islice(reading_examples(1, WORLD_NAMES), 200))
    counts = set()
    for example in examples:
        lines = example.prompt.split(prompts.REFERENCE_SEPARATOR)
        references, question = lines[:-1], lines[-1]
        counts.add(len(references))
        assert [line.split(":")[0] for line in references] == [f"Reference {n}" for n in range(1, len(references) + 1)]
        asked = [a for a, templates in TEMPLATES.items() if any(question == prompts.qa_prompt(t) for t in templates)]
        assert len(asked) == 1 and asked[0] in HIDDEN_FACTS
        assert example.answer in HIDDEN_FACTS[asked[0]]
        stating = [line for line in references if any(f" {year}." in line for year in HIDDEN_FACTS["year"])]
        assert len(stating) == 1 and example.answer in stating[0], "exactly one fact text, the asked creature's"
    assert counts == {1, 2, 3}


def test_invented_names_never_are_world_names():
    names = {line.split(":")[1].strip() for example in itertools.islice(reading_examples(0, WORLD_NAMES), 500)
             for line in example.prompt.split(prompts.REFERENCE_SEPARATOR)[:-1]}
    assert len(names) > 100 and not names & set(WORLD_NAMES)


@pytest.mark.parametrize("kind", ["causal", "t5"])
def test_warm_up_lowers_the_answer_loss(kind, tmp_path):
    corpus = [e.prompt + " " + e.answer for e in itertools.islice(reading_examples(0), 300)]
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
