"""The one typed config schema every entry point reads.

Each section is a dataclass; each field has a docstring (the string under it). YAML files and
``key=value`` overrides are checked against these classes by :mod:`rablip.config.load`: an unknown
key or a value of the wrong type stops the program before any work. Checks that go beyond types
(allowed choices, ranges) live in ``__post_init__`` and raise :class:`ConfigValueError`
(:mod:`rablip.config.checks`), which the loader turns into a message that also names the file the
value came from. The ``data`` section lives in :mod:`rablip.config.data_schema`, ``retrieval`` in
:mod:`rablip.config.retrieval_schema`, ``eval`` and ``log`` in :mod:`rablip.config.eval_schema`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rablip.config.checks import ConfigValueError, check_choice, check_positive, check_range
from rablip.config.data_schema import DATASETS, DataConfig, ExtraPairsConfig, KBConfig, SplitConfig
from rablip.config.eval_schema import EvalConfig, LogConfig
from rablip.config.retrieval_schema import RetrievalConfig

__all__ = ["DATASETS", "GENERATOR_MODULES", "REFINE_SPACES", "TRAINABLE_MODULES", "AskgConfig", "Config", "ConfigValueError",
           "DataConfig", "EvalConfig", "ExtraPairsConfig", "FusionConfig", "KBConfig", "LogConfig", "LoraConfig", "ModelConfig",
           "NoiseConfig", "PromptConfig", "RefineConfig", "RetrievalConfig", "RunConfig", "SplitConfig", "TrainConfig",
           "schema_keys"]


GENERATOR_MODULES = ("vision_model", "qformer", "query_tokens", "language_projection", "language_model",
                     "slot_embeddings")
"""The generator's module groups (train.lr_scale names these)."""
TRAINABLE_MODULES = (*GENERATOR_MODULES, "fusion")
"""Module groups model.trainable names: the generator's and the retrieval encoder's fusion layers."""
MODEL_DTYPES = ("auto", "float32", "bfloat16", "float16")
CHECKPOINTED_PARTS = ("language_model", "qformer")


@dataclass
class RunConfig:
    output_dir: str = "runs/default"
    """Directory of this run: config.yaml, checkpoints, metrics.jsonl, predictions, report."""
    seed: int = 0
    """Seed for python, numpy and torch (each process adds its rank)."""
    resume: bool = False
    """Continue from the latest checkpoint in output_dir (the saved config may differ)."""
    overwrite: bool = False
    """Allow starting in a non-empty output_dir whose saved config differs (the old run is replaced)."""
    name: str = ""
    """Human-readable run name (wandb run name, report title); defaults to the output dir's name."""


@dataclass
class FusionConfig:
    """The fusion encoder's shape, the one config :class:`rablip.models.fusion_layers.FusionEncoder`
    is built from; a saved encoder records it (``checkpoint`` aside) in its retrieval_encoder.json."""

    layers: int = 3
    """Multiway transformer layers of the fusion encoder (RA-BLIP's release has 3)."""
    dim: int = 256
    """Width of the L2-normalised retrieval embedding."""
    heads: int = 0
    """Attention heads of the fusion layers; 0: the Q-Former's (its config's num_attention_heads, 12 at
    the published sizes, as RA-BLIP's release does). Must divide their width, the Q-Former's hidden
    size. A saved encoder records the resolved number."""
    vl_expert_layers: int = 1
    """Top fusion layers in which image+text inputs use the vision-language expert (0 to layers)."""
    checkpoint: str = ""
    """Directory of a pre-trained fusion encoder (run_pretrain's output); empty = untrained."""

    def __post_init__(self) -> None:
        for name in ("layers", "dim"):
            check_positive(f"model.fusion.{name}", getattr(self, name))
        check_positive("model.fusion.heads", self.heads, allow_zero=True)
        if not 0 <= self.vl_expert_layers <= self.layers:
            raise ConfigValueError("model.fusion.vl_expert_layers",
                                   f"{self.vl_expert_layers} is not between 0 and model.fusion.layers={self.layers}")


