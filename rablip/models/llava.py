"""``RablipLlavaForConditionalGeneration``: LLaVA-1.5 (RORA-VLM's base) with several image slots per example.

It IS transformers' :class:`~transformers.LlavaForConditionalGeneration` (same modules, same parameter
names), so a llava-hf dir (``llava-hf/llava-1.5-7b-hf``: CLIP ViT-L/14-336 tower, 2-layer MLP projector,
Vicuna-7B) loads unchanged through ``from_pretrained``. What rablip adds is the batch contract its
stages speak (:mod:`rablip.models.processing`): ``pixel_values`` (B, S, 3, H, W) with
``image_slot_mask`` (B, S). Every real slot (the question image, then each retrieved image) is encoded
on its own (vision tower layer ``vision_feature_layer``, CLS dropped with the ``default`` strategy,
projector) into ``num_query_tokens`` LLM embeddings, and those go, slot after slot, into the image
tokens of ``input_ids``, where the processor put one block per real slot, each followed by its
snippet text. Empty slots contribute nothing. With one slot and transformers' single-image shapes
((B, 3, H, W)) the model computes exactly what transformers' LLaVA computes.

With RORA-VLM's query-oriented visual token refinement (``config.refine_top_m`` below the tokens per
image; ``model.refine``), each real slot keeps only its ``refine_top_m`` question-relevant tokens, in
their original order (:mod:`rablip.models.llava_refine`), and ``num_query_tokens`` is ``refine_top_m``.
The question then comes as ``question_ids`` / ``question_mask`` (B, Lt), the LLM token ids of each
example's question, which the processor adds for such a model.

A call without ``pixel_values`` is transformers' own forward (the LLM over ``input_ids`` /
``inputs_embeds``), which is what ``generate``'s decoding steps make. The loss and outputs are those
of :class:`rablip.models.rablip.RABlipOutput`, so training and evaluation code serve both families.
Q-Former inputs (``qformer_input_ids``) are accepted and ignored: LLaVA has no Q-Former.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import LlavaForConditionalGeneration
from transformers.conversion_mapping import (
    get_checkpoint_conversion_mapping,
    register_checkpoint_conversion_mapping,
)

from rablip.models.freezing import apply_trainable_modules
from rablip.models.llava_config import RablipLlavaConfig
from rablip.models.llava_refine import question_embedding, refinement_indices
from rablip.models.loss import combine_losses, labelled_token_losses, per_sample_token_losses
from rablip.models.rablip import RABlipOutput
from rablip.models.slots import check_image_tokens, normalize_slot_inputs

# llava-hf checkpoints keep the pre-v5 weight names (``language_model.model.*``); transformers renames
# them by model_type, so rablip's model_type gets LLaVA's renaming (on load, and reversed on save).
register_checkpoint_conversion_mapping(
    RablipLlavaConfig.model_type, get_checkpoint_conversion_mapping("llava"), overwrite=True
)


def _refuse_image_embeds(image_embeds: torch.Tensor | None, image_embeds_mask: torch.Tensor | None) -> None:
    if image_embeds is not None or image_embeds_mask is not None:
        raise ValueError("the LLaVA generator does not take precomputed image_embeds (train.feature_cache)")


class RablipLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """LLaVA-1.5 generator speaking rablip's multi-slot batch contract (module docstring)."""

    config_class = RablipLlavaConfig
    config: RablipLlavaConfig

    def __init__(self, config: RablipLlavaConfig):
        super().__init__(config)
        apply_trainable_modules(self)

    # rablip's module-group names for LLaVA's parts (read-only views; the modules live in ``self.model``).
    @property
    def vision_model(self) -> nn.Module:
        """The CLIP vision tower (module group ``vision_model``)."""
        return self.model.vision_tower

    @property
    def language_projection(self) -> nn.Module:
        """The 2-layer MLP projector (module group ``language_projection``)."""
        return self.model.multi_modal_projector

    @property
    def language_model(self) -> nn.Module:
        """The LLM body (module group ``language_model``, with ``lm_head``)."""
        return self.model.language_model

    @property
    def llm_slot(self) -> tuple[nn.Module, str]:
        """(parent module, attribute) holding the LLM body, where LoRA wraps it (:mod:`rablip.models.lora`)."""
        return self.model, "language_model"

    @property
    def is_decoder_only(self) -> bool:
        """Always True: LLaVA's LLM is a causal decoder."""
        return True

    def train(self, mode: bool = True) -> RablipLlavaForConditionalGeneration:
        """Train mode, except a frozen vision tower stays in eval mode (as for the InstructBLIP family)."""
        super().train(mode)
        if "vision_model" not in self.config.trainable_modules:
            self.vision_model.eval()
        return self

    def vision_features(self, images: torch.Tensor) -> torch.Tensor:
        """Vision features (N, patch_tokens, Dv) of N images (N, 3, H, W), before the projector: the
        hidden states of ``vision_feature_layer`` (a list of layers: concatenated), CLS dropped with the
        ``default`` strategy. No gradient through a frozen vision tower."""
        config = self.config
        trains = any(parameter.requires_grad for parameter in self.vision_model.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trains):
            dtype = next(self.vision_model.parameters()).dtype
            outputs = self.vision_model(images.to(dtype), output_hidden_states=True, return_dict=True)
            layers = config.vision_feature_layer
            chosen = [outputs.hidden_states[layer] for layer in (layers if isinstance(layers, list) else [layers])]
            if config.vision_feature_select_strategy == "default":
                chosen = [hidden[:, 1:] for hidden in chosen]
            return torch.cat(chosen, dim=-1)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Vision features (..., Dv) through the projector into the LLM's input embedding space (..., Dl)."""
        projector_dtype = next(self.language_projection.parameters()).dtype
        return self.language_projection(features.to(projector_dtype))

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Projected patch features (N, patch_tokens, Dl) of N images (N, 3, H, W), every token kept."""
        return self.project(self.vision_features(images))

    def slot_tokens(self, images: torch.Tensor, batch_index: torch.Tensor, slot_index: torch.Tensor,
                    question_ids: torch.Tensor | None, question_mask: torch.Tensor | None) -> torch.Tensor:
        """The LLM image tokens (N, num_query_tokens, Dl) of N real slots (``images`` (N, 3, H, W) of
        examples ``batch_index``, slots ``slot_index``): every projected token, or with refinement the
        ``refine_top_m`` kept by :func:`rablip.models.llava_refine.refinement_indices` in ``refine_space``,
        in their original order. The selection takes no gradient, the kept tokens do. ValueError when
        refinement needs ``question_ids`` and none came."""
        config = self.config
        vision = self.vision_features(images)
        projected = self.project(vision)
        if config.num_query_tokens == config.patch_tokens:
            return projected
        if question_ids is None:
            raise ValueError("model.refine is on: the batch needs question_ids / question_mask, the LLM token ids of "
                             "each question (the collator of a refining LLaVA generator adds them)")
        device = projected.device
        question_mask = torch.ones_like(question_ids) if question_mask is None else question_mask
        with torch.no_grad():
            question = question_embedding(self.get_input_embeddings(), question_ids.to(device), question_mask.to(device))
            compared = projected if config.refine_space == "projected" else vision
            keep = refinement_indices(projected, compared, question, batch_index.to(device), slot_index.to(device),
                                      config.num_query_tokens)
        return torch.gather(projected, 1, keep.unsqueeze(-1).expand(-1, -1, projected.shape[-1]))

    def embed_inputs(self, pixel_values: torch.Tensor, image_slot_mask: torch.Tensor | None,
                     input_ids: torch.Tensor, question_ids: torch.Tensor | None = None,
                     question_mask: torch.Tensor | None = None) -> torch.Tensor:
        """LLM input embeddings (B, L, Dl) with each real slot's image tokens (:meth:`slot_tokens`; the
        question's ids serve refinement) at its image tokens, slots in (example, slot) order; ValueError
        when an example's image tokens are not ``num_query_tokens`` per real slot."""
        slots = normalize_slot_inputs(pixel_values, None, None, image_slot_mask, self.config.max_image_slots)
        batch_index, slot_index = slots.image_slot_mask.nonzero(as_tuple=True)
        inputs_embeds = self.get_input_embeddings()(input_ids)
        per_image = self.config.num_query_tokens
        image_positions = check_image_tokens(input_ids, self.config.image_token_index,
                                             slots.image_slot_mask.sum(dim=1) * per_image, f"{per_image} per real slot")
        if batch_index.numel() == 0:
            return inputs_embeds
        features = self.slot_tokens(slots.pixel_values[batch_index, slot_index], batch_index, slot_index,
                                    question_ids, question_mask)
        features = features.to(inputs_embeds.device, inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(image_positions.unsqueeze(-1), features)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_slot_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        sample_weight: torch.Tensor | None = None,
        sample_kind: torch.Tensor | None = None,
        qformer_input_ids: torch.Tensor | None = None,
        qformer_attention_mask: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        image_embeds_mask: torch.Tensor | None = None,
        question_ids: torch.Tensor | None = None,
        question_mask: torch.Tensor | None = None,
        return_logits: bool = True,
        **hf_kwargs: Any,
    ):
        """Loss and logits for a batch in the model batch contract (or LLaVA's single-image shapes).

        Without ``pixel_values``: transformers' LLaVA forward (``hf_kwargs``: ``inputs_embeds``,
        ``cache``, ``position_ids``, ...), as ``generate`` calls it. With labels,
        ``return_logits=False`` applies ``lm_head`` to the label positions only (``logits`` None,
        ``target_match`` set). ``question_ids`` / ``question_mask``: the question's LLM token ids, read by
        refinement only. ``image_embeds`` (precomputed features) are not supported by this family.
        """
        del qformer_input_ids, qformer_attention_mask  # no Q-Former
        _refuse_image_embeds(image_embeds, image_embeds_mask)
        if pixel_values is None:
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **hf_kwargs)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        inputs_embeds = self.embed_inputs(pixel_values, image_slot_mask, input_ids, question_ids, question_mask)
        outputs = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, return_dict=True)
        hidden = outputs.last_hidden_state
        if labels is not None and not return_logits:
            loss_sums, counts, match = labelled_token_losses(hidden, self.lm_head, labels)
            parts = combine_losses(loss_sums, counts, sample_weight, sample_kind)
            return RABlipOutput(loss=parts.loss, qa_loss=parts.qa_loss, askg_loss=parts.askg_loss,
                                per_sample_loss=parts.per_sample_loss, target_match=match,
                                language_model_outputs=outputs)
        logits = self.lm_head(hidden)
        if labels is None:
            return RABlipOutput(logits=logits, language_model_outputs=outputs)
        loss_sums, counts = per_sample_token_losses(logits, labels, shift=True)
        parts = combine_losses(loss_sums, counts, sample_weight, sample_kind)
        return RABlipOutput(loss=parts.loss, logits=logits, qa_loss=parts.qa_loss, askg_loss=parts.askg_loss,
                            per_sample_loss=parts.per_sample_loss, language_model_outputs=outputs)

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_slot_mask: torch.Tensor | None = None,
        qformer_input_ids: torch.Tensor | None = None,
        qformer_attention_mask: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        image_embeds_mask: torch.Tensor | None = None,
        question_ids: torch.Tensor | None = None,
        question_mask: torch.Tensor | None = None,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """Generated answer token ids (B, T), the prompt cut off: transformers' ``generate`` over the
        multimodal input embeddings (``generate_kwargs``: num_beams, max_new_tokens, ...)."""
        del qformer_input_ids, qformer_attention_mask
        _refuse_image_embeds(image_embeds, image_embeds_mask)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if pixel_values is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        else:
            inputs_embeds = self.embed_inputs(pixel_values, image_slot_mask, input_ids, question_ids, question_mask)
        generated = super().generate(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                     **generate_kwargs)
        prompt_length = input_ids.shape[1]
        if generated.shape[1] >= prompt_length and torch.equal(generated[:, :prompt_length], input_ids):
            generated = generated[:, prompt_length:]
        return generated

    @classmethod
    def from_pretrained(cls, path: str, **kwargs: Any) -> RablipLlavaForConditionalGeneration:
        """Load a transformers LLaVA dir or a rablip LLaVA checkpoint dir (full or trainable-only), strictly.

        See :func:`rablip.models.llava_loading.load_llava_pretrained` for the keyword arguments.
        """
        from rablip.models.llava_loading import load_llava_pretrained

        return load_llava_pretrained(cls, path, **kwargs)

    @classmethod
    def _transformers_from_pretrained(cls, path: str, **kwargs: Any):
        """transformers' own ``from_pretrained`` (weight files, shards, dtype, device_map)."""
        return super().from_pretrained(path, **kwargs)

    def save_pretrained(self, save_directory: str, trainable_only: bool = False, **kwargs: Any) -> None:
        """Write safetensors + JSON: the full model, or only the trainable modules (plus LoRA adapter
        weights, when the LLM carries LoRA) and a base reference. See :func:`rablip.models.loading.save_checkpoint`."""
        from rablip.models.loading import save_checkpoint

        save_checkpoint(self, save_directory, trainable_only=trainable_only, **kwargs)

    def _transformers_save_pretrained(self, save_directory: str, **kwargs: Any) -> None:
        """transformers' own ``save_pretrained`` (config.json + model.safetensors, sharded when large)."""
        super().save_pretrained(save_directory, **kwargs)
