"""The Q-Former choice: InstructBLIP's (instruction-aware) or BLIP-2's (queries only).

Both are transformers' own classes, so transformers checkpoints load into them unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel, InstructBlipQFormerModel

from rablip.models.config import RABlipConfig


def build_qformer(config: RABlipConfig) -> nn.Module:
    """InstructBLIP's Q-Former, or BLIP-2's when ``config.qformer_text_input`` is False."""
    if config.qformer_text_input:
        return InstructBlipQFormerModel._from_config(config.qformer_config)
    fields = config.qformer_config.to_dict()
    for key in ("model_type", "transformers_version"):
        fields.pop(key, None)
    return Blip2QFormerModel._from_config(Blip2QFormerConfig(**fields, use_qformer_text_input=False))


def run_qformer(
    qformer: nn.Module,
    query_tokens: torch.Tensor,
    patch_features: torch.Tensor,
    patch_mask: torch.Tensor,
    instruction_ids: torch.Tensor | None,
    instruction_mask: torch.Tensor | None,
) -> torch.Tensor:
    """Query outputs (N, Q, D) of the Q-Former for N images.

    ``query_tokens`` (N, Q, D), ``patch_features`` (N, P, Dv), ``patch_mask`` (N, P) with 1 on
    patches to attend. The instruction (N, L) is used only by the InstructBLIP Q-Former, exactly
    as transformers' InstructBLIP feeds it (queries first, then instruction tokens).
    """
    num_queries = query_tokens.shape[1]
    if isinstance(qformer, InstructBlipQFormerModel):
        if instruction_mask is None:
            instruction_mask = torch.ones_like(instruction_ids)
        query_mask = torch.ones(query_tokens.shape[:-1], dtype=torch.long, device=query_tokens.device)
        outputs = qformer(
            input_ids=instruction_ids,
            attention_mask=torch.cat([query_mask, instruction_mask.to(query_mask)], dim=1),
            query_embeds=query_tokens,
            encoder_hidden_states=patch_features,
            encoder_attention_mask=patch_mask,
            return_dict=True,
        )
    else:
        outputs = qformer(
            query_embeds=query_tokens,
            encoder_hidden_states=patch_features,
            encoder_attention_mask=patch_mask,
            return_dict=True,
        )
    return outputs.last_hidden_state[:, :num_queries, :]
