"""Multiway fusion encoder: one embedding space for image, text and image+text items and questions.

RA-BLIP encodes knowledge items and questions with the Q-Former plus a few fusion layers and searches
them by inner product. This module holds those fusion layers (BEiT-3 / VLMo style multiway
transformer: shared self-attention, one feed-forward expert per modality) and
:class:`MultimodalRetrievalEncoder`, which feeds them from the generator's own frozen vision encoder,
learned query tokens and Q-Former.

Token sources (decided here, documented because they are choices):

* Image tokens are the Q-Former's query outputs. A question image is extracted *with the question as
  the Q-Former instruction* (query-instructed extraction, as InstructBLIP does); ``instruct_queries=False``
  leaves the instruction out (the "uninstructed" ablation). Item images are extracted without an
  instruction, so an item's embedding never depends on any question and can be indexed once.
* Text tokens are the Q-Former's *text-only forward* (BLIP-2's text encoder path: word embeddings,
  self-attention, text feed-forward), not raw word embeddings. Pre-trained InstructBLIP/BLIP-2 weights
  trained that path for image-text contrast, so the fusion layers start from contextual text features
  instead of having to learn contextualisation from scratch in 2-3 layers.

Expert routing (``vl_expert_layers`` = F, ``num_layers`` = L):

* image-only or text-only input: every token, the [CLS] token included, uses its modality's expert
  in every layer;
* image+text input (an image+text item, a question with its image, or a (query, item) pair): content
  tokens use their modality's expert in the lower L-F layers and the vision-language expert in the top
  F layers (VLMo); the [CLS] token, being the fused summary, uses the vision-language expert in every
  layer. F = L sends every token of a fused input through the VL expert.

The embedding is the final-LayerNorm'd [CLS] state, linearly projected and L2-normalised.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    Blip2VisionConfig,
    Blip2VisionModel,
    InstructBlipQFormerConfig,
    InstructBlipQFormerModel,
    InstructBlipVisionConfig,
    InstructBlipVisionModel,
)

from rablip.errors import RablipError
from rablip.models.vision import TIMM_MODEL_TYPE, TimmVisionEncoder

VISION, TEXT, VISION_LANGUAGE = 0, 1, 2
"""Token modality / expert ids."""
QUERY_SEGMENT, ITEM_SEGMENT = 0, 1
"""Segment ids: which side of a (query, item) pair a token belongs to."""

CONFIG_FILE = "retrieval_encoder.json"
WEIGHTS_FILE = "retrieval_encoder.safetensors"
FORMAT_NAME = "rablip.retrieval_encoder"
FORMAT_VERSION = 1

# Vision backbones the saved config can rebuild: model_type -> (config class, model class).
VISION_MODEL_TYPES: dict[str, tuple[type, type]] = {
    InstructBlipVisionConfig.model_type: (InstructBlipVisionConfig, InstructBlipVisionModel),
    Blip2VisionConfig.model_type: (Blip2VisionConfig, Blip2VisionModel),
}
SAVEABLE_VISION_TYPES = sorted([*VISION_MODEL_TYPES, TIMM_MODEL_TYPE])
"""Every vision model_type a saved encoder may name: the transformers ones above and rablip's timm encoder."""


@dataclass
class FusionConfig:
    """Shape of the fusion encoder (``model.fusion.*``)."""

    num_layers: int = 3
    """Multiway transformer layers on top of the Q-Former outputs."""
    hidden_size: int | None = None
    """Width of the fusion layers; None uses the Q-Former's hidden size (no input projection)."""
    num_heads: int = 8
    """Attention heads; must divide hidden_size."""
    mlp_ratio: float = 4.0
    """Feed-forward width as a multiple of hidden_size (per expert)."""
    vl_expert_layers: int = 1
    """Top layers in which the tokens of image+text inputs use the vision-language expert."""
    embed_dim: int = 256
    """Width of the L2-normalised retrieval embedding."""
    dropout: float = 0.0
    layer_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.num_layers < 1:
            raise ValueError(f"fusion.num_layers must be >= 1, got {self.num_layers}")
        if not 0 <= self.vl_expert_layers <= self.num_layers:
            raise ValueError(
                f"fusion.vl_expert_layers must be between 0 and num_layers={self.num_layers}, "
                f"got {self.vl_expert_layers}"
            )
        if self.hidden_size is not None and self.hidden_size % self.num_heads != 0:
            raise ValueError(
                f"fusion.hidden_size={self.hidden_size} is not a multiple of num_heads={self.num_heads}"
            )
        if self.embed_dim < 1:
            raise ValueError(f"fusion.embed_dim must be >= 1, got {self.embed_dim}")


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

    def __init__(self, config: FusionConfig, hidden_size: int) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.attn = nn.MultiheadAttention(
            hidden_size, config.num_heads, dropout=config.dropout, batch_first=True
        )
        self.ffn = MultiwayFeedForward(hidden_size, config.mlp_ratio, config.dropout, config.layer_norm_eps)

    def forward(
        self, hidden: torch.Tensor, padding_mask: torch.Tensor, expert_ids: torch.Tensor
    ) -> torch.Tensor:
        """``padding_mask`` (N, L) is True for tokens to ignore."""
        normed = self.attn_norm(hidden)
        attended, _ = self.attn(normed, normed, normed, key_padding_mask=padding_mask, need_weights=False)
        hidden = hidden + attended
        return hidden + self.ffn(hidden, expert_ids)


