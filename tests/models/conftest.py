"""Tiny transformers checkpoints (built once per session) and contract-shaped batches."""

from __future__ import annotations

import pytest
import torch

from rablip.synthetic.build import build_tiny_checkpoint, tiny_architecture


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory):
    """A transformers InstructBLIP dir with a tiny T5."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("ib_t5"), tiny_architecture("t5"), seed=1)


@pytest.fixture(scope="session")
def tiny_opt_dir(tmp_path_factory):
    """A transformers InstructBLIP dir with a tiny OPT."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("ib_opt"), tiny_architecture("opt"), seed=2)


@pytest.fixture(scope="session")
def tiny_blip2_dir(tmp_path_factory):
    """A transformers BLIP-2 dir (Q-Former without instruction input) with a tiny OPT."""
    return build_tiny_checkpoint(
        tmp_path_factory.mktemp("blip2_opt"), tiny_architecture("opt"), qformer_text_input=False, seed=3
    )


def make_batch(config, slot_mask: list[list[bool]], *, seed: int = 0, text_len: int = 5, lq: int = 6,
               decoder_only: bool = False, image_size: int = 32) -> dict[str, torch.Tensor]:
    """A batch in the model batch contract: image tokens only for real slots, left-padded text."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.tensor(slot_mask, dtype=torch.bool)
    batch_size, num_slots = mask.shape
    num_queries, image_id = config.num_query_tokens, config.image_token_index
    pixel_values = torch.randn(batch_size, num_slots, 3, image_size, image_size, generator=generator)
    pixel_values[~mask] = 0.0
    qformer_input_ids = torch.randint(1, 90, (batch_size, num_slots, lq), generator=generator)
    rows = []
    for row in mask.tolist():
        ids: list[int] = []
        for real in row:
            if real:
                ids += [image_id] * num_queries
            ids += torch.randint(3, 100, (2,), generator=generator).tolist()  # "Reference k: <text>"
        ids += torch.randint(3, 100, (text_len,), generator=generator).tolist()
        rows.append(ids)
    length = max(len(ids) for ids in rows)
    input_ids = torch.full((batch_size, length), 1, dtype=torch.long)
    attention_mask = torch.zeros(batch_size, length, dtype=torch.long)
    for index, ids in enumerate(rows):
        input_ids[index, length - len(ids):] = torch.tensor(ids)
        attention_mask[index, length - len(ids):] = 1
    batch = {
        "pixel_values": pixel_values,
        "image_slot_mask": mask,
        "qformer_input_ids": qformer_input_ids,
        "qformer_attention_mask": torch.ones_like(qformer_input_ids),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
    }
    if decoder_only:
        labels = input_ids.clone()
        labels[:, :-3] = -100
        batch["labels"] = labels
    else:
        batch["labels"] = torch.randint(3, 100, (batch_size, 4), generator=generator)
    return batch
