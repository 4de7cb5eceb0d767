"""Pre-training losses of the retrieval encoder: contrast (ITC), matching (ITM), generation (ITG).

The maths follows BLIP-2 stage 1, adapted to one pooled embedding per side:

* ITC: symmetric InfoNCE between query and item embeddings with a learnable temperature (init 0.07,
  clamped to [0.001, 0.5]); rows sharing an id are all positives (soft targets). Under
  ``torch.distributed`` with world size > 1, the other ranks' embeddings join the negatives; the
  gather keeps gradients so that, after DDP averages gradients, the result equals the gradient of
  the global-batch loss. All ranks must hold the same local batch size.
* ITM: a 2-way (no match, match) classifier over fused (query, item) features; for every query one
  hard negative item and for every item one hard negative query, sampled with probability
  softmax(similarity / temperature) over the local batch with same-id pairs excluded.
* ITG: the Q-Former language-models the caption, conditioned on the image's query outputs through
  BLIP-2's UniLM mask (queries see queries; text sees queries and earlier text). The transformers
  Q-Former has no LM head, so :class:`QFormerLMHead` adds one whose output weight is tied to the
  Q-Former's word embeddings.

Every loss is returned unweighted in a dict; the trainer applies the configured weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from rablip.utils.dist import process_rank_world

if TYPE_CHECKING:
    from rablip.models.fusion import MultimodalRetrievalEncoder

IGNORE_INDEX = -100


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for this rank's slice (an all_reduce,
    so it works on gloo as well as nccl)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        ctx.local_size = tensor.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.local_size
        return grad[start : start + ctx.local_size]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0, differentiable; identity on one process."""
    if process_rank_world()[1] == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (ids, labels) from all ranks along dim 0; identity on one process."""
    world = process_rank_world()[1]
    if world == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def contrastive_loss(
    query_emb: torch.Tensor,
    item_emb: torch.Tensor,
    temperature: torch.Tensor,
    ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE of local rows against the (gathered) global batch.

    ``query_emb``, ``item_emb``: (N, D) unit-norm, row i of each forming a pair; ``ids`` (N,) optional
    pair ids: every (query, item) with equal ids is a positive, weighted equally.
    """
    rank, _ = process_rank_world()
    n = query_emb.shape[0]
    if ids is None:
        ids = torch.arange(n, device=query_emb.device) + rank * n
    all_queries, all_items, all_ids = (
        gather_with_grad(query_emb),
        gather_with_grad(item_emb),
        gather_no_grad(ids),
    )
    targets = (ids[:, None] == all_ids[None, :]).float()
    targets = targets / targets.sum(dim=1, keepdim=True)
    q2i = query_emb @ all_items.t() / temperature
    i2q = item_emb @ all_queries.t() / temperature
    loss_q2i = -(F.log_softmax(q2i, dim=1) * targets).sum(dim=1).mean()
    loss_i2q = -(F.log_softmax(i2q, dim=1) * targets).sum(dim=1).mean()
    return (loss_q2i + loss_i2q) / 2


@dataclass
class HardNegatives:
    """Indices of sampled negatives; -1 where a row has no valid negative."""

    item_for_query: torch.Tensor
    """(N,) for query i, the index of a non-matching item."""
    query_for_item: torch.Tensor
    """(N,) for item j, the index of a non-matching query."""


def sample_hard_negatives(
    similarity: torch.Tensor, ids: torch.Tensor | None = None, generator: torch.Generator | None = None
) -> HardNegatives:
    """Sample one negative per row and per column of a (N, N) query-item ``similarity`` (logits).

    Probabilities are softmax(similarity) with same-id pairs (the diagonal when ``ids`` is None) set to
    zero, so a positive is never drawn; rows whose every pair is positive get -1.
    """
    similarity = similarity.detach().float()
    n = similarity.shape[0]
    if ids is None:
        ids = torch.arange(n, device=similarity.device)
    positive = ids[:, None] == ids[None, :]

    def draw(logits: torch.Tensor) -> torch.Tensor:
        weights = F.softmax(logits.masked_fill(positive, float("-inf")), dim=1).nan_to_num(0.0)
        has_negative = ~positive.all(dim=1)
        picks = torch.full((n,), -1, dtype=torch.long, device=logits.device)
        if has_negative.any():
            drawn = torch.multinomial(weights[has_negative], 1, generator=generator).squeeze(1)
            picks[has_negative] = drawn
        return picks

    # positive is symmetric, so the transposed matrix samples queries for items the same way.
    return HardNegatives(item_for_query=draw(similarity), query_for_item=draw(similarity.t()))


