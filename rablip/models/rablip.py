"""``RABlipForConditionalGeneration``: InstructBLIP with several image slots per example.

The parts keep transformers' attribute names (``vision_model``, ``query_tokens``, ``qformer``,
``language_projection``, ``language_model``), so transformers InstructBLIP / BLIP-2 checkpoints
load unchanged. RA-BLIP adds a per-slot type embedding (added to a slot's patch features before
the Q-Former cross-attention) and a position embedding over the concatenated real slots' query
outputs; both start at zero, so a model loaded from InstructBLIP computes exactly what InstructBLIP
computes. Only real image slots (``image_slot_mask``) are encoded and scattered, in slot order,
into the LLM's image-token positions; empty and text-only slots contribute nothing. A real slot
whose patch features were precomputed (``image_embeds`` where ``image_embeds_mask`` is True, from
the frozen-feature cache) skips the vision tower; everything after it is the same computation.
That is ``multi_image="per_slot"``; ``"concat"`` (RA-BLIP's release) concatenates an example's real
slots' patch features into ONE Q-Former pass with its own tables (:mod:`rablip.models.multi_image`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, InstructBlipPreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from rablip.models.config import RABlipConfig
from rablip.models.freezing import apply_trainable_modules
from rablip.models.loss import combine_losses, labelled_token_losses, per_sample_token_losses
from rablip.models.multi_image import concat_example_features, patch_position_table
from rablip.models.qformer import build_qformer, run_qformer
from rablip.models.refine_hook import apply_refinement
from rablip.models.slots import SlotBatch, check_image_tokens, normalize_slot_inputs
from rablip.models.vision import build_vision_model


@dataclass
class RABlipOutput(ModelOutput):
    """Output of :meth:`RABlipForConditionalGeneration.forward`.

    loss: the training loss (weighted by ``sample_weight`` when given), when labels are given.
    logits: LLM logits (B, L, V) for decoder-only, (B, T, V) for encoder-decoder.
        None when a decoder-only model was called with ``return_logits=False`` and labels.
    qa_loss / askg_loss: unweighted mean loss of QA / ASKG samples (detached, for logging),
        when ``sample_kind`` is given and the batch has such samples.
    per_sample_loss: token-mean cross-entropy per sample (B,), detached.
    target_match: (B,) whether every target token is its logits' argmax (teacher forcing), with
        ``return_logits=False`` on a decoder-only model.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    qa_loss: torch.Tensor | None = None
    askg_loss: torch.Tensor | None = None
    per_sample_loss: torch.Tensor | None = None
    target_match: torch.Tensor | None = None
    language_model_outputs: Any = None


@dataclass
class SlotFeatures:
    """Q-Former outputs of the real image slots of a batch, in row-major (example, slot) order."""

    query_output: torch.Tensor  # (N, Q, Dq), position embeddings added
    language_inputs: torch.Tensor  # (N, Q, Dl), projected into the LLM's embedding space
    batch_index: torch.Tensor  # (N,) example of each real slot
    slot_index: torch.Tensor  # (N,) slot of each real slot


