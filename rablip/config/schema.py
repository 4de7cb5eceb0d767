"""The one typed config schema every entry point reads.

Each section is a dataclass; each field has a docstring (the string under it). YAML files and
``key=value`` overrides are checked against these classes by :mod:`rablip.config.load`: an unknown
key or a value of the wrong type stops the program before any work. Checks that go beyond types
(allowed choices, ranges) live in ``__post_init__`` and raise :class:`ConfigValueError`, which the
loader turns into a message that also names the file the value came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rablip.errors import ConfigError


class ConfigValueError(ConfigError):
    """A value of the right type that is not allowed (a choice or range check)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.detail = message


GENERATOR_MODULES = ("vision_model", "qformer", "query_tokens", "language_projection", "language_model",
                     "slot_embeddings")
"""The generator's module groups (train.lr_scale names these)."""
TRAINABLE_MODULES = (*GENERATOR_MODULES, "fusion")
"""Module groups model.trainable names: the generator's and the retrieval encoder's fusion layers."""


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigValueError(key, f"{value!r} is not one of {', '.join(repr(c) for c in choices)}")


def _range(key: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise ConfigValueError(key, f"{value} is outside [{lo}, {hi}]")


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigValueError(key, f"{value} must be {'>= 0' if allow_zero else '> 0'}")


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
class ArchConfig:
    """Architecture sizes. For published checkpoints they document (and are checked against) the
    checkpoint's own config.json; for ``model.build_if_missing`` they are what gets built."""

    image_size: int = 224
    """Input image side in pixels."""
    patch_size: int = 14
    vision_hidden_size: int = 1408
    vision_layers: int = 39
    vision_heads: int = 16
    vision_intermediate_size: int = 6144
    qformer_hidden_size: int = 768
    qformer_layers: int = 12
    qformer_heads: int = 12
    qformer_intermediate_size: int = 3072
    cross_attention_frequency: int = 2
    """The Q-Former cross-attends to image features every this many layers."""
    num_query_tokens: int = 32
    llm_type: str = "t5"
    """Language model family: t5 (encoder-decoder), opt or llama (decoder-only)."""
    llm_hidden_size: int = 2048
    llm_layers: int = 24
    llm_heads: int = 32
    llm_intermediate_size: int = 5120
    llm_tie_embeddings: bool = False
    """llama: the output layer shares the input embedding matrix (T5 and OPT share it already). A tiny
    LLM trained from scratch learns to copy words out of its references much faster with it."""
    llm_copy_init: bool = False
    """When ``model.build_if_missing`` builds a decoder-only LLM: its attention value and output projections
    start as the identity, so an attention head copies the tokens it attends to from the first step. A
    tiny LLM trained from scratch otherwise waits, per kind of fact, for the lookup and the copy to form
    together, at a seed-dependent step (BENCHMARKS.md, synthetic demo)."""
    llm_vocab_size: int = 32128
    qformer_vocab_size: int = 30523

    def __post_init__(self) -> None:
        _choice("model.arch.llm_type", self.llm_type, ("t5", "opt", "llama"))
        if self.llm_copy_init and self.llm_type == "t5":
            raise ConfigValueError("model.arch.llm_copy_init", "is for decoder-only LLMs (llm_type llama or opt), "
                                   "not t5; set it to false or choose another llm_type")
        for name in ("image_size", "patch_size", "vision_hidden_size", "vision_layers", "qformer_hidden_size",
                     "qformer_layers", "num_query_tokens", "llm_hidden_size", "llm_layers"):
            _positive(f"model.arch.{name}", getattr(self, name))


@dataclass
class FusionConfig:
    layers: int = 3
    """Multiway transformer layers of the fusion encoder (RA-BLIP's release has 3)."""
    dim: int = 256
    """Width of the L2-normalised retrieval embedding."""
    heads: int = 4
    vl_expert_layers: int = 1
    """Top fusion layers in which image+text inputs use the vision-language expert."""
    checkpoint: str = ""
    """Directory of a pre-trained fusion encoder (run_pretrain's output); empty = untrained."""


@dataclass
class RefineConfig:
    enabled: bool = False
    """RORA-VLM query-oriented visual token refinement before the Q-Former's cross-attention."""
    top_m: int = 64
    """Patches kept per image (question image: by similarity to the question; items: to kept query patches)."""


@dataclass
class ModelConfig:
    checkpoint: str = "checkpoints/instructblip-flan-t5-xl"
    """Base checkpoint dir: a transformers InstructBLIP or BLIP-2 dir, or a rablip checkpoint dir."""
    build_if_missing: bool = False
    """Build a fresh model of size ``arch`` (with tokenizers trained on the data) when checkpoint is empty.
    Only for tiny synthetic experiments: real runs must point at real weights."""
    export_generator: bool = False
    """run_pretrain.py: also write <run.output_dir>/final/generator, the base generator holding the
    pre-trained vision encoder, query tokens and Q-Former, for fine-tuning to start from (as BLIP-2's
    second stage starts from its first). For models without a pre-trained vision encoder (the tiny
    synthetic one); published checkpoints start fine-tuning from their own weights."""
    arch: ArchConfig = field(default_factory=ArchConfig)
    qformer_instruction: bool = True
    """Whether the Q-Former reads the instruction (InstructBLIP). False for BLIP-2 checkpoints."""
    vision_backend: str = "hf"
    """The vision encoder model.build_if_missing builds: hf (InstructBLIP's ViT, of size model.arch) or
    timm (the timm architecture timm_name, created without weights, its tokens projected to
    model.arch.vision_hidden_size). A checkpoint brings its own; a different one here is an error."""
    timm_name: str = ""
    trainable: list[str] = field(
        default_factory=lambda: ["qformer", "query_tokens", "language_projection", "slot_embeddings"])
    """Modules that train; the rest are frozen (RA-BLIP: vision encoder and LLM frozen)."""
    gradient_checkpointing: bool = False
    """Recompute LLM and Q-Former activations in the backward pass to save memory."""
    fusion: FusionConfig = field(default_factory=FusionConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)

    def __post_init__(self) -> None:
        _choice("model.vision_backend", self.vision_backend, ("hf", "timm"))
        if self.vision_backend == "timm" and not self.timm_name:
            raise ConfigValueError("model.timm_name", "must name a timm model when model.vision_backend=timm")
        for name in self.trainable:
            _choice("model.trainable", name, TRAINABLE_MODULES)


@dataclass
class SplitConfig:
    """Files of one split, in the benchmark's official format."""

    path: str = ""
    """Main file: OK-VQA/VQAv2 questions json, A-OKVQA json, WebQA json, InfoSeek jsonl."""
    annotations: str = ""
    """OK-VQA/VQAv2 annotations json (empty for test-style splits)."""
    qtypes: str = ""
    """InfoSeek question-type jsonl."""
    image_root: str = ""
    """Directory holding the split's images."""
    image_split: str = ""
    """Image sub-folder and COCO name part, e.g. val2014 (OK-VQA) or val (A-OKVQA -> val2017)."""
    split: str = ""
    """Split name inside a shared file (WebQA's train/val)."""
    image_pattern: str = "{image_id}.jpg"
    """InfoSeek: image file name under image_root, formatted with the record's image_id."""


@dataclass
class KBConfig:
    format: str = "jsonl"
    """Input format: jsonl (generic knowledge-base JSONL), wit_tsv, or webqa (facts of WebQA json)."""
    path: str = ""
    """Input file of the knowledge base."""
    root: str = ""
    """KB root directory: relative image paths resolve under it and may not escape it."""
    store_dir: str = ""
    """Output directory of the on-disk Arrow store (built by scripts/build_kb.py)."""
    overwrite: bool = False
    """Replace an existing store at store_dir (only a directory that is a store)."""
    wit_title_column: str = "page_title"
    wit_text_column: str = "reference_description"
    wit_image_column: str = "image_url"
    wit_id_column: str = ""
    """Column holding item ids (empty: ids are <file stem>-<row>)."""
    wit_has_header: bool = True
    webqa_images_tsv: str = ""
    """WebQA imgs.tsv (its imgs.lineidx beside it) for image facts."""

    def __post_init__(self) -> None:
        _choice("data.kb.format", self.format, ("jsonl", "wit_tsv", "webqa"))


@dataclass
class SyntheticConfig:
    world_dir: str = "data/synthetic"
    """Where the synthetic world lives; built on first use when empty."""
    entities: int = 96
    seed: int = 0
    distractors: int = -1
    """Distractor entities (in the KB, in no question); -1: entities // 2."""
    unseen_fraction: float = 0.3
    """Share of val/test entities that never appear in train."""
    image_size: int = 64
    train_images_per_entity: int = 12
    """Question images per seen entity in train (each carries a knowledge, a visual and a naming question)."""
    eval_images_per_entity: int = 3
    align_images: int = 4000
    """Renderings of invented creatures in the world's align/ split, one visual question each, for the
    generator's alignment stage (configs/experiment/synthetic_align.yaml; rablip.synthetic.aligning;
    no world entity's look). 0: no align/ split."""
    edit_fraction: float = 0.2
    """Knowledge edit: share of test entities whose facts change."""
    llm_tokenizer_kind: str = "t5"
    """Tokenizer trained for the tiny LLM: t5 (encoder-decoder) or causal (decoder-only)."""
    tokenizer_vocab_size: int = 1500
    reading_warmup_steps: int = 0
    """When model.build_if_missing builds the tiny generator: text-only steps its LLM first trains on
    reading questions about invented creatures (rablip.synthetic.reading; no world entity), standing
    in for the pre-trained LLM a real checkpoint brings. 0: none."""
    vision_warmup_steps: int = 0
    """When model.build_if_missing builds the tiny generator: steps its vision encoder first trains to
    name the shape, colour, pattern and size of renderings of invented creatures
    (rablip.synthetic.viewing; no world entity's looks), standing in for the pre-trained vision
    encoder a real checkpoint brings. 0: none."""
    pretrain_invented_share: float = 0.0
    """Share of run_pretrain's pairs drawn fresh each time from invented creatures (a rendering as the
    query, its fact text or caption as the item; rablip.synthetic.describing; no world entity's look
    or name), standing in for the generic image-text pairs a real Q-Former is pre-trained on. 0: none."""

    def __post_init__(self) -> None:
        _positive("data.synthetic.entities", self.entities)
        _range("data.synthetic.pretrain_invented_share", self.pretrain_invented_share, 0.0, 0.9)
        _positive("data.synthetic.align_images", self.align_images, allow_zero=True)
        _positive("data.synthetic.reading_warmup_steps", self.reading_warmup_steps, allow_zero=True)
        _positive("data.synthetic.vision_warmup_steps", self.vision_warmup_steps, allow_zero=True)
        _range("data.synthetic.unseen_fraction", self.unseen_fraction, 0.0, 1.0)
        _range("data.synthetic.edit_fraction", self.edit_fraction, 0.0, 1.0)
        _choice("data.synthetic.llm_tokenizer_kind", self.llm_tokenizer_kind, ("t5", "causal"))


@dataclass
class DataConfig:
    dataset: str = "synthetic"
    """Benchmark format: okvqa, vqav2, aokvqa, webqa, infoseek, synthetic (OK-VQA format)."""
    train: SplitConfig = field(default_factory=SplitConfig)
    val: SplitConfig = field(default_factory=SplitConfig)
    test: SplitConfig = field(default_factory=SplitConfig)
    replay: SplitConfig = field(default_factory=SplitConfig)
    """Fine-tuning: a second training split, in ``data.dataset``'s format, whose questions are answered from
    the image alone (no references) and mixed into training, so that what an earlier stage taught is kept
    (the synthetic configs replay the alignment split's visual questions). Used when ``replay_share`` > 0."""
    replay_share: float = 0.0
    """Share of the fine-tuning examples taken from ``data.replay`` (its first ones). 0: no replay."""
    kb: KBConfig = field(default_factory=KBConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    on_bad_image: str = "error"
    """error: stop at a missing or unreadable image; skip: leave the record out and report it at the end."""
    num_workers: int = 0
    """DataLoader worker processes."""
    max_input_length: int = 256
    """LLM input tokens (references are truncated first)."""
    max_target_length: int = 32
    qformer_max_length: int = 64

    def __post_init__(self) -> None:
        _choice("data.dataset", self.dataset, ("okvqa", "vqav2", "aokvqa", "webqa", "infoseek", "synthetic"))
        _choice("data.on_bad_image", self.on_bad_image, ("error", "skip"))
        _positive("data.num_workers", self.num_workers, allow_zero=True)
        _range("data.replay_share", self.replay_share, 0.0, 0.9)
        if self.replay_share and not self.replay.path:
            raise ConfigValueError("data.replay.path", "is empty; data.replay_share > 0 needs the split to replay")


@dataclass
class RetrievalConfig:
    source: str = "gold"
    """index: live search; static: a retrieval results file; gold: the dataset's relevance labels; none."""
    mode: str = "ra_blip"
    """ra_blip: fused image+question -> multimodal items; image: image -> image items;
    two_stage: RORA-VLM image -> entity names -> expanded question -> text items."""
    k: int = 3
    """References given to the generator per question."""
    index_dir: str = ""
    static_file: str = ""
    """Retrieval results file for source=static."""
    index_type: str = "flat"
    """flat (exact inner product), ivfflat, ivfpq, hnsw."""
    nlist: int = 1024
    pq_m: int = 32
    nbits: int = 8
    hnsw_m: int = 32
    nprobe: int = 16
    rerank_exact: bool = False
    """Re-score k x rerank_factor candidates with full-precision embeddings."""
    rerank_factor: int = 4
    rerank_model: bool = False
    """Re-order the top-k with the model's trained re-ranker."""
    expansion_entities: int = 1
    """two_stage: entity names from the image search added to the question."""
    allow_foreign_index: bool = False
    """Accept an index whose manifest names another encoder or whose checksum differs (not advised)."""
    embeddings_dir: str = ""
    """Knowledge-base embedding shards written by scripts/encode_kb.py; empty: <index_dir>/embeddings."""
    shard_rows: int = 65536
    """Knowledge-base rows per embedding shard: the unit of work per process and of resuming."""
    encode_batch_size: int = 0
    """Items per encoder batch when encoding the knowledge base (0: eval.batch_size)."""
    instruct_queries: bool = True
    """False: query images are extracted without the question as Q-Former instruction (uninstructed ablation)."""

    def __post_init__(self) -> None:
        _choice("retrieval.source", self.source, ("index", "static", "gold", "none"))
        _choice("retrieval.mode", self.mode, ("ra_blip", "image", "two_stage"))
        _choice("retrieval.index_type", self.index_type, ("flat", "ivfflat", "ivfpq", "hnsw"))
        _positive("retrieval.k", self.k, allow_zero=True)
        _positive("retrieval.shard_rows", self.shard_rows)
        _positive("retrieval.encode_batch_size", self.encode_batch_size, allow_zero=True)
        _positive("retrieval.expansion_entities", self.expansion_entities)
        _positive("retrieval.rerank_factor", self.rerank_factor)


@dataclass
class AskgConfig:
    enabled: bool = False
    """Adaptive Selection Knowledge Generation: mix irrelevant references and add the selection sample."""
    noise_ratio: float = 0.5
    """Share of a sample's references that are irrelevant."""
    weight: float = 0.1
    """Loss weight of the relevance-selection sample (RA-BLIP: 0.1)."""
    negatives: str = "random"
    """random: random KB items; hard: retriever ranks below the relevant ones; dataset: its own distractors."""

    def __post_init__(self) -> None:
        _range("askg.noise_ratio", self.noise_ratio, 0.0, 1.0)
        _positive("askg.weight", self.weight, allow_zero=True)
        _choice("askg.negatives", self.negatives, ("random", "hard", "dataset"))


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
    image shows (the synthetic world's visual questions), or the generator learns to trust text over it."""

    def __post_init__(self) -> None:
        _positive("noise.random_snippets", self.random_snippets, allow_zero=True)
        _range("noise.counterfactual", self.counterfactual, 0.0, 1.0)


@dataclass
class TrainConfig:
    lr: float = 1e-4
    """Peak learning rate (after warm-up)."""
    lr_scale: dict[str, float] = field(default_factory=dict)
    """Learning-rate multipliers of the generator's module groups (names as in model.trainable; one
    that does not train is left alone), e.g. {language_model: 0.3} to fine-tune a warmed-up LLM
    gently while the Q-Former learns at the full rate."""
    min_lr_ratio: float = 0.1
    """Cosine schedule ends at lr x min_lr_ratio."""
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 100
    max_steps: int = 1000
    batch_size: int = 8
    """Per-process batch size (global batch = batch_size x processes x grad_accum)."""
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    """Gradient clipping norm; 0 disables clipping."""
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
    itc_weight: float = 1.0
    """Pre-training: image-text contrastive loss weight."""
    itm_weight: float = 1.0
    """Pre-training: image-text matching (hard negatives) loss weight."""
    itg_weight: float = 1.0
    """Pre-training: Q-Former caption generation loss weight."""

    def __post_init__(self) -> None:
        _positive("train.lr", self.lr)
        _positive("train.max_steps", self.max_steps)
        _positive("train.batch_size", self.batch_size)
        _positive("train.grad_accum", self.grad_accum)
        _positive("train.save_every", self.save_every)
        _positive("train.feature_cache_batch_size", self.feature_cache_batch_size)
        _positive("train.warmup_steps", self.warmup_steps, allow_zero=True)
        _range("train.min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        for module, scale in self.lr_scale.items():
            _choice("train.lr_scale", module, GENERATOR_MODULES)
            _positive(f"train.lr_scale.{module}", scale)
        _choice("train.mixed_precision", self.mixed_precision, ("auto", "no", "bf16"))
        _choice("train.best_mode", self.best_mode, ("max", "min"))
        _choice("train.item_pairs", self.item_pairs, ("self", "entity"))
        for name in ("itc_weight", "itm_weight", "itg_weight"):
            _positive(f"train.{name}", getattr(self, name), allow_zero=True)
        if len(self.betas) != 2:
            raise ConfigValueError("train.betas", f"needs two values, got {self.betas}")


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
        _choice("eval.split", self.split, ("train", "val", "test"))
        _positive("eval.num_beams", self.num_beams)
        _range("eval.noisy_fraction", self.noisy_fraction, 0.0, 1.0)
        for k in self.k_sweep:
            _positive("eval.k_sweep", k, allow_zero=True)


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
        _choice("log.wandb_mode", self.wandb_mode, ("offline", "online", "disabled"))


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
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