def matching_pairs(negatives: HardNegatives) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(query index, item index, label) of the ITM pairs: N positives, then the valid negatives."""
    n = negatives.item_for_query.shape[0]
    rows = torch.arange(n, device=negatives.item_for_query.device)
    has_item_neg = negatives.item_for_query >= 0
    has_query_neg = negatives.query_for_item >= 0
    query_index = torch.cat([rows, rows[has_item_neg], negatives.query_for_item[has_query_neg]])
    item_index = torch.cat([rows, negatives.item_for_query[has_item_neg], rows[has_query_neg]])
    labels = torch.cat(
        [
            torch.ones(n, dtype=torch.long, device=rows.device),
            torch.zeros(query_index.shape[0] - n, dtype=torch.long, device=rows.device),
        ]
    )
    return query_index, item_index, labels


def unilm_attention_mask(
    num_queries: int,
    text_mask: torch.Tensor,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """BLIP-2 ITG mask for the Q-Former, as the 4-D (N, 1, Q+T, Q+T) tensor it accepts.

    Queries see all queries and no text; text token t sees all queries and the non-padding text tokens
    up to t. transformers 5.x builds Q-Former masks with ``create_bidirectional_mask``, which expands a
    2-D padding mask into a bidirectional one and passes a 4-D mask through unchanged; there is no 3-D
    path. So the mask is built in the 4-D form the attention kernel takes: boolean (True = attend) for
    ``sdpa``, additive ``dtype`` (0 or the dtype's minimum) for ``eager``. Flash and flex attention take
    no dense custom mask: switch the Q-Former to sdpa or eager for ITG.
    """
    n, length = text_mask.shape
    total = num_queries + length
    device = text_mask.device
    allowed = torch.zeros(n, total, total, dtype=torch.bool, device=device)
    allowed[:, :, :num_queries] = True
    causal = torch.tril(torch.ones(length, length, dtype=torch.bool, device=device))
    allowed[:, num_queries:, num_queries:] = causal[None] & text_mask.bool()[:, None, :]
    allowed = allowed[:, None]
    if attn_implementation == "sdpa":
        return allowed
    if attn_implementation == "eager":
        return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )
    raise ValueError(
        f"ITG needs the Q-Former's attention to be 'sdpa' or 'eager', not {attn_implementation!r}: "
        "call qformer.set_attn_implementation('sdpa')"
    )


class QFormerLMHead(nn.Module):
    """BERT-style LM head (dense, GELU, LayerNorm, vocabulary projection) for the Q-Former.

    The vocabulary projection uses the Q-Former's word-embedding matrix, passed at call time, so the
    weight is tied without being stored twice (safetensors refuses shared tensors).
    """

    def __init__(self, hidden_size: int, vocab_size: int, layer_norm_eps: float = 1e-12) -> None:
        super().__init__()
        self.transform = nn.Sequential(
            nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        )
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        """(N, T, H) -> (N, T, vocab) logits."""
        return F.linear(self.transform(hidden), word_embeddings, self.bias)


def caption_generation_loss(
    encoder: MultimodalRetrievalEncoder,
    lm_head: QFormerLMHead,
    image_embeds: torch.Tensor,
    caption_ids: torch.Tensor,
    caption_mask: torch.Tensor,
    bos_token_id: int | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Token cross-entropy of the caption given the image's query outputs (BLIP-2 ITG).

    ``caption_ids``/``caption_mask`` (N, T) are Q-Former tokenizer ids; the first position is the start
    token (replaced by ``bos_token_id`` when given, like BLIP-2's [DEC]); position t predicts t+1.
    """
    if bos_token_id is not None:
        caption_ids = caption_ids.clone()
        caption_ids[:, 0] = bos_token_id
    n = caption_ids.shape[0]
    queries = encoder.query_tokens.expand(n, -1, -1)
    num_queries = queries.shape[1]
    qformer = encoder.qformer
    mask = unilm_attention_mask(num_queries, caption_mask, qformer.config._attn_implementation, qformer.dtype)
    hidden = encoder.qformer(
        input_ids=caption_ids, attention_mask=mask, query_embeds=queries, encoder_hidden_states=image_embeds
    ).last_hidden_state[:, num_queries:]
    logits = lm_head(hidden[:, :-1], encoder.qformer.get_input_embeddings().weight)
    labels = caption_ids[:, 1:].masked_fill(~caption_mask[:, 1:].bool(), IGNORE_INDEX)
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing,
    )


