"""The fusion layers: a multiway transformer (BEiT-3 / VLMo style) over image and text tokens.

Shared self-attention, one feed-forward expert per modality (vision, text, vision-language), a
[CLS] token whose final state, LayerNorm'd, linearly projected and L2-normalised, is the retrieval
embedding. :class:`FusionEncoder` is shaped by ``model.fusion``
(:class:`rablip.config.schema.FusionConfig`: ``layers``, ``heads``, ``dim``, ``vl_expert_layers``);
its width is that of its input (the Q-Former's hidden size), and the feed-forward ratio, dropout and
LayerNorm epsilon are the fixed values below.

Expert routing (``vl_expert_layers`` = F, ``layers`` = L):

* image-only or text-only input: every token, the [CLS] token included, uses its modality's expert
  in every layer;
* image+text input (an image+text item, a question with its image, or a (query, item) pair): content
  tokens use their modality's expert in the lower L-F layers and the vision-language expert in the top
  F layers (VLMo); the [CLS] token, being the fused summary, uses the vision-language expert in every
  layer. F = L sends every token of a fused input through the VL expert.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from rablip.config.schema import FusionConfig
from rablip.errors import ConfigError

VISION, TEXT, VISION_LANGUAGE = 0, 1, 2
"""Token modality / expert ids."""
QUERY_SEGMENT, ITEM_SEGMENT = 0, 1
"""Segment ids: which side of a (query, item) pair a token belongs to."""
MLP_RATIO = 4.0
"""Feed-forward width of each expert, as a multiple of the fusion width."""
DROPOUT = 0.0
LAYER_NORM_EPS = 1e-6


@dataclass
class TokenSequence:
    """Token features with their modality, validity and segment, ready for the fusion layers."""

    tokens: torch.Tensor
    """(N, L, H) features."""
    modality: torch.Tensor
    """(N, L) long, VISION or TEXT per token."""
    mask: torch.Tensor
    """(N, L) bool, True for real tokens."""
    segment: torch.Tensor
    """(N, L) long, QUERY_SEGMENT or ITEM_SEGMENT."""

    def select(self, index: torch.Tensor) -> TokenSequence:
        """Rows ``index`` (a 1-D long tensor; repeats allowed)."""
        return TokenSequence(self.tokens[index], self.modality[index], self.mask[index], self.segment[index])

    @staticmethod
    def concat(parts: list[TokenSequence]) -> TokenSequence:
        """Join sequences of the same rows along the token axis."""
        return TokenSequence(
            torch.cat([p.tokens for p in parts], dim=1),
            torch.cat([p.modality for p in parts], dim=1),
            torch.cat([p.mask for p in parts], dim=1),
            torch.cat([p.segment for p in parts], dim=1),
        )


class MultiwayFeedForward(nn.Module):
    """One pre-LayerNorm feed-forward expert per modality (vision, text, vision-language)."""

    def __init__(self, hidden_size: int, mlp_ratio: float, dropout: float, eps: float) -> None:
        super().__init__()
        inner = int(hidden_size * mlp_ratio)
        self.experts = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(hidden_size, eps=eps),
                nn.Linear(hidden_size, inner),
                nn.GELU(),
                nn.Linear(inner, hidden_size),
                nn.Dropout(dropout),
            )
            for _ in (VISION, TEXT, VISION_LANGUAGE)
        )

    def forward(self, hidden: torch.Tensor, expert_ids: torch.Tensor) -> torch.Tensor:
        """Apply expert ``expert_ids[n, l]`` to token ``hidden[n, l]``; (N, L, H) -> (N, L, H)."""
        out = torch.zeros_like(hidden)
        for expert_id, expert in enumerate(self.experts):
            chosen = expert_ids == expert_id
            if chosen.any():
                out[chosen] = expert(hidden[chosen]).to(out.dtype)
        return out


class MultiwayLayer(nn.Module):
    """Pre-LN transformer layer: shared self-attention, then the token's feed-forward expert."""

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(hidden_size, eps=LAYER_NORM_EPS)
        self.attn = nn.MultiheadAttention(hidden_size, num_heads, dropout=DROPOUT, batch_first=True)
        self.ffn = MultiwayFeedForward(hidden_size, MLP_RATIO, DROPOUT, LAYER_NORM_EPS)

    def forward(
        self, hidden: torch.Tensor, padding_mask: torch.Tensor, expert_ids: torch.Tensor
    ) -> torch.Tensor:
        """``padding_mask`` (N, L) is True for tokens to ignore."""
        normed = self.attn_norm(hidden)
        attended, _ = self.attn(normed, normed, normed, key_padding_mask=padding_mask, need_weights=False)
        hidden = hidden + attended
        return hidden + self.ffn(hidden, expert_ids)


