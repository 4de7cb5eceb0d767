"""The two warm-ups each tiny generator of the synthetic world gets before it is saved, standing in for
pre-trained weights: viewing for its vision encoder (:mod:`rablip.synthetic.vision_warmup` on renderings of
invented creatures, :mod:`rablip.synthetic.viewing`) and reading for its LLM (:mod:`rablip.synthetic.llm_warmup`
on texts about invented creatures, :mod:`rablip.synthetic.reading`). The tiny InstructBLIP
(:mod:`rablip.synthetic.tiny_model`) and the tiny LLaVA (:mod:`rablip.synthetic.llava_warmup`) hand in their
own vision and language parts; nothing about the world's entities is learnt (their looks and names are avoided).
"""

from __future__ import annotations

import torch

from rablip.synthetic.llm_warmup import warm_up_language_model
from rablip.synthetic.reading import reading_examples
from rablip.synthetic.viewing import class_counts, viewing_batches
from rablip.synthetic.vision_warmup import warm_up_vision_model
from rablip.utils.logging import get_logger

log = get_logger("rablip.synthetic")
VISION_WARMUP_BATCH = 32


def warm_up_generator(vision_model: torch.nn.Module, vision_width: int, image_size: int, image_processor,
                      language_model: torch.nn.Module, tokenizer, entities: list[dict], *, vision_steps: int,
                      reading_steps: int, seed: int, scene_share: float = 0.0,
                      show_progress: bool = True) -> dict[str, list[float]]:
    """Run the viewing warm-up on ``vision_model`` (tokens ``vision_width`` wide, ``image_size`` px renderings;
    ``scene_share`` of them two-creature scenes) for ``vision_steps`` steps, then the reading warm-up on
    ``language_model`` for ``reading_steps``, both in place; ``entities`` are the world manifest's. Returns each
    warm-up's losses by name (none for 0 steps)."""
    losses: dict[str, list[float]] = {}
    looks = [entity["attributes"] for entity in entities]
    if vision_steps:
        scenes = scene_share > 0
        batches = viewing_batches(seed, VISION_WARMUP_BATCH, image_size, looks, scene_share=scene_share)
        losses["vision viewing warm-up"] = warm_up_vision_model(
            vision_model, image_processor, vision_width, class_counts(scenes), batches, vision_steps, seed=seed,
            show_progress=show_progress, scenes=scenes)
    if reading_steps:
        examples = reading_examples(seed, [entity["name"] for entity in entities], looks)
        losses["LLM reading warm-up"] = warm_up_language_model(language_model, tokenizer, examples, reading_steps,
                                                               seed=seed, show_progress=show_progress)
    return losses


def log_warm_ups(losses: dict[str, list[float]], prefix: str = "") -> None:
    """Steps, first loss and the mean of the last 20 of each finished warm-up."""
    for name, values in losses.items():
        log.info("%s%s: %d steps, loss %.3f -> %.3f", prefix, name, len(values), values[0],
                 sum(values[-20:]) / len(values[-20:]))
