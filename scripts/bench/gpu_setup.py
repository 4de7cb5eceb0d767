"""The models, batches and analytic FLOP counts of ``scripts/bench/gpu.py``.

- :func:`load_models`: rablip's generator and transformers' ``InstructBlipForConditionalGeneration`` on one
  checkpoint (written by :func:`rablip.synthetic.published.write_published_checkpoint`), in bf16 with the
  trained modules (RA-BLIP's: Q-Former, query tokens, projection, and rablip's slot tables) in float32;
- :func:`make_samples`: questions with k image+text references, images decoded in memory, turned into batches
  by rablip's real collator (:func:`rablip.models.processing.build_collator`, the configs' lengths and prompt);
- :func:`step_flops`: model FLOPs of one fine-tuning step of a batch, counted from parameter shapes and the
  batch's real tokens (the formula is in the function's docstring).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import InstructBlipForConditionalGeneration

from rablip.config.schema import Config
from rablip.data.records import KBItem, QAExample
from rablip.data.samples import Sample, make_qa_sample
from rablip.models import RABlipForConditionalGeneration
from rablip.models.freezing import keep_trainable_float32

TRAINABLE = ["qformer", "query_tokens", "language_projection", "slot_embeddings"]
"""RA-BLIP's fine-tuning (``configs/model/instructblip_flant5xl.yaml``): vision tower and LLM frozen."""
TRANSFORMERS_TRAINED = ("qformer.", "query_tokens", "language_projection.")
"""The same modules under transformers' names (it has no slot tables)."""
TRANSFORMERS_KEYS = ("pixel_values", "qformer_input_ids", "qformer_attention_mask", "input_ids", "attention_mask",
                     "labels")
SYLLABLES = ("ka", "lo", "mi", "ren", "sa", "tor", "vel", "qu", "dan", "pe", "ri", "zo", "ba", "nu", "shi", "gar")


def load_models(checkpoint: Path, multi_image: str, device: torch.device
                ) -> tuple[RABlipForConditionalGeneration, InstructBlipForConditionalGeneration]:
    """rablip's and transformers' models of ``checkpoint`` on ``device``, bf16 weights, trained modules float32."""
    ours = RABlipForConditionalGeneration.from_pretrained(str(checkpoint), dtype=torch.bfloat16,
                                                          trainable_modules=TRAINABLE, multi_image=multi_image)
    keep_trainable_float32(ours)
    theirs = InstructBlipForConditionalGeneration.from_pretrained(str(checkpoint), dtype=torch.bfloat16)
    for name, parameter in theirs.named_parameters():
        parameter.requires_grad_(name.startswith(TRANSFORMERS_TRAINED))
    keep_trainable_float32(theirs)
    return ours.to(device), theirs.to(device)


def training_mode(model: torch.nn.Module) -> torch.nn.Module:
    """Train mode with the frozen vision tower in eval mode (as rablip keeps it)."""
    model.train()
    model.vision_model.eval()
    return model


def _words(rng: np.random.Generator, count: int) -> str:
    return " ".join("".join(rng.choice(SYLLABLES, size=int(rng.integers(2, 4)))) for _ in range(count))


def _jpeg(rng: np.random.Generator, side: int) -> bytes:
    """A random-noise RGB image of ``side`` x ``side`` pixels, JPEG-encoded (as KB images are stored)."""
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def load_bytes(ref: object, record_id: str | None = None) -> Image.Image:
    """The ``LoadImage`` of in-memory images: decode JPEG bytes to RGB (``record_id`` unused)."""
    if not isinstance(ref, bytes):
        raise TypeError(f"expected image bytes for {record_id!r}, got {type(ref).__name__}")
    return Image.open(io.BytesIO(ref)).convert("RGB")


def make_kb_items(count: int, side: int, text_words: int, seed: int) -> list[KBItem]:
    """``count`` image+text knowledge items with distinct random JPEG images and ``text_words``-word passages."""
    rng = np.random.default_rng(seed)
    return [KBItem(id=f"item-{i}", modality="image+text", image=_jpeg(rng, side), title=_words(rng, 2),
                   text=_words(rng, text_words)) for i in range(count)]


