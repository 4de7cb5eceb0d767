"""Encode the knowledge-base store into embedding shards, over any number of processes, resumably.

The store's rows are cut into shards of ``shard_rows`` rows (shard j holds rows
``[j * shard_rows, (j + 1) * shard_rows)``), and process i of N takes the contiguous run of shards
``[i * S / N, (i + 1) * S / N)`` of the S shards. Shards are aligned to the store rather than to the
processes so that a job resumed with a different number of processes finds the same shards done.

Each shard is written into one shard directory per modality group (``<embeddings_dir>/image`` and
``<embeddings_dir>/text``, see :mod:`rablip.retrieval.groups`) with
:func:`rablip.retrieval.shards.write_shard` (array and ids, each atomically, manifest left alone).
A shard is finished when the files of both groups exist; a resumed job skips finished shards and
recomputes the rest. ``encoding.json`` records what the shards were made from (encoder fingerprint,
store, row count, shard size): a job started with another encoder or store stops instead of mixing
embeddings. After every process is done, the main process writes each group's ``shards.json``
(with the encoder fingerprint) and builds the group indexes (:mod:`rablip.retrieval.group_build`).

Items whose image fails to load under ``data.on_bad_image=skip`` are left out of the shards and
listed in the report. Identical images within a batch are encoded once
(:mod:`rablip.retrieval.item_encoding`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rablip.data.images import ImageLoader
from rablip.data.kb import KBStore
from rablip.errors import RablipError
from rablip.models.retrieval_processing import RetrievalBatcher
from rablip.retrieval.groups import GROUPS, group_of
from rablip.retrieval.item_encoding import embed_items_shared, shared_image_batch
from rablip.retrieval.shards import list_finished_shards, write_shard, write_shards_manifest
from rablip.utils.io import atomic_write_json, read_json

ENCODING_FILE = "encoding.json"
ENCODING_FORMAT = "rablip-kb-encoding"


@dataclass(frozen=True)
class ShardPlan:
    """Which store rows each shard holds and which shards each process encodes."""

    count: int
    """Rows in the store."""
    shard_rows: int

    @property
    def num_shards(self) -> int:
        return -(-self.count // self.shard_rows)

    def rows(self, shard: int) -> range:
        """Store rows of ``shard``."""
        return range(shard * self.shard_rows, min((shard + 1) * self.shard_rows, self.count))

    def shards_of(self, process_index: int, num_processes: int) -> range:
        """The contiguous shards process ``process_index`` of ``num_processes`` encodes."""
        total = self.num_shards
        return range(process_index * total // num_processes, (process_index + 1) * total // num_processes)


@dataclass
class EncodeReport:
    """What one process did."""

    encoded: list[int] = field(default_factory=list)
    """Shards encoded by this call."""
    skipped: list[int] = field(default_factory=list)
    """Shards found finished and left alone."""
    items: int = 0
    image_rows: int = 0
    """Items with an image among the encoded ones."""
    unique_images: int = 0
    """Vision-encoder forwards those items needed (identical images share one)."""
    dropped: list[str] = field(default_factory=list)
    """Ids of items left out because their image could not be loaded (``on_bad_image=skip``)."""


def finished_shards(out_dir: str | Path) -> set[int]:
    """Shards whose files exist in every group directory."""
    done = None
    for group in GROUPS:
        directory = Path(out_dir) / group
        names = set(list_finished_shards(directory)) if directory.is_dir() else set()
        numbers = {int(name.split("_")[1]) for name in names}
        done = numbers if done is None else done & numbers
    return done or set()


def encoding_record(plan: ShardPlan, fingerprint: str, store: KBStore) -> dict:
    """The ``encoding.json`` content for this plan, encoder and store."""
    return {"format": ENCODING_FORMAT, "encoder_fingerprint": fingerprint, "store": str(store.directory.resolve()),
            "store_built_at": store.manifest.get("built_at"), "count": plan.count, "shard_rows": plan.shard_rows,
            "num_shards": plan.num_shards, "groups": list(GROUPS)}


def check_encoding_record(out_dir: str | Path, record: dict, write: bool) -> None:
    """Refuse shards made from another encoder, store or shard size; ``write`` it when there is none yet."""
    path = Path(out_dir) / ENCODING_FILE
    if path.is_file():
        recorded = read_json(path, "encoding record")
        differs = sorted(key for key in record if recorded.get(key) != record[key])
        if differs:
            raise RablipError(
                f"{path} records embeddings made with other settings ({', '.join(differs)} differ: "
                f"{ {key: recorded.get(key) for key in differs} } vs now { {key: record[key] for key in differs} }). "
                "Delete that directory to re-encode, or point retrieval.embeddings_dir elsewhere.")
    elif write:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, record)


def _autocast(device: torch.device, bf16: bool):
    if bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def encode_shard(encoder: torch.nn.Module, batcher: RetrievalBatcher, store: KBStore, rows: range,
                 batch_size: int, device: torch.device, bf16: bool, load_image: Callable,
                 report: EncodeReport) -> dict[str, tuple[list[str], np.ndarray]]:
    """Embeddings of store ``rows`` split by group: group -> (ids, (n, D) float32)."""
    ids: dict[str, list[str]] = {group: [] for group in GROUPS}
    parts: dict[str, list[np.ndarray]] = {group: [] for group in GROUPS}
    for start in range(rows.start, rows.stop, batch_size):
        items = store.get_many(store.ids_at(range(start, min(start + batch_size, rows.stop))))
        refs = [store.image_of(item) if item.modality != "text" else None for item in items]
        shared = shared_image_batch(batcher, items, refs, load_image)
        kept = [items[i] for i in shared.kept]
        kept_positions = set(shared.kept)
        report.dropped.extend(item.id for position, item in enumerate(items) if position not in kept_positions)
        if not kept:
            continue
        with _autocast(device, bf16):
            embeddings = embed_items_shared(encoder, shared, device).cpu().numpy()
        report.items += len(kept)
        report.image_rows += int(shared.image_rows.numel())
        report.unique_images += int(shared.unique_pixels.shape[0])
        for group in GROUPS:
            selected = [i for i, item in enumerate(kept) if group_of(item.modality) == group]
            ids[group].extend(kept[i].id for i in selected)
            parts[group].append(embeddings[selected])
    dim = encoder.fusion.embed_dim
    return {group: (ids[group], np.concatenate(parts[group]) if parts[group] else np.zeros((0, dim), np.float32))
            for group in GROUPS}


def encode_shards(encoder: torch.nn.Module, batcher: RetrievalBatcher, store: KBStore, out_dir: str | Path, *,
                  shard_rows: int, batch_size: int, process_index: int = 0, num_processes: int = 1,
                  device: torch.device | None = None, bf16: bool = False, load_image: Callable | None = None,
                  show_progress: bool = False) -> EncodeReport:
    """Encode this process's unfinished shards of ``store`` into ``out_dir``/<group>/ (no manifests).

    ``load_image(ref, item_id)`` decodes an image reference (default: an ``error``-policy
    :class:`ImageLoader`); ``bf16`` runs the encoder under bf16 autocast.
    """
    device = device or next(encoder.parameters()).device
    load_image = load_image or ImageLoader(None, "error").load
    plan = ShardPlan(len(store), shard_rows)
    mine = plan.shards_of(process_index, num_processes)
    done = finished_shards(out_dir)
    report = EncodeReport()
    todo = [shard for shard in mine if shard not in done]
    report.skipped = [shard for shard in mine if shard in done]
    total_rows = sum(len(plan.rows(shard)) for shard in todo)
    with tqdm(total=total_rows, unit="item", desc="encoding kb", disable=not show_progress) as bar:
        for shard in todo:
            by_group = encode_shard(encoder, batcher, store, plan.rows(shard), batch_size, device, bf16,
                                    load_image, report)
            for group in GROUPS:  # a shard counts as finished once every group's files exist
                group_ids, embeddings = by_group[group]
                write_shard(Path(out_dir) / group, shard, embeddings, group_ids, update_manifest=False)
            report.encoded.append(shard)
            bar.update(len(plan.rows(shard)))
    return report


def finish_shards(out_dir: str | Path, plan: ShardPlan, fingerprint: str) -> dict[str, int]:
    """Check every shard is finished and write each group's ``shards.json``; return item counts per group."""
    missing = sorted(set(range(plan.num_shards)) - finished_shards(out_dir))
    if missing:
        raise RablipError(f"embedding shards {missing[:10]} in {out_dir} are not finished; a process failed. "
                          "Run the encoding again: finished shards are kept.")
    counts = {}
    for group in GROUPS:
        manifest = read_json(write_shards_manifest(Path(out_dir) / group, encoder_fingerprint=fingerprint),
                             "embedding shard manifest")
        counts[group] = int(manifest["count"])
    return counts
