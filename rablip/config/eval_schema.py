"""The ``eval`` and ``log`` sections of the config schema (see :mod:`rablip.config.schema` for the
conventions)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rablip.config.checks import check_choice, check_positive, check_range


@dataclass
class EvalConfig:
    split: str = "val"
    """Split to answer: train, val or test."""
    checkpoint: str = ""
    """Fine-tuned rablip checkpoint dir to evaluate (empty: model.checkpoint as it is)."""
    batch_size: int = 8
    num_beams: int = 5
    max_new_tokens: int = 10
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    lemmatize: bool = False
    """OK-VQA: lemmatize predictions as BLIP-2/LAVIS do (not part of the official metric)."""
    noisy_fraction: float = 0.0
    """Replace this share of the k references (rounded half up; the lowest-ranked ones) by random items
    of other entities, then shuffle the k (robustness check)."""
    noisy_mode: str = "random"
    """Which items replace them: random (random knowledge-base items of other entities) or hard (the
    retriever's own next-ranked wrong items: the question's ranked candidates below the top k that are not
    relevant to it, nor of its entity; random ones where too few are ranked). hard needs retrieval.source
    index or static (a ranking); the count, the kept items and the shuffle are random mode's."""
    k_sweep: list[int] = field(default_factory=list)
    """Also answer with the top k references for each of these k (clean retrieval) and plot accuracy
    against k in the report; the configured retrieval.k is always included."""
    retrieval_only: bool = False
    """Score the configured retriever (recall@k, MRR, precision@k, WebQA retrieval F1) without loading
    the generator or answering; needs retrieval.source index or static."""
    report: bool = True
    """Write report.html with plots and an example gallery."""
    gallery_size: int = 24

    def __post_init__(self) -> None:
        check_choice("eval.split", self.split, ("train", "val", "test"))
        check_positive("eval.num_beams", self.num_beams)
        check_range("eval.noisy_fraction", self.noisy_fraction, 0.0, 1.0)
        check_choice("eval.noisy_mode", self.noisy_mode, ("random", "hard"))
        for k in self.k_sweep:
            check_positive("eval.k_sweep", k, allow_zero=True)


@dataclass
class LogConfig:
    wandb: bool = False
    """Log to Weights & Biases (offline mode works without network)."""
    wandb_project: str = "rablip"
    wandb_mode: str = "offline"
    """offline writes a local run folder to sync later; online needs network."""
    every: int = 10
    """Log metrics every this many optimizer steps."""

    def __post_init__(self) -> None:
        check_choice("log.wandb_mode", self.wandb_mode, ("offline", "online", "disabled"))
