"""AdamW with decay/no-decay parameter groups, and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from rablip.config.schema import TrainConfig
from rablip.models.freezing import group_of


def parameter_groups(model: nn.Module, weight_decay: float,
                     lr_scale: Mapping[str, float] | None = None) -> list[dict]:
    """Trainable parameters split into decayed (matrices) and not decayed (biases, norms, embeddings
    of one dimension, scalars such as temperatures) groups, and by learning-rate multiplier: a module
    group named in ``lr_scale`` (see :func:`rablip.models.freezing.group_of`) gets its own pair of
    groups; a named module that does not train is left alone."""
    lr_scale = dict(lr_scale or {})
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {(1.0, True): [], (1.0, False): []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decayed = not (param.ndim < 2 or name.endswith(".bias") or "norm" in name.lower())
        scale = lr_scale.get(_module_group(name), 1.0) if lr_scale else 1.0
        groups.setdefault((scale, decayed), []).append(param)
    return [{"params": params, "weight_decay": weight_decay if decayed else 0.0, "lr_scale": scale}
            for (scale, decayed), params in groups.items()]


def _module_group(parameter_name: str) -> str | None:
    """The generator module group of a parameter, also inside a wrapper (``objective.encoder.qformer.*``)."""
    parts = parameter_name.split(".")
    for start in range(len(parts)):
        try:
            return group_of(".".join(parts[start:]))
        except KeyError:
            continue
    return None


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    groups = [g for g in parameter_groups(model, cfg.weight_decay, cfg.lr_scale) if g["params"]]
    if not groups:
        raise ValueError("the model has no trainable parameters: check model.trainable")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def lr_factor(step: int, warmup_steps: int, max_steps: int, min_ratio: float, start_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate at ``step``: linear warm-up from ``start_ratio`` (step s <
    warmup_steps gets start_ratio + (1 - start_ratio) x (s + 1) / warmup_steps), then cosine to ``min_ratio``
    at ``max_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return start_ratio + (1.0 - start_ratio) * (step + 1) / warmup_steps
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def total_steps(cfg: TrainConfig, examples: int, processes: int) -> int:
    """Optimizer steps of a run: ``train.max_steps``, or with ``train.epochs`` > 0,
    ceil(epochs x examples / (batch_size x processes x grad_accum)) (at least 1)."""
    if cfg.epochs <= 0:
        return cfg.max_steps
    global_batch = cfg.batch_size * processes * cfg.grad_accum
    samples = round(cfg.epochs * examples, 6)  # 0.1 x 30 is 3, not 3.0000000000000004
    return max(1, math.ceil(samples / global_batch))


def set_lr(optimizer: torch.optim.Optimizer, cfg: TrainConfig, step: int, max_steps: int | None = None) -> float:
    """Set every group's learning rate for optimizer step ``step`` (a pure function of the step, so
    a resumed run needs no scheduler state), times the group's ``lr_scale``; returns the unscaled one.
    ``max_steps`` is the run's length (default ``train.max_steps``; see :func:`total_steps`). The cosine's
    floor is ``train.min_lr`` when > 0, else lr x ``train.min_lr_ratio``; the warm-up starts from
    ``train.warmup_start_lr``."""
    min_ratio = cfg.min_lr / cfg.lr if cfg.min_lr > 0 else cfg.min_lr_ratio
    lr = cfg.lr * lr_factor(step, cfg.warmup_steps, cfg.max_steps if max_steps is None else max_steps, min_ratio,
                            cfg.warmup_start_lr / cfg.lr)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    return lr
