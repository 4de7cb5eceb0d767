"""The settings of a synthetic world build (``scripts/make_synthetic.py``): the world, its tokenizers,
the tiny generator (sizes, vision encoder, copy-ready LLM, warm-ups) and the extra pre-training pairs.

Defaults are the synthetic demo's. :func:`load_settings` composes an optional YAML file (the same
nesting: ``world: {entities: 12}``) and ``key=value`` overrides (``world.entities=12``); an unknown key,
a wrong type or a value out of range is a :class:`~rablip.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rablip.errors import ConfigError


def _check(key: str, ok: bool, requirement: str, value: object) -> None:
    if not ok:
        raise ConfigError(f"synthetic setting {key}: {value!r} {requirement}")


@dataclass
class WorldSection:
    """What the world holds (:class:`rablip.synthetic.world.WorldSettings` adds the seed)."""

    entities: int = 96
    """Entities that questions are asked about (seen + unseen)."""
    distractors: int = -1
    """Entities only in the knowledge base; -1: entities // 2."""
    unseen_fraction: float = 0.3
    """Share of val's (and of test's) entities never seen in train; val and test have disjoint ones."""
    image_size: int = 64
    """Side of every rendering in pixels."""
    train_images_per_entity: int = 12
    """Question images per seen entity in train (each carries a knowledge, a visual and a naming question)."""
    eval_images_per_entity: int = 3
    """Question images per entity in val and in test."""
    align_images: int = 4000
    """Renderings of invented creatures in ``align/``, one visual question each; 0: no align/ split."""
    scene_images_per_entity: int = 2
    """Scenes per test entity in ``scene/`` (rablip.synthetic.scenes): the entity beside another creature, a
    knowledge question naming it by a visible attribute; 0: no scene/ split."""
    jpeg_quality: int = 92
    """Quality of the world's JPEG images (saved without chroma subsampling, so the bytes repeat)."""

    def __post_init__(self) -> None:
        _check("world.entities", self.entities >= 1, "must be >= 1", self.entities)
        _check("world.distractors", self.distractors >= -1, "must be >= 0 (or -1: entities // 2)", self.distractors)
        _check("world.unseen_fraction", 0.0 <= self.unseen_fraction < 1.0, "must be in [0, 1)", self.unseen_fraction)
        _check("world.image_size", 16 <= self.image_size <= 1024, "must be in [16, 1024]", self.image_size)
        for name in ("train_images_per_entity", "eval_images_per_entity"):
            _check(f"world.{name}", getattr(self, name) >= 1, "must be >= 1", getattr(self, name))
        _check("world.align_images", self.align_images >= 0, "must be >= 0", self.align_images)
        _check("world.scene_images_per_entity", self.scene_images_per_entity >= 0, "must be >= 0",
               self.scene_images_per_entity)
        _check("world.jpeg_quality", 1 <= self.jpeg_quality <= 100, "must be in [1, 100]", self.jpeg_quality)

    @property
    def num_distractors(self) -> int:
        """Distractor count after applying the default."""
        return self.entities // 2 if self.distractors < 0 else self.distractors


@dataclass
class TinyModelSection:
    """The tiny generator: an InstructBLIP of these sizes with tokenizers trained on the world."""

    image_size: int = 64
    patch_size: int = 8
    vision_hidden_size: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    vision_intermediate_size: int = 128
    vision_backend: str = "timm"
    """hf (InstructBLIP's ViT of the sizes above) or timm (``timm_name``, no weights, its features projected
    to vision_hidden_size)."""
    timm_name: str = "test_resnet"
    qformer_hidden_size: int = 64
    qformer_layers: int = 2
    qformer_heads: int = 4
    qformer_intermediate_size: int = 128
    cross_attention_frequency: int = 1
    """The Q-Former cross-attends to image features every this many layers."""
    num_query_tokens: int = 8
    llm_type: str = "llama"
    """t5 (encoder-decoder), opt or llama (decoder-only)."""
    llm_hidden_size: int = 64
    llm_layers: int = 2
    llm_heads: int = 4
    llm_intermediate_size: int = 128
    llm_tie_embeddings: bool = True
    """llama: the output layer shares the input embedding matrix (T5 and OPT share it already)."""
    llm_copy_init: bool = True
    """Decoder-only LLMs: attention value and output projections start as the identity
    (:func:`rablip.synthetic.build.copy_ready_attention`)."""
    llm_vocab_size: int = 0
    """0: the size of the LLM tokenizer trained on the world (plus the image token)."""
    qformer_vocab_size: int = 0
    """0: the size of the Q-Former tokenizer trained on the world."""
    tokenizer_vocab_size: int = 1500
    """Vocabulary size both tokenizers are trained to (at most)."""

    def __post_init__(self) -> None:
        _check("model.llm_type", self.llm_type in ("t5", "opt", "llama"), "is not one of t5, opt, llama",
               self.llm_type)
        _check("model.llm_copy_init", not (self.llm_copy_init and self.llm_type == "t5"),
               "is for decoder-only LLMs (llm_type llama or opt), not t5; set it to false or choose another llm_type",
               self.llm_copy_init)
        _check("model.vision_backend", self.vision_backend in ("hf", "timm"), "is not one of hf, timm",
               self.vision_backend)
        _check("model.timm_name", self.vision_backend != "timm" or bool(self.timm_name),
               "must name a timm model when model.vision_backend=timm", self.timm_name)
        for name in ("image_size", "patch_size", "vision_hidden_size", "vision_layers", "vision_heads",
                     "qformer_hidden_size", "qformer_layers", "qformer_heads", "num_query_tokens",
                     "llm_hidden_size", "llm_layers", "llm_heads", "tokenizer_vocab_size"):
            _check(f"model.{name}", getattr(self, name) > 0, "must be > 0", getattr(self, name))
        for name in ("llm_vocab_size", "qformer_vocab_size"):
            _check(f"model.{name}", getattr(self, name) >= 0, "must be >= 0 (0: the tokenizer's size)",
                   getattr(self, name))