class FusionEncoder(nn.Module):
    """Multiway layers over a [CLS] token plus image/text tokens; pooled, projected, normalised."""

    def __init__(self, config: FusionConfig, input_size: int) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_size or input_size
        if hidden % config.num_heads != 0:
            raise ValueError(f"fusion width {hidden} is not a multiple of num_heads={config.num_heads}")
        self.hidden_size = hidden
        self.input_proj = nn.Identity() if hidden == input_size else nn.Linear(input_size, hidden)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden))
        self.modality_embed = nn.Embedding(2, hidden)
        self.segment_embed = nn.Embedding(2, hidden)
        self.layers = nn.ModuleList(MultiwayLayer(config, hidden) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.embed_proj = nn.Linear(hidden, config.embed_dim)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.modality_embed.weight, std=0.02)
        nn.init.trunc_normal_(self.segment_embed.weight, std=0.02)

    def expert_ids(self, seq: TokenSequence) -> list[torch.Tensor]:
        """Per layer, the (N, 1+L) expert id of every position ([CLS] first); see the module docstring."""
        has_vision = (seq.mask & (seq.modality == VISION)).any(dim=1)
        has_text = (seq.mask & (seq.modality == TEXT)).any(dim=1)
        fused = has_vision & has_text
        cls_expert = torch.where(fused, VISION_LANGUAGE, torch.where(has_vision, VISION, TEXT))
        lower = torch.cat([cls_expert[:, None], seq.modality], dim=1)
        top = torch.where(fused[:, None], torch.full_like(lower, VISION_LANGUAGE), lower)
        first_top = self.config.num_layers - self.config.vl_expert_layers
        return [top if layer >= first_top else lower for layer in range(self.config.num_layers)]

    def forward(self, seq: TokenSequence) -> torch.Tensor:
        """Fused [CLS] state (N, H) after the final LayerNorm."""
        if not bool(seq.mask.any(dim=1).all()):
            empty = torch.nonzero(~seq.mask.any(dim=1)).flatten().tolist()
            raise ValueError(f"fusion input rows {empty} have neither image nor text tokens")
        tokens = (
            self.input_proj(seq.tokens) + self.modality_embed(seq.modality) + self.segment_embed(seq.segment)
        )
        hidden = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
        cls_valid = torch.ones_like(seq.mask[:, :1])
        padding_mask = ~torch.cat([cls_valid, seq.mask], dim=1)
        for layer, expert_ids in zip(self.layers, self.expert_ids(seq), strict=True):
            hidden = layer(hidden, padding_mask, expert_ids)
        return self.final_norm(hidden[:, 0])

    def embed(self, seq: TokenSequence) -> torch.Tensor:
        """(N, embed_dim) unit-norm retrieval embedding."""
        return F.normalize(self.embed_proj(self.forward(seq)).float(), dim=-1)


