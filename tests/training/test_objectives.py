"""ITC / ITM / ITG pre-training losses: hand-computed cases, masks, distributed gathering, optimisation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from rablip.training.objectives import (
    IGNORE_INDEX,
    QFormerLMHead,
    RetrievalPretrainingLoss,
    caption_generation_loss,
    contrastive_loss,
    matching_pairs,
    sample_hard_negatives,
    unilm_attention_mask,
)

# The tiny-model helpers import transformers; they are imported inside the tests that need them so
# that the spawned gloo workers (which re-import this module) start with torch only.


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_contrastive_loss_matches_hand_computed_2x2():
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    loss = contrastive_loss(queries, items, torch.tensor(0.5))
    # q->i logits [[2, 1.2], [0, 1.6]], i->q logits [[2, 0], [1.2, 1.6]]; positives on the diagonal.
    q2i = (
        -math.log(math.exp(2) / (math.exp(2) + math.exp(1.2))) - math.log(math.exp(1.6) / (1 + math.exp(1.6)))
    ) / 2
    i2q = (
        -math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(math.exp(1.6) / (math.exp(1.2) + math.exp(1.6)))
    ) / 2
    assert math.isclose(loss.item(), (q2i + i2q) / 2, rel_tol=1e-6)


def test_contrastive_loss_shares_positives_between_equal_ids_3x3():
    eye = torch.eye(3)
    loss = contrastive_loss(eye, eye, torch.tensor(1.0), ids=torch.tensor([7, 7, 9]))
    # rows 0, 1: soft target (1/2, 1/2, 0) -> log(e+2) - 1/2; row 2: log(e+2) - 1; both directions equal.
    assert math.isclose(loss.item(), math.log(math.e + 2) - 2 / 3, rel_tol=1e-6)


def test_temperature_is_learned():
    from tests.models.test_fusion import build_tiny_encoder

    encoder = build_tiny_encoder()
    objective = RetrievalPretrainingLoss(encoder)
    query = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    item = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    contrastive_loss(query, item, objective.clamped_temperature()).backward()
    assert objective.temperature.grad is not None and objective.temperature.grad.abs() > 0


def _gather_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        full_q, full_i = _global_embeddings()
        n = full_q.shape[0] // world
        local_q = full_q[rank * n : (rank + 1) * n].clone().requires_grad_(True)
        local_i = full_i[rank * n : (rank + 1) * n].clone().requires_grad_(True)
        loss = contrastive_loss(local_q, local_i, torch.tensor(0.3))
        loss.backward()
        save_file(
            {"loss": loss.detach().reshape(1), "grad_q": local_q.grad, "grad_i": local_i.grad},
            f"{out_dir}/rank{rank}.safetensors",
        )
    finally:
        dist.destroy_process_group()


def _global_embeddings() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return (
        torch.nn.functional.normalize(torch.randn(4, 3, generator=gen), dim=-1),
        torch.nn.functional.normalize(torch.randn(4, 3, generator=gen), dim=-1),
    )


def test_contrastive_loss_gathers_across_two_gloo_processes(tmp_path):
    # spawn, not fork: a forked child of a process whose OpenMP pool has run can hang.
    mp.spawn(_gather_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    full_q, full_i = (t.clone().requires_grad_(True) for t in _global_embeddings())
    global_loss = contrastive_loss(full_q, full_i, torch.tensor(0.3))
    global_loss.backward()
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    # Equal local batches: the global loss is the mean of the rank losses, and DDP's gradient
    # averaging (grad / world) recovers the global gradient of each rank's slice.
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, global_loss.detach().reshape(1))
    for r in range(2):
        torch.testing.assert_close(ranks[r]["grad_q"] / 2, full_q.grad[2 * r : 2 * r + 2])
        torch.testing.assert_close(ranks[r]["grad_i"] / 2, full_i.grad[2 * r : 2 * r + 2])


def test_hard_negatives_never_pick_a_positive():
    gen = torch.Generator().manual_seed(0)
    ids = torch.tensor([0, 0, 1, 2, 2, 3])
    for _ in range(50):
        similarity = torch.randn(6, 6, generator=gen) * 3
        negatives = sample_hard_negatives(similarity, ids, generator=gen)
        assert (ids[negatives.item_for_query] != ids).all()
        assert (ids[negatives.query_for_item] != ids).all()


def test_hard_negatives_prefer_the_hardest_and_mark_impossible_rows():
    similarity = torch.zeros(3, 3)
    similarity[0, 2] = 50.0  # item 2 is by far the most similar non-matching item for query 0
    negatives = sample_hard_negatives(similarity, generator=torch.Generator().manual_seed(1))
    assert negatives.item_for_query[0] == 2 and negatives.query_for_item[2] == 0
    alone = sample_hard_negatives(torch.randn(2, 2), ids=torch.tensor([4, 4]))
    assert alone.item_for_query.tolist() == [-1, -1] and alone.query_for_item.tolist() == [-1, -1]


def test_matching_pairs_layout():
    from rablip.training.objectives import HardNegatives

    query_index, item_index, labels = matching_pairs(
        HardNegatives(item_for_query=torch.tensor([1, -1, 0]), query_for_item=torch.tensor([2, 0, -1]))
    )
    assert query_index.tolist() == [0, 1, 2, 0, 2, 2, 0]
    assert item_index.tolist() == [0, 1, 2, 1, 0, 0, 1]
    assert labels.tolist() == [1, 1, 1, 0, 0, 0, 0]


def test_unilm_mask_shape_and_causality():
    text_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    mask = unilm_attention_mask(2, text_mask, "sdpa")
    assert mask.shape == (2, 1, 6, 6) and mask.dtype == torch.bool
    additive = unilm_attention_mask(2, text_mask, "eager", torch.float32)
    assert additive.dtype == torch.float32 and set(additive.unique().tolist()) == {
        0.0,
        torch.finfo(torch.float32).min,
    }
    assert torch.equal(additive == 0, mask)
    allowed = mask[:, 0]
    assert allowed[:, :2, :2].all() and not allowed[:, :2, 2:].any()  # queries: queries only
    assert allowed[:, 2:, :2].all()  # text sees every query
    for t in range(4):
        assert not allowed[1, 2 + t, 2 + t + 1 :].any()  # text t never sees t+1..
        assert allowed[1, 2 + t, 2 : 2 + t + 1].all()  # ..but sees 0..t
    assert not allowed[0, :, 5].any()  # padding is never attended


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@torch.no_grad()
def test_qformer_honours_the_itg_mask(attn_implementation):
    from tests.models.test_fusion import NUM_QUERIES, build_tiny_encoder, text_ids

    encoder = build_tiny_encoder()
    encoder.qformer.set_attn_implementation(attn_implementation)
    ids, text_mask = text_ids([5, 5], width=5, seed=3)
    image_embeds = encoder.image_embeds(torch.randn(2, 3, 32, 32))
    queries = encoder.query_tokens.expand(2, -1, -1)
    mask = unilm_attention_mask(NUM_QUERIES, text_mask, attn_implementation)

    def run(token_ids: torch.Tensor) -> torch.Tensor:
        return encoder.qformer(
            input_ids=token_ids, attention_mask=mask, query_embeds=queries, encoder_hidden_states=image_embeds
        ).last_hidden_state

    changed = ids.clone()
    changed[:, 3] = (changed[:, 3] + 1) % 100
    before, after = run(ids), run(changed)
    torch.testing.assert_close(
        before[:, : NUM_QUERIES + 3], after[:, : NUM_QUERIES + 3]
    )  # queries, text 0..2
    assert (before[:, NUM_QUERIES + 3 :] - after[:, NUM_QUERIES + 3 :]).abs().max() > 1e-4


def test_caption_loss_trains_tied_word_embeddings():
    from tests.models.test_fusion import build_tiny_encoder, text_ids

    encoder = build_tiny_encoder()
    head = QFormerLMHead(32, 100)
    ids, mask = text_ids([5, 3], width=5, seed=4)
    loss = caption_generation_loss(
        encoder, head, encoder.image_embeds(torch.randn(2, 3, 32, 32)), ids, mask, bos_token_id=99
    )
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    word_grad = encoder.qformer.get_input_embeddings().weight.grad
    assert word_grad is not None and word_grad.abs().sum() > 0
    assert word_grad[99].abs().sum() > 0  # the [DEC]-style start token was used as input
    assert IGNORE_INDEX == -100


def test_pretraining_steps_lower_the_summed_loss():
    from tests.models.test_fusion import build_tiny_encoder, item_batch, query_batch

    encoder = build_tiny_encoder()
    for param in encoder.vision_model.parameters():
        param.requires_grad_(False)
    objective = RetrievalPretrainingLoss(encoder)
    queries, items = query_batch(), item_batch()
    optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=3e-3)
    history = []
    for _ in range(8):
        # The same generator seed every step: the same hard negatives, so the batch stays fixed.
        losses = objective(queries, items, generator=torch.Generator().manual_seed(0))
        assert set(losses) == {"itc", "itm", "itg"} and all(torch.isfinite(v) for v in losses.values())
        history.append({name: value.item() for name, value in losses.items()})
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert sum(history[-1].values()) < sum(history[0].values()) - 0.1, history
    assert all(history[-1][name] < history[0][name] for name in ("itc", "itm", "itg")), history
