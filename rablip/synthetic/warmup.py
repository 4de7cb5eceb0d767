"""The loop both warm-ups of a freshly built tiny model run (reading for its LLM, viewing for its
vision encoder): AdamW with decay/no-decay groups, linear warm-up then cosine to a tenth, clipped
gradients, a progress bar."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from rablip.training.optim import lr_factor, parameter_groups


def run_warm_up(module: torch.nn.Module, step_loss: Callable[[int], torch.Tensor], steps: int, *, lr: float,
                warmup_steps: int, weight_decay: float = 0.05, desc: str = "warm-up",
                show_progress: bool = True) -> list[float]:
    """Train all of ``module`` in place for ``steps`` steps on ``step_loss(step)``; returns the losses.
    Parameters frozen before are frozen again after."""
    frozen = [param for param in module.parameters() if not param.requires_grad]
    module.requires_grad_(True)
    optimizer = torch.optim.AdamW([g for g in parameter_groups(module, weight_decay) if g["params"]], lr=lr)
    module.train()
    losses = []
    bar = tqdm(range(steps), desc=desc, disable=not show_progress)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr * lr_factor(step, warmup_steps, steps, 0.1)
        loss = step_loss(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    module.eval()
    for param in frozen:
        param.requires_grad_(False)
    return losses