class RetrievalPretrainingLoss(nn.Module):
    """ITC + ITM + ITG on a batch of aligned (query, item) pairs; returns the named, unweighted losses.

    Holds the trainable loss-side parameters (temperature, Q-Former LM head): the trainer must give
    them to the optimizer and checkpoint them. ITG runs on the items that have both an image and text
    (their text is the caption); ITM uses the encoder's ``match_head``.
    """

    def __init__(
        self,
        encoder: MultimodalRetrievalEncoder,
        init_temperature: float = 0.07,
        min_temperature: float = 0.001,
        max_temperature: float = 0.5,
        itg_bos_token_id: int | None = None,
        itg_label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.temperature = nn.Parameter(torch.tensor(float(init_temperature)))
        self.min_temperature, self.max_temperature = min_temperature, max_temperature
        qconfig = encoder.qformer.config
        self.lm_head = QFormerLMHead(qconfig.hidden_size, qconfig.vocab_size, qconfig.layer_norm_eps)
        self.itg_bos_token_id = itg_bos_token_id
        self.itg_label_smoothing = itg_label_smoothing

    def clamped_temperature(self) -> torch.Tensor:
        return self.temperature.clamp(self.min_temperature, self.max_temperature)

    def forward(
        self,
        query_batch: Mapping[str, torch.Tensor],
        item_batch: Mapping[str, torch.Tensor],
        ids: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """``{"itc", "itm", "itg"}`` for N aligned pairs (row i of each batch); ``ids`` marks equal pairs."""
        encoder = self.encoder
        temperature = self.clamped_temperature()
        image_mask = item_batch["image_mask"].bool()
        image_rows = torch.nonzero(image_mask).flatten()
        item_image_embeds = (
            encoder.image_embeds(item_batch["pixel_values"][image_rows]) if image_rows.numel() else None
        )
        query_seq = encoder.query_sequence(query_batch)
        item_seq = encoder.item_sequence(item_batch, image_embeds=item_image_embeds)
        query_emb, item_emb = encoder.fusion.embed(query_seq), encoder.fusion.embed(item_seq)
        losses = {"itc": contrastive_loss(query_emb, item_emb, temperature, ids)}

        negatives = sample_hard_negatives(query_emb @ item_emb.t() / temperature, ids, generator)
        query_index, item_index, labels = matching_pairs(negatives)
        logits = encoder.match_logits(query_seq.select(query_index), item_seq.select(item_index))
        losses["itm"] = F.cross_entropy(logits.float(), labels)

        # A caption needs a start token and at least one token to predict.
        has_caption = item_batch["qformer_attention_mask"].sum(dim=1) > 1
        captioned = torch.nonzero(has_caption[image_rows]).flatten()  # positions within image_rows
        if captioned.numel():
            rows = image_rows[captioned]
            losses["itg"] = caption_generation_loss(
                encoder,
                self.lm_head,
                item_image_embeds[captioned],
                item_batch["qformer_input_ids"][rows],
                item_batch["qformer_attention_mask"][rows],
                self.itg_bos_token_id,
                self.itg_label_smoothing,
            )
        else:
            # Keep the LM head in the graph so DDP sees every parameter used on every step.
            losses["itg"] = self.lm_head.bias.sum() * 0.0
        return losses
