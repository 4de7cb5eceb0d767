"""The retrieval encoder: one embedding space for image, text and image+text items and questions.

RA-BLIP encodes knowledge items and questions with the Q-Former plus a few fusion layers and searches
them by inner product. :class:`MultimodalRetrievalEncoder` feeds the fusion layers
(:mod:`rablip.models.fusion_layers`) from the generator's own frozen vision encoder, learned query
tokens and Q-Former; :mod:`rablip.models.fusion_checkpoint` holds its saved format.

Token sources (decided here, documented because they are choices):

* Image tokens are the Q-Former's query outputs. A question image is extracted *with the question as
  the Q-Former instruction* (query-instructed extraction, as InstructBLIP does); ``instruct_queries=False``
  leaves the instruction out (the "uninstructed" ablation). Item images are extracted without an
  instruction, so an item's embedding never depends on any question and can be indexed once.
* Text tokens are the Q-Former's *text-only forward* (BLIP-2's text encoder path: word embeddings,
  self-attention, text feed-forward), not raw word embeddings. Pre-trained InstructBLIP/BLIP-2 weights
  trained that path for image-text contrast, so the fusion layers start from contextual text features
  instead of having to learn contextualisation from scratch in 2-3 layers.

The embedding is the final-LayerNorm'd [CLS] state of the fusion layers, linearly projected and
L2-normalised.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn
from transformers import InstructBlipQFormerModel

from rablip.models.fusion_checkpoint import load_encoder_weights, read_encoder_parts, save_encoder
from rablip.models.fusion_layers import (
    ITEM_SEGMENT,
    QUERY_SEGMENT,
    TEXT,
    VISION,
    FusionEncoder,
    TokenSequence,
)


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
        save_encoder(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> MultimodalRetrievalEncoder:
        """Rebuild an encoder saved by :meth:`save_pretrained`; every weight must match exactly."""
        encoder = cls(**read_encoder_parts(directory))
        load_encoder_weights(encoder, directory)
        return encoder