def make_samples(count: int, k: int, side: int, seed: int) -> list[Sample]:
    """``count`` QA samples (question image, a 10-word question, a 2-word answer) with ``k`` image+text
    references of 60-word passages each (an OK-VQA question with k retrieved passages)."""
    rng = np.random.default_rng(seed)
    items = make_kb_items(count * k, side, 60, seed + 1)
    samples = []
    for i in range(count):
        example = QAExample(id=f"q{i}", image=_jpeg(rng, side), question=f"what is the {_words(rng, 7)} ?",
                            answers=[_words(rng, 2)])
        samples.append(make_qa_sample(example, items[i * k:(i + 1) * k], load_bytes))
    return samples


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Every tensor of ``batch`` on ``device``."""
    return {key: value.to(device) for key, value in batch.items()}


def single_slot(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A one-slot (k = 0) rablip batch in transformers InstructBLIP's shapes (``labels`` kept when present)."""
    out = {key: batch[key] for key in TRANSFORMERS_KEYS if key in batch}
    for key in ("pixel_values", "qformer_input_ids", "qformer_attention_mask"):
        out[key] = out[key][:, 0]
    return out


def generate_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors rablip's ``generate`` takes from a generate-mode batch."""
    keys = ("pixel_values", "qformer_input_ids", "qformer_attention_mask", "input_ids", "attention_mask",
            "image_slot_mask")
    return {key: batch[key] for key in keys if key in batch}


def train_cfg_grad_norm(cfg: Config) -> float:
    """The clipping norm of ``train.max_grad_norm`` (infinite when unset or 0: clipping still measures the norm)."""
    return float(cfg.train.max_grad_norm) if cfg.train.max_grad_norm else float("inf")


@dataclass(frozen=True)
class ParameterGroups:
    """Parameter counts of the parts whose FLOPs :func:`step_flops` counts (lookup tables excluded)."""

    vision: int
    """Vision tower without its position and class embeddings."""
    qformer_self: int
    """Q-Former self-attention (queries and instruction tokens)."""
    qformer_query_only: int
    """Q-Former cross-attention query/output projections and the query feed-forward (query tokens only)."""
    qformer_cross_kv: int
    """Q-Former cross-attention key/value projections (applied to the image tokens)."""
    qformer_text_ffn: int
    """Q-Former text feed-forward (instruction tokens only)."""
    projection: int
    """Q-Former outputs -> LLM input width."""
    llm_encoder: int
    """T5 encoder without the embedding table and relative position biases."""
    llm_decoder_cross_kv: int
    """T5 decoder cross-attention key/value projections (applied to the encoder's tokens)."""
    llm_decoder: int
    """The rest of the T5 decoder plus its output layer (vocabulary x width, tied or not)."""


_LAYER = re.compile(r"^qformer\.encoder\.layer\.\d+\.")


def _qformer_group(name: str) -> str | None:
    rest = _LAYER.sub("", name)
    if rest == name:
        return None  # embeddings: word/position lookups and their layer norm
    if rest.startswith("crossattention.attention.key.") or rest.startswith("crossattention.attention.value."):
        return "qformer_cross_kv"
    if rest.startswith(("crossattention.", "intermediate_query.", "output_query.")):
        return "qformer_query_only"
    if rest.startswith("attention."):
        return "qformer_self"
    if rest.startswith(("intermediate.", "output.")):
        return "qformer_text_ffn"
    raise ValueError(f"Q-Former parameter {name} belongs to no FLOP group")


def parameter_groups(model: InstructBlipForConditionalGeneration | RABlipForConditionalGeneration) -> ParameterGroups:
    """The :class:`ParameterGroups` of an InstructBLIP model with a T5 LLM (either class: same names)."""
    counts = dict.fromkeys(ParameterGroups.__dataclass_fields__, 0)
    for name, parameter in model.named_parameters():
        size = parameter.numel()
        if name.startswith("vision_model."):
            if ".position_embedding" not in name and ".class_embedding" not in name:
                counts["vision"] += size
        elif name.startswith("qformer."):
            group = _qformer_group(name)
            if group is not None:
                counts[group] += size
        elif name.startswith("language_projection."):
            counts["projection"] += size
        elif "relative_attention_bias" in name or name.startswith(("language_model.shared.", "language_model.lm_head.")):
            continue  # lookups; the output layer is counted from its shape below
        elif name.startswith("language_model.encoder."):
            counts["llm_encoder"] += size
        elif name.startswith("language_model.decoder."):
            cross_kv = ".EncDecAttention.k." in name or ".EncDecAttention.v." in name
            counts["llm_decoder_cross_kv" if cross_kv else "llm_decoder"] += size
    text = model.config.text_config
    counts["llm_decoder"] += text.vocab_size * text.d_model
    return ParameterGroups(**counts)