def with_resolved_heads(config: FusionConfig, qformer_heads: int) -> FusionConfig:
    """``config`` with ``heads`` 0 (the default) replaced by ``qformer_heads``, the Q-Former's attention
    heads; an explicit number stays."""
    return replace(config, heads=qformer_heads) if config.heads == 0 else config


class FusionEncoder(nn.Module):
    """Multiway layers over a [CLS] token plus image/text tokens; pooled, projected, normalised.

    ``config`` gives the shape (``model.fusion``, its ``heads`` resolved by :func:`with_resolved_heads`;
    its ``checkpoint`` is not read here); the layers are ``input_size`` wide. A ``config.heads`` that does
    not divide ``input_size`` is a ConfigError.
    """

    def __init__(self, config: FusionConfig, input_size: int) -> None:
        super().__init__()
        if config.heads <= 0:
            raise ValueError("FusionEncoder needs a resolved number of heads (model.fusion.heads=0 means the "
                             "Q-Former's): pass the config through with_resolved_heads first")
        self.config = config
        if input_size % config.heads != 0:
            raise ConfigError(f"model.fusion.heads={config.heads} (num_heads) does not divide the fusion width "
                              f"{input_size}, the Q-Former's hidden size; choose a divisor of {input_size}.")
        self.hidden_size = input_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, input_size))
        self.modality_embed = nn.Embedding(2, input_size)
        self.segment_embed = nn.Embedding(2, input_size)
        self.layers = nn.ModuleList(MultiwayLayer(input_size, config.heads) for _ in range(config.layers))
        self.final_norm = nn.LayerNorm(input_size, eps=LAYER_NORM_EPS)
        self.embed_proj = nn.Linear(input_size, config.dim)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.modality_embed.weight, std=0.02)
        nn.init.trunc_normal_(self.segment_embed.weight, std=0.02)

    @property
    def embed_dim(self) -> int:
        """Width of the retrieval embedding (``model.fusion.dim``)."""
        return self.config.dim

    def expert_ids(self, seq: TokenSequence) -> list[torch.Tensor]:
        """Per layer, the (N, 1+L) expert id of every position ([CLS] first); see the module docstring."""
        has_vision = (seq.mask & (seq.modality == VISION)).any(dim=1)
        has_text = (seq.mask & (seq.modality == TEXT)).any(dim=1)
        fused = has_vision & has_text
        cls_expert = torch.where(fused, VISION_LANGUAGE, torch.where(has_vision, VISION, TEXT))
        lower = torch.cat([cls_expert[:, None], seq.modality], dim=1)
        top = torch.where(fused[:, None], torch.full_like(lower, VISION_LANGUAGE), lower)
        first_top = self.config.layers - self.config.vl_expert_layers
        return [top if layer >= first_top else lower for layer in range(self.config.layers)]

    def forward(self, seq: TokenSequence) -> torch.Tensor:
        """Fused [CLS] state (N, H) after the final LayerNorm."""
        if not bool(seq.mask.any(dim=1).all()):
            empty = torch.nonzero(~seq.mask.any(dim=1)).flatten().tolist()
            raise ValueError(f"fusion input rows {empty} have neither image nor text tokens")
        tokens = seq.tokens + self.modality_embed(seq.modality) + self.segment_embed(seq.segment)
        hidden = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
        cls_valid = torch.ones_like(seq.mask[:, :1])
        padding_mask = ~torch.cat([cls_valid, seq.mask], dim=1)
        for layer, expert_ids in zip(self.layers, self.expert_ids(seq), strict=True):
            hidden = layer(hidden, padding_mask, expert_ids)
        return self.final_norm(hidden[:, 0])

    def embed(self, seq: TokenSequence) -> torch.Tensor:
        """(N, embed_dim) unit-norm retrieval embedding."""
        return F.normalize(self.embed_proj(self.forward(seq)).float(), dim=-1)
