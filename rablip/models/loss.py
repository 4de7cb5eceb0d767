"""Token cross-entropy with per-sample weights, and the QA / ASKG split for logging.

Without weights the loss is the token-mean cross-entropy, exactly what transformers computes for
InstructBLIP. With ``sample_weight`` (B,) it is the mean over samples (those with at least one
target token) of ``weight * per-sample token-mean cross-entropy``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

IGNORE_INDEX = -100
QA_KIND = 0
ASKG_KIND = 1


@dataclass
class LossParts:
    """The training loss and what is logged beside it."""

    loss: torch.Tensor
    per_sample_loss: torch.Tensor
    qa_loss: torch.Tensor | None
    askg_loss: torch.Tensor | None


def per_sample_token_losses(
    logits: torch.Tensor, labels: torch.Tensor, shift: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed token cross-entropy (B,) and target-token counts (B,).

    ``shift`` is True for decoder-only models (token t predicts label t+1).
    """
    if shift:
        logits = logits[:, :-1, :]
        labels = labels[:, 1:]
    labels = labels.to(logits.device)
    token_losses = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    ).view(labels.shape)
    counts = (labels != IGNORE_INDEX).sum(dim=1)
    return token_losses.sum(dim=1), counts


def labelled_token_losses(
    hidden: torch.Tensor, output_layer: torch.nn.Module, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What :func:`per_sample_token_losses` (with ``shift``) and a per-sample exact match compute, with the
    output layer applied to the positions that predict a label only: summed token cross-entropy (B,),
    target-token counts (B,) and whether every target token is its logits' argmax (B,).

    ``hidden`` (B, L, H) are a decoder-only LLM's last hidden states, ``labels`` (B, L) its labels.
    """
    labels = labels[:, 1:].to(hidden.device)
    predicting = labels != IGNORE_INDEX
    logits = output_layer(hidden[:, :-1][predicting]).float()
    targets = labels[predicting]
    rows = predicting.nonzero()[:, 0]
    batch = labels.shape[0]
    token_losses = F.cross_entropy(logits, targets, reduction="none")
    loss_sums = torch.zeros(batch, dtype=token_losses.dtype, device=hidden.device).index_add(0, rows, token_losses)
    wrong = torch.zeros(batch, dtype=torch.long, device=hidden.device).index_add(
        0, rows, (logits.argmax(dim=-1) != targets).long())
    counts = predicting.sum(dim=1)
    return loss_sums, counts, (wrong == 0) & (counts > 0)


def _kind_mean(per_sample: torch.Tensor, has_target: torch.Tensor, selected: torch.Tensor) -> torch.Tensor | None:
    chosen = selected & has_target
    if not bool(chosen.any()):
        return None
    return per_sample[chosen].mean().detach()


def combine_losses(
    loss_sums: torch.Tensor,
    counts: torch.Tensor,
    sample_weight: torch.Tensor | None,
    sample_kind: torch.Tensor | None,
) -> LossParts:
    """The batch loss from per-sample sums and counts, weighted as the batch contract says."""
    has_target = counts > 0
    per_sample = loss_sums / counts.clamp(min=1)
    if sample_weight is None:
        loss = loss_sums.sum() / counts.sum().clamp(min=1)
    else:
        weights = sample_weight.to(per_sample)
        loss = (weights * per_sample)[has_target].sum() / has_target.sum().clamp(min=1)
    qa_loss = askg_loss = None
    if sample_kind is not None:
        kind = sample_kind.to(per_sample.device)
        qa_loss = _kind_mean(per_sample, has_target, kind == QA_KIND)
        askg_loss = _kind_mean(per_sample, has_target, kind == ASKG_KIND)
    return LossParts(loss=loss, per_sample_loss=per_sample.detach(), qa_loss=qa_loss, askg_loss=askg_loss)