class MultimodalRetrievalEncoder(nn.Module):
    """Encodes knowledge items and (image, question) queries into one unit-norm space.

    Built from the generator's parts (shared modules, not copies): ``vision_model`` (a transformers
    InstructBLIP/BLIP-2 vision model), ``query_tokens`` (1, Q, Hq), ``qformer``
    (InstructBlipQFormerModel) and a :class:`FusionEncoder`. ``match_head`` is the 2-way
    (no match, match) classifier over fused (query, item) features that ITM trains and the re-ranker uses.

    Batches are dicts of tensors (collate builds them; Q-Former tokenizer ids):

    * items: ``pixel_values`` (N,3,H,W), ``image_mask`` (N,) bool (False: text-only item, pixels
      ignored), ``qformer_input_ids`` / ``qformer_attention_mask`` (N,T) of the item text (all-zero
      mask row: image-only item);
    * queries: ``pixel_values``, ``qformer_input_ids`` / ``qformer_attention_mask`` of the question,
      optional ``image_mask`` (N,) (False: a question without an image, e.g. WebQA).
    """

    def __init__(
        self,
        vision_model: nn.Module,
        query_tokens: nn.Parameter,
        qformer: InstructBlipQFormerModel,
        fusion: FusionEncoder,
        instruct_queries: bool = True,
    ) -> None:
        super().__init__()
        self.vision_model = vision_model
        self.query_tokens = query_tokens
        self.qformer = qformer
        self.fusion = fusion
        self.match_head = nn.Linear(fusion.hidden_size, 2)
        self.instruct_queries = instruct_queries
        """False: the question is left out of the Q-Former instruction (the "uninstructed" ablation)."""

    @property
    def num_query_tokens(self) -> int:
        return self.query_tokens.shape[1]

    def image_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Vision encoder patch features (n, P, Hv)."""
        return self.vision_model(pixel_values=pixel_values).last_hidden_state

    def query_outputs(
        self,
        image_embeds: torch.Tensor,
        instruction_ids: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Q-Former query outputs (n, Q, Hq) for patch features, optionally instructed by text."""
        n = image_embeds.shape[0]
        queries = self.query_tokens.expand(n, -1, -1)
        attention_mask = None
        if instruction_ids is not None:
            query_mask = torch.ones(n, queries.shape[1], dtype=torch.long, device=image_embeds.device)
            attention_mask = torch.cat([query_mask, instruction_mask.long()], dim=1)
        out = self.qformer(
            input_ids=instruction_ids,
            attention_mask=attention_mask,
            query_embeds=queries,
            encoder_hidden_states=image_embeds,
        )
        return out.last_hidden_state[:, : queries.shape[1]]

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Q-Former text-only forward (n, T, Hq)."""
        return self.qformer(input_ids=input_ids, attention_mask=attention_mask.long()).last_hidden_state

    def _image_part(
        self,
        batch: Mapping[str, torch.Tensor],
        instructed: bool,
        segment: int,
        image_embeds: torch.Tensor | None = None,
    ) -> TokenSequence:
        pixel_values = batch["pixel_values"]
        n = pixel_values.shape[0]
        image_mask = batch.get("image_mask")
        if image_mask is None:
            image_mask = torch.ones(n, dtype=torch.bool, device=pixel_values.device)
        image_mask = image_mask.bool()
        q, hidden = self.num_query_tokens, self.qformer.config.hidden_size
        tokens = torch.zeros(n, q, hidden, dtype=self.query_tokens.dtype, device=pixel_values.device)
        rows = torch.nonzero(image_mask).flatten()
        if rows.numel():
            ids = batch["qformer_input_ids"][rows] if instructed else None
            mask = batch["qformer_attention_mask"][rows] if instructed else None
            if image_embeds is None:
                image_embeds = self.image_embeds(pixel_values[rows])
            outputs = self.query_outputs(image_embeds, ids, mask)
            tokens = tokens.index_put((rows,), outputs.to(tokens.dtype))
        token_mask = image_mask[:, None].expand(n, q)
        return TokenSequence(
            tokens,
            torch.full((n, q), VISION, dtype=torch.long, device=tokens.device),
            token_mask,
            torch.full((n, q), segment, dtype=torch.long, device=tokens.device),
        )

    def _text_part(self, batch: Mapping[str, torch.Tensor], segment: int) -> TokenSequence:
        ids, mask = batch["qformer_input_ids"], batch["qformer_attention_mask"].bool()
        n, length = ids.shape
        tokens = torch.zeros(
            n, length, self.qformer.config.hidden_size, dtype=self.query_tokens.dtype, device=ids.device
        )
        rows = torch.nonzero(mask.any(dim=1)).flatten()
        if rows.numel():
            tokens = tokens.index_put((rows,), self.text_features(ids[rows], mask[rows]).to(tokens.dtype))
        return TokenSequence(
            tokens,
            torch.full((n, length), TEXT, dtype=torch.long, device=ids.device),
            mask,
            torch.full((n, length), segment, dtype=torch.long, device=ids.device),
        )

    def item_sequence(
        self, batch: Mapping[str, torch.Tensor], image_embeds: torch.Tensor | None = None
    ) -> TokenSequence:
        """Fusion input for knowledge items: uninstructed image query outputs, then item text.

        ``image_embeds``: optional precomputed vision features of the rows whose ``image_mask`` is
        True, in row order (lets a caller that also needs them run the vision encoder once).
        """
        image = self._image_part(batch, instructed=False, segment=ITEM_SEGMENT, image_embeds=image_embeds)
        return TokenSequence.concat([image, self._text_part(batch, ITEM_SEGMENT)])

    def query_sequence(self, batch: Mapping[str, torch.Tensor]) -> TokenSequence:
        """Fusion input for queries: (question-instructed) image query outputs, then the question."""
        image = self._image_part(batch, instructed=self.instruct_queries, segment=QUERY_SEGMENT)
        return TokenSequence.concat([image, self._text_part(batch, QUERY_SEGMENT)])

    def encode_items(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(N, D) unit-norm item embeddings."""
        return self.fusion.embed(self.item_sequence(batch))

    def encode_queries(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(N, D) unit-norm query embeddings."""
        return self.fusion.embed(self.query_sequence(batch))

    def match_logits(self, query_seq: TokenSequence, item_seq: TokenSequence) -> torch.Tensor:
        """(N, 2) (no match, match) logits of aligned (query, item) rows fused in one sequence."""
        return self.match_head(self.fusion(TokenSequence.concat([query_seq, item_seq])))

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``retrieval_encoder.json`` (configs) and ``retrieval_encoder.safetensors`` (all weights)."""
        if isinstance(self.vision_model, TimmVisionEncoder):
            vision_config = self.vision_model.description
        else:
            vision_config = self.vision_model.config.to_dict() if hasattr(self.vision_model, "config") else {}
        model_type = vision_config.get("model_type")
        if model_type not in SAVEABLE_VISION_TYPES:
            raise RablipError(
                f"cannot save the retrieval encoder: vision model type {model_type!r} is not one of "
                f"{SAVEABLE_VISION_TYPES}; add it to rablip.models.fusion.VISION_MODEL_TYPES"
            )
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "fusion": asdict(self.fusion.config),
            "vision_config": vision_config,
            "qformer_config": self.qformer.config.to_dict(),
            "num_query_tokens": self.num_query_tokens,
            "instruct_queries": self.instruct_queries,
        }
        state = {name: tensor.detach().contiguous() for name, tensor in self.state_dict().items()}
        # Write to temporary names, then rename: a crash never leaves a half-written pair behind.
        tmp_weights, tmp_config = directory / (WEIGHTS_FILE + ".tmp"), directory / (CONFIG_FILE + ".tmp")
        save_file(state, str(tmp_weights), metadata={"format": FORMAT_NAME})
        tmp_config.write_text(json.dumps(meta, indent=2, sort_keys=True))
        os.replace(tmp_weights, directory / WEIGHTS_FILE)
        os.replace(tmp_config, directory / CONFIG_FILE)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> MultimodalRetrievalEncoder:
        """Rebuild an encoder saved by :meth:`save_pretrained`; every weight must match exactly."""
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        for path in (config_path, weights_path):
            if not path.is_file():
                raise RablipError(f"{path} does not exist; point to a directory written by save_pretrained")
        try:
            meta = json.loads(config_path.read_text())
        except json.JSONDecodeError as exc:
            raise RablipError(f"{config_path}: not valid JSON ({exc}); re-save the encoder") from exc
        if meta.get("format") != FORMAT_NAME or meta.get("version") != FORMAT_VERSION:
            raise RablipError(
                f"{config_path}: format {meta.get('format')!r} v{meta.get('version')!r} is not "
                f"{FORMAT_NAME!r} v{FORMAT_VERSION}; re-save the encoder with this version of rablip"
            )
        model_type = meta["vision_config"].get("model_type")
        if model_type == TIMM_MODEL_TYPE:
            vision_model = TimmVisionEncoder.from_description(meta["vision_config"])
        elif model_type in VISION_MODEL_TYPES:
            vision_config_cls, vision_model_cls = VISION_MODEL_TYPES[model_type]
            vision_model = vision_model_cls(vision_config_cls.from_dict(meta["vision_config"]))
        else:
            raise RablipError(f"{config_path}: unknown vision model_type {model_type!r}; known: "
                              f"{SAVEABLE_VISION_TYPES}")
        qformer_config = InstructBlipQFormerConfig.from_dict(meta["qformer_config"])
        qformer = InstructBlipQFormerModel(qformer_config)
        known = {f.name for f in fields(FusionConfig)}
        fusion = FusionEncoder(
            FusionConfig(**{k: v for k, v in meta["fusion"].items() if k in known}),
            qformer_config.hidden_size,
        )
        query_tokens = nn.Parameter(torch.zeros(1, meta["num_query_tokens"], qformer_config.hidden_size))
        encoder = cls(vision_model, query_tokens, qformer, fusion, instruct_queries=meta["instruct_queries"])
        state = load_file(str(weights_path))
        expected = encoder.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong_shape = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
        if missing or unexpected or wrong_shape:
            raise RablipError(
                f"{weights_path} does not match {config_path}: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                f"wrong shape {wrong_shape[:5]}; the two files must come from the same save_pretrained call"
            )
        encoder.load_state_dict(state, strict=True)
        return encoder