class RABlipForConditionalGeneration(InstructBlipPreTrainedModel):
    """RA-BLIP's generator: multi-image InstructBLIP (or BLIP-2) over an encoder-decoder or causal LLM."""

    config_class = RABlipConfig
    config: RABlipConfig
    base_model_prefix = "rablip"
    main_input_name = "pixel_values"
    _keep_in_fp32_modules = ["query_tokens"]

    def __init__(self, config: RABlipConfig):
        super().__init__(config)
        qformer_width = config.qformer_config.hidden_size
        self.vision_model = build_vision_model(config)
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, qformer_width))
        self.qformer = build_qformer(config)
        self.language_projection = nn.Linear(qformer_width, config.text_config.hidden_size)
        if config.use_decoder_only_language_model:
            self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        else:
            self.language_model = AutoModelForSeq2SeqLM.from_config(config.text_config)
        if config.use_slot_type_embeds:
            self.slot_type_embeds = nn.Parameter(
                torch.zeros(config.max_image_slots, config.vision_config.hidden_size)
            )
        else:
            self.register_parameter("slot_type_embeds", None)
        concat = config.multi_image == "concat"
        if concat and config.use_slot_position_embeds:
            self.patch_position_embeds = patch_position_table(config, self.vision_model)
        else:
            self.register_parameter("patch_position_embeds", None)
        if config.use_slot_position_embeds and not concat:
            self.slot_position_embeds = nn.Parameter(
                torch.zeros(config.max_image_slots * config.num_query_tokens, qformer_width)
            )
        else:
            self.register_parameter("slot_position_embeds", None)
        self.post_init()
        apply_trainable_modules(self)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """transformers' InstructBLIP init, plus zeros for the query tokens and slot tables."""
        super()._init_weights(module)
        if isinstance(module, RABlipForConditionalGeneration):
            init.zeros_(module.query_tokens)
            for table in (module.slot_type_embeds, module.slot_position_embeds, module.patch_position_embeds):
                if table is not None:
                    init.zeros_(table)

    def train(self, mode: bool = True) -> RABlipForConditionalGeneration:
        """Train mode, except a frozen vision tower stays in eval mode (as LAVIS does; a frozen LLM
        keeps its dropout in training, as in LAVIS and RA-BLIP)."""
        super().train(mode)
        if "vision_model" not in self.config.trainable_modules:
            self.vision_model.eval()
        return self

    def get_input_embeddings(self) -> nn.Module:
        """The LLM's token embedding table."""
        return self.language_model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        """The LLM's output head."""
        return self.language_model.get_output_embeddings()

    @property
    def is_decoder_only(self) -> bool:
        """True for causal LLMs (OPT, LLaMA), False for encoder-decoders (T5)."""
        return bool(self.config.use_decoder_only_language_model)

    def encode_images(self, images: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """Patch features (N, P, Dv) of N images (N, 3, H, W); no gradient when the tower is frozen."""
        trains = any(param.requires_grad for param in self.vision_model.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trains):
            outputs = self.vision_model(pixel_values=images, interpolate_pos_encoding=interpolate_pos_encoding)
        return outputs.last_hidden_state

    def real_slot_patches(
        self,
        slots: SlotBatch,
        batch_index: torch.Tensor,
        slot_index: torch.Tensor,
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        """Patch features (N, P, Dv) of the listed real slots, in the Q-Former's dtype: the given
        ``image_embeds`` where ``image_embeds_mask`` is True, the vision tower's output elsewhere."""
        dtype = self.query_tokens.dtype
        if slots.image_embeds is None:
            return self.encode_images(slots.pixel_values[batch_index, slot_index], interpolate_pos_encoding).to(dtype)
        cached = slots.image_embeds_mask[batch_index, slot_index]
        given = slots.image_embeds[batch_index[cached], slot_index[cached]].to(dtype)
        width = self.config.vision_config.hidden_size
        if given.shape[-1] != width:
            raise ValueError(f"image_embeds have width {given.shape[-1]}, the vision tower's is {width}")
        if bool(cached.all()):
            return given
        fresh = ~cached
        encoded = self.encode_images(
            slots.pixel_values[batch_index[fresh], slot_index[fresh]], interpolate_pos_encoding
        ).to(dtype)
        if given.shape[0] and given.shape[1:] != encoded.shape[1:]:
            raise ValueError(
                f"image_embeds hold {tuple(given.shape[1:])} patch features per image, the vision tower gives "
                f"{tuple(encoded.shape[1:])}: the features come from another encoder or image size"
            )
        patches = encoded.new_empty(batch_index.shape[0], *encoded.shape[1:])
        patches[cached] = given
        patches[fresh] = encoded
        return patches

    def get_slot_features(self, slots: SlotBatch, interpolate_pos_encoding: bool = False) -> SlotFeatures:
        """Run vision tower, Q-Former and projection over the real slots of a normalized batch."""
        batch_index, slot_index = slots.image_slot_mask.nonzero(as_tuple=True)
        if batch_index.numel() == 0:
            width_q = self.config.qformer_config.hidden_size
            empty = self.query_tokens.new_zeros(0, self.config.num_query_tokens, width_q)
            return SlotFeatures(empty, self.language_projection(empty), batch_index, slot_index)
        patches = self.real_slot_patches(slots, batch_index, slot_index, interpolate_pos_encoding)
        if self.config.refine_top_m is not None:
            patches = apply_refinement(self, patches, slots, batch_index, slot_index, self.config.refine_top_m)
        if self.slot_type_embeds is not None:
            patches = patches + self.slot_type_embeds[slot_index].unsqueeze(1).to(patches.dtype)
        patch_mask = torch.ones(patches.shape[:-1], dtype=torch.long, device=patches.device)
        query_tokens = self.query_tokens.expand(patches.shape[0], -1, -1)
        instruction_ids = instruction_mask = None
        if slots.qformer_input_ids is not None:
            instruction_ids = slots.qformer_input_ids[batch_index, slot_index]
            instruction_mask = slots.qformer_attention_mask[batch_index, slot_index]
        query_output = run_qformer(
            self.qformer, query_tokens, patches, patch_mask, instruction_ids, instruction_mask
        )
        if self.slot_position_embeds is not None:
            # position of each real slot among its example's real slots (the LLM sees them concatenated)
            rank = (slots.image_slot_mask.long().cumsum(dim=1) - 1)[batch_index, slot_index]
            table = self.slot_position_embeds.view(self.config.max_image_slots, self.config.num_query_tokens, -1)
            query_output = query_output + table[rank].to(query_output.dtype)
        projection_dtype = self.language_projection.weight.dtype
        language_inputs = self.language_projection(query_output.to(projection_dtype))
        return SlotFeatures(query_output, language_inputs, batch_index, slot_index)

    def embed_inputs(self, slots: SlotBatch, input_ids: torch.Tensor, interpolate_pos_encoding: bool = False):
        """LLM input embeddings (B, L, Dl) with each real slot's (per_slot) or each example's (concat)
        query outputs at its image tokens."""
        concat = self.config.multi_image == "concat"
        if concat:
            features = concat_example_features(self, slots, interpolate_pos_encoding)
            images = slots.image_slot_mask.any(dim=1).long()
        else:
            features = self.get_slot_features(slots, interpolate_pos_encoding)
            images = slots.image_slot_mask.sum(dim=1)
        inputs_embeds = self.get_input_embeddings()(input_ids)
        per = f"num_query_tokens={self.config.num_query_tokens} per " + (
            "example with an image, multi_image=concat" if concat else "real slot")
        image_positions = check_image_tokens(input_ids, self.config.image_token_index,
                                             images * self.config.num_query_tokens, per)
        language_inputs = features.language_inputs.to(inputs_embeds.device, inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(image_positions.unsqueeze(-1), language_inputs)

    def forward(
        self,
        pixel_values: torch.Tensor,
        qformer_input_ids: torch.Tensor | None = None,
        qformer_attention_mask: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_slot_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        sample_weight: torch.Tensor | None = None,
        sample_kind: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        image_embeds: torch.Tensor | None = None,
        image_embeds_mask: torch.Tensor | None = None,
        return_logits: bool = True,
    ) -> RABlipOutput:
        """Loss and logits for a batch in the model batch contract (or InstructBLIP's single-image shapes).

        ``pixel_values`` (B, S, 3, H, W) or (B, 3, H, W); ``qformer_input_ids`` (B, S, Lq) or (B, Lq);
        ``image_slot_mask`` (B, S), default all True. ``image_embeds`` (B, S, P, Dv): precomputed vision
        features used, instead of the pixels, in the slots where ``image_embeds_mask`` (B, S) is True
        (default: every real slot). See the batch contract for the rest. With labels, ``return_logits=False``
        lets a decoder-only model apply its output layer to the positions that predict a label only (most
        of a training step's time otherwise): ``logits`` is then None and ``target_match`` is set.
        """
        slots = normalize_slot_inputs(
            pixel_values, qformer_input_ids, qformer_attention_mask, image_slot_mask, self.config.max_image_slots,
            image_embeds, image_embeds_mask,
        )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        inputs_embeds = self.embed_inputs(slots, input_ids, interpolate_pos_encoding)
        if self.is_decoder_only and labels is not None and not return_logits:
            outputs = self.language_model.get_decoder()(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                                        return_dict=True)
            loss_sums, counts, match = labelled_token_losses(
                outputs.last_hidden_state, self.language_model.get_output_embeddings(), labels)
            parts = combine_losses(loss_sums, counts, sample_weight, sample_kind)
            return RABlipOutput(loss=parts.loss, qa_loss=parts.qa_loss, askg_loss=parts.askg_loss,
                                per_sample_loss=parts.per_sample_loss, target_match=match,
                                language_model_outputs=outputs)
        if self.is_decoder_only:
            outputs = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, return_dict=True)
        else:
            if decoder_input_ids is None and labels is not None:
                decoder_input_ids = self.language_model.prepare_decoder_input_ids_from_labels(labels=labels)
            outputs = self.language_model(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                decoder_input_ids=decoder_input_ids,
                decoder_attention_mask=decoder_attention_mask,
                return_dict=True,
            )
        logits = outputs.logits
        if labels is None:
            return RABlipOutput(logits=logits, language_model_outputs=outputs)
        loss_sums, counts = per_sample_token_losses(logits, labels, shift=self.is_decoder_only)
        parts = combine_losses(loss_sums, counts, sample_weight, sample_kind)
        return RABlipOutput(
            loss=parts.loss,
            logits=logits,
            qa_loss=parts.qa_loss,
            askg_loss=parts.askg_loss,
            per_sample_loss=parts.per_sample_loss,
            language_model_outputs=outputs,
        )

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor,
        qformer_input_ids: torch.Tensor | None = None,
        qformer_attention_mask: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_slot_mask: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        image_embeds: torch.Tensor | None = None,
        image_embeds_mask: torch.Tensor | None = None,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """Generated answer token ids (B, T): the LLM's ``generate`` over the multimodal input embeddings.

        Only the new tokens are returned (for decoder-only LLMs the prompt is cut off; for
        encoder-decoders the sequence starts with the decoder start token, as transformers returns it).
        ``generate_kwargs`` go to the LLM's ``generate`` (num_beams, max_new_tokens, ...); ``image_embeds``
        and ``image_embeds_mask`` are as in :meth:`forward`.
        """
        slots = normalize_slot_inputs(
            pixel_values, qformer_input_ids, qformer_attention_mask, image_slot_mask, self.config.max_image_slots,
            image_embeds, image_embeds_mask,
        )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        inputs_embeds = self.embed_inputs(slots, input_ids, interpolate_pos_encoding)
        inputs: dict[str, torch.Tensor] = {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask}
        if self.is_decoder_only:
            inputs["input_ids"] = input_ids
        generated = self.language_model.generate(**inputs, **generate_kwargs)
        prompt_length = input_ids.shape[1]
        if (
            self.is_decoder_only
            and generated.shape[1] >= prompt_length
            and torch.equal(generated[:, :prompt_length], input_ids)
        ):
            generated = generated[:, prompt_length:]
        return generated

    @classmethod
    def from_pretrained(cls, path: str, **kwargs: Any) -> RABlipForConditionalGeneration:
        """Load a transformers InstructBLIP / BLIP-2 dir or a rablip checkpoint dir (strictly).

        See :func:`rablip.models.loading.load_pretrained` for the keyword arguments.
        """
        from rablip.models.loading import load_pretrained

        return load_pretrained(cls, path, **kwargs)

    @classmethod
    def _transformers_from_pretrained(cls, path: str, **kwargs: Any):
        """transformers' own ``from_pretrained`` (weight files, shards, dtype, device_map)."""
        return super().from_pretrained(path, **kwargs)

    def save_pretrained(self, save_directory: str, trainable_only: bool = False, **kwargs: Any) -> None:
        """Write safetensors + JSON: the full model, or only the trainable modules plus a base reference.

        See :func:`rablip.models.loading.save_checkpoint`.
        """
        from rablip.models.loading import save_checkpoint

        save_checkpoint(self, save_directory, trainable_only=trainable_only, **kwargs)

    def _transformers_save_pretrained(self, save_directory: str, **kwargs: Any) -> None:
        """transformers' own ``save_pretrained`` (config.json + model.safetensors, sharded when large)."""
        super().save_pretrained(save_directory, **kwargs)