@dataclass
class WarmupSection:
    """Steps the tiny generator trains before it is saved, standing in for pre-trained weights."""

    vision_steps: int = 2000
    """Its vision encoder learns to name the shape, colour, pattern and size of renderings of invented
    creatures (rablip.synthetic.viewing; no world entity's look). 0: none."""
    reading_steps: int = 1500
    """Its LLM learns, text only, to read facts about invented creatures out of references
    (rablip.synthetic.reading; no world entity). 0: none. 1,000 left seed 1's LLM at loss 0.28 (seed 0: 0.04),
    and every generator that reads weaker; 1,500 ends it at 0.004 (BENCHMARKS.md "RA-BLIP as released in the demo")."""

    scene_share: float = 0.0
    """Share of the vision warm-up's renderings that are scenes of two creatures, each to be named from the
    tokens of its half of the image, so that the tokens say which creature is where. 0: none (measured with
    0.3 and scene pre-training pairs: scene recall@1 15.5, single-creature recall@1 94.6 -> 73.7; BENCHMARKS.md)."""

    def __post_init__(self) -> None:
        _check("warmup.scene_share", 0.0 <= self.scene_share <= 1.0, "must be in [0, 1]", self.scene_share)
        for name in ("vision_steps", "reading_steps"):
            _check(f"warmup.{name}", getattr(self, name) >= 0, "must be >= 0", getattr(self, name))


@dataclass
class ExtraPairsSection:
    count: int = 16128
    """Records of ``extra_pairs/pairs.jsonl``: a rendering of an invented creature, a training question
    and the creature's fact text or caption (rablip.synthetic.describing). 0: no file. The default is what
    the demo's pre-training draws (96 entities: 2,016 extra pairs in each of its 8 epochs), so none repeats."""
    scene_share: float = 0.0
    """Share of the records whose rendering is a scene of two invented creatures, the question naming the
    wanted one by a visible attribute (rablip.synthetic.scenes), for pre-training to learn to follow it.
    0: none (0.3 measured: scene recall@1 5.4, single-creature recall@1 94.6 -> 80.6; BENCHMARKS.md)."""

    def __post_init__(self) -> None:
        _check("extra_pairs.count", self.count >= 0, "must be >= 0", self.count)
        _check("extra_pairs.scene_share", 0.0 <= self.scene_share <= 1.0, "must be in [0, 1]", self.scene_share)


@dataclass
class SyntheticSettings:
    seed: int = 0
    """Seed of every random draw of the build (world, weights, warm-ups, extra pairs)."""
    world: WorldSection = field(default_factory=WorldSection)
    model: TinyModelSection = field(default_factory=TinyModelSection)
    warmup: WarmupSection = field(default_factory=WarmupSection)
    extra_pairs: ExtraPairsSection = field(default_factory=ExtraPairsSection)


def _keys(cls: type = SyntheticSettings, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        keys += _keys(sub, f"{prefix}{f.name}.") if dataclasses.is_dataclass(sub) else [f"{prefix}{f.name}"]
    return keys


def load_settings(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> SyntheticSettings:
    """The defaults, then the YAML file ``path`` (when given), then ``key=value`` overrides."""
    layers = []
    if path is not None:
        try:
            layers.append((str(path), yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}))
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"synthetic settings file {path}: {err}") from None
    for arg in overrides:
        key, sep, value = arg.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"setting {arg!r} is not of the form key=value (e.g. world.entities=12)")
        node: dict = {}
        layer = node
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value) if value.strip() else ""
        layers.append((f"the command line ({arg!r})", layer))
    merged = OmegaConf.structured(SyntheticSettings)
    for source, values in layers:
        try:
            merged = OmegaConf.merge(merged, OmegaConf.create(values))
        except OmegaConfBaseException as exc:
            key = str(getattr(exc, "full_key", None) or "?")
            reason = str(exc).splitlines()[0].split(" Did you mean")[0].rstrip(".")
            hint = difflib.get_close_matches(key, _keys(), n=1) if key not in _keys() else []
            suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
            raise ConfigError(f"bad synthetic setting '{key}' in {source}: {reason}{suggestion}") from None
    return OmegaConf.to_object(merged)


def settings_yaml(settings: SyntheticSettings) -> str:
    """The settings as YAML (what ``make_synthetic.py --print-settings`` prints and the build records)."""
    return OmegaConf.to_yaml(OmegaConf.structured(settings))