def patches_per_image(model: torch.nn.Module) -> int:
    """Tokens the vision tower produces per image: (side / patch)^2 patches + CLS (257 at 224 px, patch 14)."""
    vision = model.config.vision_config
    return (vision.image_size // vision.patch_size) ** 2 + 1


def step_flops(groups: ParameterGroups, batch: dict[str, torch.Tensor], patches: int, queries: int,
               concat: bool) -> dict[str, float]:
    """Model FLOPs of one fine-tuning step on ``batch`` (a rablip training batch; a k = 0 batch gives
    transformers' step too), as the sum of matrix products, 2 FLOPs per multiply-add:

    - frozen vision tower, forward only: ``2 * N_vision * 257`` per real image slot (``patches`` tokens);
    - trained Q-Former, forward + backward to weights and inputs, ``6 * N * tokens``, each part over the
      tokens it sees: self-attention over the Q queries + the pass's instruction tokens, cross-attention
      query/output and the query feed-forward over the Q queries, the text feed-forward over the
      instruction tokens; the cross-attention key/value projections over the pass's image tokens at
      ``4 * N * tokens`` (no gradient to the frozen image features). One pass per example (concat) or
      per real slot (per_slot);
    - trained projection: ``6 * N_proj * Q`` per pass;
    - frozen T5, forward + backward through activations only (its weights get no gradient, the
      Q-Former's do): ``4 * N * tokens``: encoder over the encoder's real tokens (image tokens +
      prompt), decoder cross-attention key/value over the encoder's tokens, the rest of the decoder and
      the output layer over the answer's tokens.

    Attention score products (``QK^T``, ``AV``), layer norms, softmax and lookups are not counted (a few
    per cent at these lengths), so MFU is a slight underestimate. Tokens are real (unpadded) ones, from the
    batch's masks. Returns each part's FLOPs and their ``total``."""
    slot_mask = batch["image_slot_mask"].bool()
    images = int(slot_mask.sum())
    qmask = batch["qformer_attention_mask"]
    if concat:
        with_image = slot_mask.any(dim=1)
        passes = int(with_image.sum())
        instruction = int(qmask[:, 0][with_image].sum())
    else:
        passes = images
        instruction = int(qmask[slot_mask].sum())
    encoder_tokens = int(batch["attention_mask"].sum())
    answer_tokens = int((batch["labels"] != -100).sum())
    parts = {
        "vision": 2.0 * groups.vision * patches * images,
        "qformer": 6.0 * (groups.qformer_self * (queries * passes + instruction)
                          + groups.qformer_query_only * queries * passes
                          + groups.qformer_text_ffn * instruction)
                   + 4.0 * groups.qformer_cross_kv * patches * images,
        "projection": 6.0 * groups.projection * queries * passes,
        "llm": 4.0 * ((groups.llm_encoder + groups.llm_decoder_cross_kv) * encoder_tokens
                      + groups.llm_decoder * answer_tokens),
    }
    parts["total"] = sum(parts.values())
    return parts


def token_counts(batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean real tokens per example of a training batch: LLM encoder input, answer, Q-Former instruction."""
    rows = batch["input_ids"].shape[0]
    slot_mask = batch["image_slot_mask"].bool()
    return {"llm_input": float(batch["attention_mask"].sum()) / rows,
            "answer": float((batch["labels"] != -100).sum()) / rows,
            "qformer_instruction": float(batch["qformer_attention_mask"][:, 0].sum()) / rows,
            "images": float(slot_mask.sum()) / rows}
