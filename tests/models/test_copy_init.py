"""The copy-ready initialisation of a tiny decoder-only LLM (the synthetic setting ``model.llm_copy_init``)."""

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from rablip.synthetic.build import copy_ready_attention

pytestmark = pytest.mark.usefixtures("one_torch_thread")
VOCAB = 64


def _llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, tie_word_embeddings=True))


def test_value_and_output_projections_become_the_identity():
    model = _llama()
    assert copy_ready_attention(model) == 2
    for layer in model.model.layers:
        assert torch.equal(layer.self_attn.v_proj.weight, torch.eye(32))
        assert torch.equal(layer.self_attn.o_proj.weight, torch.eye(32))
    opt = OPTForCausalLM(OPTConfig(vocab_size=VOCAB, hidden_size=16, ffn_dim=32, num_hidden_layers=1,
                                   num_attention_heads=2, word_embed_proj_dim=16))
    assert copy_ready_attention(opt) == 1
    attention = opt.model.decoder.layers[0].self_attn
    assert torch.equal(attention.out_proj.weight, torch.eye(16)) and not attention.out_proj.bias.any()
    with pytest.raises(ValueError, match="copy-ready"):
        copy_ready_attention(T5ForConditionalGeneration(T5Config(vocab_size=VOCAB, d_model=16, d_kv=8, d_ff=32,
                                                                 num_layers=1, num_heads=2)))


def _recall_batch(generator: torch.Generator, rows: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``k1 v1 k2 v2 k3 v3 k4 v4 <sep> kq`` -> ``vq``: recalling the value of the asked key."""
    keys = torch.stack([torch.randperm(10, generator=generator)[:4] + 10 for _ in range(rows)])
    values = torch.randint(20, VOCAB, (rows, 4), generator=generator)
    asked = torch.randint(0, 4, (rows,), generator=generator)
    pairs = torch.stack([keys, values], dim=2).flatten(1)
    inputs = torch.cat([pairs, torch.full((rows, 1), 3), keys[torch.arange(rows), asked][:, None]], dim=1)
    return inputs, values[torch.arange(rows), asked]


def _final_loss(copy_ready: bool, steps: int = 300) -> float:
    model = _llama()
    if copy_ready:
        copy_ready_attention(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator, losses = torch.Generator().manual_seed(1), []
    for _ in range(steps):
        inputs, answers = _recall_batch(generator)
        loss = torch.nn.functional.cross_entropy(model(input_ids=inputs).logits[:, -1], answers)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return sum(losses[-20:]) / 20


def test_a_copy_ready_llm_learns_to_recall_a_value_from_its_context_sooner():
    plain, copy_ready = _final_loss(False), _final_loss(True)
    assert copy_ready < plain - 0.5, (plain, copy_ready)  # measured: 2.96 -> 1.96 nats after 300 steps