REFINE_SPACES = ("projected", "vision")  # where the LLaVA family's refinement scores (model.refine.space)


@dataclass
class RefineConfig:
    """RORA-VLM's query-oriented visual token refinement. InstructBLIP: on the patches before the Q-Former
    (rablip.models.refine_hook); LLaVA: on the visual tokens the LLM reads (rablip.models.llava_refine)."""

    enabled: bool = False
    """Switch the refinement on (off: every patch / visual token is kept)."""
    top_m: int = 64
    """Tokens kept per image, in their order (question image: by similarity to the question; retrieved images: by
    the summed similarity to the kept question-image tokens); >= the tokens per image keeps all."""
    space: str = "projected"
    """LLaVA: where similarities are computed (the paper does not say). projected: the projector's outputs (the LLM's
    input space, the only one where the question, its mean LLM token embedding, meets image tokens); vision: retrieved
    images vs kept query tokens before the projector (CLIP's geometry; for a fresh projector). InstructBLIP: ignored."""

    def __post_init__(self) -> None:
        check_positive("model.refine.top_m", self.top_m)
        check_choice("model.refine.space", self.space, REFINE_SPACES)


@dataclass
class LoraConfig:
    """LoRA adapters (peft) on the generator's LLM, either family; they train beside model.trainable, are
    saved as peft adapter files in trainable-only checkpoints and merged into the LLM when loaded."""

    r: int = 0
    """Rank of the adapters; 0: no LoRA."""
    alpha: float = 16.0
    """Scale numerator: an adapter's update is scaled by alpha / r."""
    dropout: float = 0.05
    """Dropout on the adapters' input during training."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """LLM linear layers that get adapters, by name suffix as peft matches them (LLaMA/Vicuna: q_proj, k_proj,
    v_proj, o_proj, gate_proj, up_proj, down_proj; OPT: q_proj, k_proj, v_proj, out_proj, fc1, fc2; T5: q, k, v, o)."""

    def __post_init__(self) -> None:
        check_positive("model.lora.r", self.r, allow_zero=True)
        check_positive("model.lora.alpha", self.alpha)
        check_range("model.lora.dropout", self.dropout, 0.0, 1.0)
        if self.r and not self.target_modules:
            raise ConfigValueError("model.lora.target_modules", "is empty; name the LLM layers that get adapters")


@dataclass
class ModelConfig:
    checkpoint: str = "checkpoints/instructblip-flan-t5-xl"
    """Base checkpoint dir: a transformers InstructBLIP, BLIP-2 or LLaVA dir, or a rablip checkpoint dir (it must
    hold config.json; stages load it and never build one). It brings its own architecture and vision
    encoder; its config's model_type picks the generator family (llava: the LLaVA-1.5 family)."""
    export_generator: bool = False
    """run_pretrain.py: also write <run.output_dir>/final/generator, the base generator holding the
    pre-trained vision encoder, query tokens and Q-Former, for fine-tuning to start from (as BLIP-2's
    second stage starts from its first), for a model whose checkpoint brings no pre-trained Q-Former;
    published checkpoints start fine-tuning from their own weights."""
    trainable: list[str] = field(
        default_factory=lambda: ["qformer", "query_tokens", "language_projection", "slot_embeddings"])
    """Modules that train; the rest are frozen (RA-BLIP: vision encoder and LLM frozen). The LLaVA family has
    vision_model (CLIP tower), language_projection (MLP projector) and language_model (plus fusion)."""
    dtype: str = "auto"
    """Dtype the generator's weights load in, memory-mapped from safetensors straight into it (no float32 copy of a
    bf16 run's frozen weights). auto: bfloat16 when the run computes in bf16 (train.mixed_precision bf16, or auto on
    a GPU with bf16), else float32. Trainable parameters are kept in float32 whatever this says (the optimizer's
    master weights; frozen ones get neither gradients nor optimizer state)."""
    gradient_checkpointing: list[str] = field(default_factory=list)
    """Parts whose activations are recomputed in the backward pass to save memory: language_model, qformer
    (InstructBLIP/BLIP-2 only). BENCHMARKS.md "Real sizes" measures what each saves."""
    multi_image: str = "per_slot"
    """How an example's images reach the LLM. per_slot: one Q-Former pass per image, num_query_tokens image
    tokens per image, slot tables on the query outputs. concat (RA-BLIP's release): the images' patch features
    (+ a type embedding each) concatenated (+ a position table), ONE Q-Former pass, num_query_tokens image
    tokens per example. A rablip checkpoint with trained slot tables loads only in the mode it was saved in."""
    fusion: FusionConfig = field(default_factory=FusionConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        for name in self.trainable:
            check_choice("model.trainable", name, TRAINABLE_MODULES)
        check_choice("model.multi_image", self.multi_image, ("per_slot", "concat"))
        check_choice("model.dtype", self.dtype, MODEL_DTYPES)
        for name in self.gradient_checkpointing:
            check_choice("model.gradient_checkpointing", name, CHECKPOINTED_PARTS)


@dataclass
class PromptConfig:
    template: str = "rablip"
    """Text of the Q-Former instructions and the LLM prompt (rablip/models/prompts.py). rablip: the
    question as instruction ("Question: q", plus a slot's caption), an LLM prompt of numbered
    "Reference N: ..." lines ending "Question: q Short answer:"; release: RA-BLIP's released text, one
    string for both, "caption of image 1 is that c;... | Title: t, Fact: f;... | q" (BLIP caption
    cleaning), both tokenizations cut on the left (data.qformer_max_length; data.max_input_length
    text tokens, image tokens not counted). ASKG selection samples follow the same choice: rablip's
    "Reference N" layout, or the release's two-reference selection prompt and target."""

    reference_views: bool = False
    """rablip template: every text reference gets an image slot holding the question image, its Q-Former
    instruction the question and the reference's text, so the Q-Former looks at the picture with each
    reference in hand and the LLM reads that view before the reference's line (off: text references
    have no slot, as in RA-BLIP)."""

    def __post_init__(self) -> None:
        check_choice("prompt.template", self.template, ("rablip", "release"))
        if self.reference_views and self.template != "rablip":
            raise ConfigValueError("prompt.reference_views", "needs prompt.template=rablip (the release's text "
                                   "lists a viewed reference as an image caption); turn one of them off")


@dataclass
class AskgConfig:
    enabled: bool = False
    """Adaptive Selection Knowledge Generation: add a relevance-selection sample per example (see answer_refs)."""
    noise_ratio: float = 0.5
    """Share of a sample's references that are irrelevant (answer_refs=mixed only)."""
    weight: float = 0.1
    """Loss weight of the relevance-selection sample (RA-BLIP: 0.1)."""
    negatives: str = "random"
    """random: random KB items; hard: retriever ranks below the relevant ones; dataset: its own distractors."""
    answer_refs: str = "mixed"
    """What the ASKG samples hold (rablip/training/askg.py). mixed (RORA-style noise training): answering
    references mix in irrelevant ones (noise_ratio); the selection lists one relevant and up to k - 1 of
    them. gold (RA-BLIP's release): the answering sample holds the relevant items (images up to retrieval.k),
    no distractors; the selection lists the first relevant text (else image) item and the first negative
    (askg.negatives) of the other modality (else of any)."""
    selection_order: str = "shuffled"
    """Selection sample's order. shuffled (rablip): random; positive_first (RA-BLIP's release): relevant first."""
    answer_order: str = "ranked"
    """mixed answering sample's order: ranked (the retriever's order, unranked items after) or shuffled."""

    def __post_init__(self) -> None:
        check_range("askg.noise_ratio", self.noise_ratio, 0.0, 1.0)
        check_positive("askg.weight", self.weight, allow_zero=True)
        check_choice("askg.negatives", self.negatives, ("random", "hard", "dataset"))
        check_choice("askg.answer_refs", self.answer_refs, ("mixed", "gold"))
        check_choice("askg.selection_order", self.selection_order, ("shuffled", "positive_first"))
        check_choice("askg.answer_order", self.answer_order, ("ranked", "shuffled"))


@dataclass
class NoiseConfig:
    random_snippets: int = 0
    """RORA-VLM noise-resilient training: irrelevant snippets of random entities added per example."""
    counterfactual: float = 0.0
    """Share of training examples whose answer, where a reference's text states it, is replaced there and
    in the target by another training answer of the same kind (same question, else same question and
    answer type), so the generator learns to read its references instead of recalling facts."""
    counterfactual_types: list[str] = field(default_factory=list)
    """Question types that counterfactual swaps apply to (empty: all). Keep out types whose answer the
    image shows, or the generator learns to trust text over it."""

    def __post_init__(self) -> None:
        check_positive("noise.random_snippets", self.random_snippets, allow_zero=True)
        check_range("noise.counterfactual", self.counterfactual, 0.0, 1.0)


@dataclass
class TrainConfig:
    lr: float = 1e-4
    """Peak learning rate (after warm-up)."""
    lr_scale: dict[str, float] = field(default_factory=dict)
    """Learning-rate multipliers of the generator's module groups (names as in model.trainable; one
    that does not train is left alone), e.g. {language_model: 0.3} to fine-tune a warmed-up LLM
    gently while the Q-Former learns at the full rate."""
    min_lr_ratio: float = 0.1
    """Cosine schedule ends at lr x min_lr_ratio (unless train.min_lr > 0)."""
    min_lr: float = 0.0
    """Absolute floor of the cosine schedule; when > 0 it wins over min_lr_ratio (0: lr x min_lr_ratio).
    At most lr."""
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 100
    """Optimizer steps of linear warm-up: step s < warmup_steps (s from 0) trains at
    warmup_start_lr + (lr - warmup_start_lr) x (s + 1) / warmup_steps; then cosine from lr to the floor
    at max_steps."""
    warmup_start_lr: float = 0.0
    """Learning rate the linear warm-up starts from (0: from 0, i.e. lr x (s + 1) / warmup_steps). At most lr."""
    max_steps: int = 1000
    """Optimizer steps to train; must be 0 when train.epochs > 0 (then derived)."""
    epochs: float = 0.0
    """When > 0: train this many passes over the training set; max_steps is derived as
    ceil(epochs x examples / (batch_size x processes x grad_accum)), examples being every example the
    loop samples from (fine-tuning: training questions plus data.replay's; pre-training: pairs plus
    extra pairs per epoch), and logged. Setting both epochs and max_steps > 0 is an error."""
    batch_size: int = 8
    """Per-process batch size (global batch = batch_size x processes x grad_accum)."""
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    """Gradient clipping norm; null or 0: no clipping."""
    mixed_precision: str = "auto"
    """auto: bf16 on GPU, fp32 on CPU; no; bf16."""
    save_every: int = 500
    """Save a checkpoint every this many optimizer steps."""
    keep_last: int = 2
    """Checkpoints kept besides the best one."""
    eval_every: int = 0
    """Evaluate every this many steps (0: only at the end)."""
    best_metric: str = ""
    """Metric that selects the best checkpoint (empty: keep none as best)."""
    best_mode: str = "max"
    deterministic: bool = True
    """Deterministic kernels, so a resumed run ends bit-identical to an uninterrupted one (slightly slower)."""
    find_unused_parameters: bool = True
    """DDP: find the parameters a step left unused (a batch without image items leaves the item-image path
    out), so that the ranks' gradient reductions stay in step; false saves a graph walk per step for a
    model whose every step uses every trained parameter."""
    skip_nonfinite: bool = False
    """Skip steps with a NaN/inf loss (counted) instead of stopping."""
    feature_cache: bool = False
    """Fine-tuning: take the vision encoder's patch features of knowledge-item images from an on-disk
    float16 cache instead of encoding the item images at every step (question images are still
    encoded). Built on first use (every image item of the KB store), then memory-mapped by every step
    and later run; keyed on a sha256 of the vision weights and config, the image processor settings
    and the KB store's manifest, so a cache built for anything else is rebuilt, never reused. Needs a
    frozen vision encoder (vision_model not in model.trainable). Disk: image items x patches x width
    x 2 bytes (InstructBLIP's ViT-g: 257 x 1408 x 2, about 0.7 MB per image item)."""
    feature_cache_dir: str = ""
    """Directory of the feature cache (one cache; a stale one is replaced). Empty: beside the KB store,
    <data.kb.store_dir>.vision_features."""
    feature_cache_batch_size: int = 64
    """Images per vision-encoder batch while the feature cache is built."""
    item_pairs: str = "self"
    """Pre-training pairs from the knowledge base: self (an image+text item's image finds that item) or
    entity (it finds any item with the same title, e.g. the entity's text article, and the query carries
    a random training question's text, as real queries do)."""
    image_only_queries: float = 0.0
    """Pre-training: share of the queries that carry their image alone, the question dropped, as RORA-VLM's
    stage-1 image search (retrieval.mode=two_stage) asks the encoder. 0: every query keeps its question."""
    itc_weight: float = 1.0
    """Pre-training: image-text contrastive loss weight."""
    itm_weight: float = 1.0
    """Pre-training: image-text matching (hard negatives) loss weight."""
    itg_weight: float = 1.0
    """Pre-training: Q-Former caption generation loss weight."""
    stage: str = "encoder"
    """What run_pretrain.py trains: encoder (the Q-Former and fusion encoder, ITC/ITM/ITG) or rerank (only
    a re-ranker head, initialised from the ITM head, on the frozen fused features of model.fusion.checkpoint
    over each training question's relevant items and the retriever's hard negatives from
    retrieval.index_dir; rablip/stages/rerank.py). retrieval.rerank_model then scores with that head."""

    def __post_init__(self) -> None:
        check_positive("train.lr", self.lr)
        check_positive("train.epochs", self.epochs, allow_zero=True)
        check_positive("train.max_steps", self.max_steps, allow_zero=self.epochs > 0)
        if self.epochs > 0 and self.max_steps > 0:
            raise ConfigValueError("train.epochs", f"{self.epochs} and train.max_steps={self.max_steps} are both set; "
                                   "set train.max_steps=0 to derive the steps from the epochs, or train.epochs=0")
        check_range("train.min_lr", self.min_lr, 0.0, self.lr)
        check_range("train.warmup_start_lr", self.warmup_start_lr, 0.0, self.lr)
        if self.max_grad_norm is not None:
            check_positive("train.max_grad_norm", self.max_grad_norm, allow_zero=True)
        check_positive("train.batch_size", self.batch_size)
        check_positive("train.grad_accum", self.grad_accum)
        check_positive("train.save_every", self.save_every)
        check_positive("train.feature_cache_batch_size", self.feature_cache_batch_size)
        check_positive("train.warmup_steps", self.warmup_steps, allow_zero=True)
        check_range("train.min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        for module, scale in self.lr_scale.items():
            check_choice("train.lr_scale", module, GENERATOR_MODULES)
            check_positive(f"train.lr_scale.{module}", scale)
        check_choice("train.mixed_precision", self.mixed_precision, ("auto", "no", "bf16"))
        check_choice("train.best_mode", self.best_mode, ("max", "min"))
        check_choice("train.item_pairs", self.item_pairs, ("self", "entity"))
        check_range("train.image_only_queries", self.image_only_queries, 0.0, 1.0)
        check_choice("train.stage", self.stage, ("encoder", "rerank"))
        for name in ("itc_weight", "itm_weight", "itg_weight"):
            check_positive(f"train.{name}", getattr(self, name), allow_zero=True)
        if len(self.betas) != 2:
            raise ConfigValueError("train.betas", f"needs two values, got {self.betas}")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    askg: AskgConfig = field(default_factory=AskgConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)


def schema_keys(cls: type = Config, prefix: str = "") -> dict[str, Any]:
    """Every valid dotted key of the schema, mapped to its field type (sections included)."""
    import dataclasses
    import typing

    keys: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        keys[name] = hints[f.name]
        if dataclasses.is_dataclass(hints[f.name]):
            keys.update(schema_keys(hints[f.name], name + "."))
    return keys
