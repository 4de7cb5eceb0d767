"""Warm-ups of the synthetic world's tiny LLaVA, the ones the tiny InstructBLIP generator gets.

A real LLaVA starts from a pre-trained CLIP tower and a pre-trained LLM; the tiny one is built from
scratch. Fine-tuned from transformers' random initialisation with its CLIP tower frozen, its projector
sees features that tell no shapes or colours apart and its LLM cannot read: the demo's RORA run trained
400 steps with the loss flat at ~6.7 and answered nothing. So, before it is saved, it gets the same two
warm-ups as :func:`rablip.synthetic.tiny_model.prepare_tiny_generator`
(:func:`rablip.synthetic.generator_warmups.warm_up_generator`), on the parts of it they train:

* viewing (:func:`~rablip.synthetic.vision_warmup.warm_up_vision_model` on
  :func:`~rablip.synthetic.viewing.viewing_batches`): the CLIP tower, read where LLaVA's projector reads
  it (hidden states of ``vision_feature_layer``, CLS dropped), learns to name the look of renderings of
  invented creatures (no world entity's look);
* reading (:func:`~rablip.synthetic.llm_warmup.warm_up_language_model` on
  :func:`~rablip.synthetic.reading.reading_examples`): the LLaMA, text only, learns to read facts of
  invented creatures (no world entity's name) out of reference lines.

Nothing about the world's entities is learnt, so its unseen entities stay unseen.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from transformers import LlavaForConditionalGeneration, PreTrainedTokenizerBase

from rablip.synthetic.generator_warmups import warm_up_generator


class ProjectorInput(torch.nn.Module):
    """A LLaVA's CLIP tower as its projector sees it: ``forward(pixel_values)`` returns an object whose
    ``last_hidden_state`` is the hidden state of layer ``vision_feature_layer`` (CLS dropped with the
    ``default`` strategy), the interface the viewing warm-up reads."""

    def __init__(self, llava: LlavaForConditionalGeneration):
        super().__init__()
        self.tower = llava.model.vision_tower
        layer = llava.config.vision_feature_layer
        if isinstance(layer, list):
            raise ValueError(f"the viewing warm-up reads one vision feature layer, not {layer}")
        self.layer = layer
        self.drop_cls = llava.config.vision_feature_select_strategy == "default"

    def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        hidden = self.tower(pixel_values=pixel_values, output_hidden_states=True).hidden_states[self.layer]
        return SimpleNamespace(last_hidden_state=hidden[:, 1:] if self.drop_cls else hidden)


class CausalLM(torch.nn.Module):
    """A LLaVA's LLM body and output layer as the decoder-only causal LM the reading warm-up trains."""

    def __init__(self, llava: LlavaForConditionalGeneration):
        super().__init__()
        self.body = llava.model.language_model
        self.head = llava.lm_head
        self.config = llava.config.text_config

    def get_decoder(self) -> torch.nn.Module:
        return self.body

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.head


def warm_up_llava(model: LlavaForConditionalGeneration, tokenizer: PreTrainedTokenizerBase, image_processor,
                  entities: list[dict], *, vision_steps: int, reading_steps: int, seed: int, scene_share: float = 0.0,
                  show_progress: bool = True) -> dict[str, list[float]]:
    """Run the viewing (``vision_steps``; ``scene_share`` of its renderings are two-creature scenes, as the tiny
    InstructBLIP generator's) and reading (``reading_steps``) warm-ups on ``model`` in place; ``entities`` are
    the world manifest's (their looks and names are avoided). Returns each one's losses."""
    vision = model.config.vision_config
    return warm_up_generator(ProjectorInput(model), vision.hidden_size, vision.image_size, image_processor,
                             CausalLM(model), tokenizer, entities, vision_steps=vision_steps,
                             reading_steps=reading_steps, seed=seed, scene_share=scene_share,
                             show_progress=show_progress)
