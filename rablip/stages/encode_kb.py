"""The encoding stage (``scripts/encode_kb.py``): config -> embedding shards -> group indexes.

Run it under ``accelerate launch`` to spread the shards over processes (each loads the encoder on
its own device and writes its own shard files); the main process writes the shard manifests and
builds the indexes once every process is done. Re-running resumes: finished shards are skipped and
indexes that are already up to date are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rablip.config.schema import Config
from rablip.data.images import ImageLoader
from rablip.data.kb import KBStore
from rablip.data.prepare import prepare_data
from rablip.errors import ConfigError
from rablip.retrieval.components import embeddings_dir, encoder_fingerprint, load_encoder, retrieval_batcher
from rablip.retrieval.encode import (
    EncodeReport,
    ShardPlan,
    check_encoding_record,
    encode_shards,
    encoding_record,
    finish_shards,
)
from rablip.retrieval.group_build import IndexRequest, build_group_indexes
from rablip.stages.runtime import make_accelerator
from rablip.utils.logging import get_logger

log = get_logger("rablip.retrieval")


@dataclass
class EncodeSummary:
    """What the job produced (the main process fills ``counts`` and ``layout``)."""

    report: EncodeReport
    """This process's shards."""
    embeddings_dir: Path
    index_dir: Path
    fingerprint: str
    counts: dict[str, int] | None = None
    """Items per group (main process only)."""
    layout: Path | None = None
    """``retrieval_index.json`` (main process only)."""


def index_request(cfg: Config) -> IndexRequest:
    r = cfg.retrieval
    return IndexRequest(index_type=r.index_type, nlist=r.nlist, pq_m=r.pq_m, nbits=r.nbits, hnsw_m=r.hnsw_m,
                        nprobe=r.nprobe, seed=cfg.run.seed)


def encode_knowledge_base(cfg: Config, show_progress: bool = True) -> EncodeSummary:
    """Encode ``data.kb.store_dir`` with ``model.fusion.checkpoint`` and build ``retrieval.index_dir``."""
    if not cfg.retrieval.index_dir:
        raise ConfigError("retrieval.index_dir is empty: set where the knowledge-base index is to be built.")
    if not cfg.model.fusion.checkpoint:
        raise ConfigError("model.fusion.checkpoint is empty: point it at the pre-trained retrieval encoder "
                          "(run_pretrain.py's final/ dir).")
    fingerprint = encoder_fingerprint(cfg.model.fusion.checkpoint)
    accelerator = make_accelerator(cfg)
    with accelerator.main_process_first():
        prepare_data(cfg)
        batcher = retrieval_batcher(cfg)
    store = KBStore.open(cfg.data.kb.store_dir, root=cfg.data.kb.root or None)
    out_dir = embeddings_dir(cfg)
    plan = ShardPlan(len(store), cfg.retrieval.shard_rows)
    # Every process checks (so all stop alike); only the main one writes the record.
    check_encoding_record(out_dir, encoding_record(plan, fingerprint, store), write=accelerator.is_main_process)
    accelerator.wait_for_everyone()
    encoder = load_encoder(cfg, accelerator.device)
    image_loader = ImageLoader(None, cfg.data.on_bad_image)
    report = encode_shards(
        encoder, batcher, store, out_dir, shard_rows=plan.shard_rows,
        batch_size=cfg.retrieval.encode_batch_size or cfg.eval.batch_size,
        process_index=accelerator.process_index, num_processes=accelerator.num_processes,
        device=accelerator.device, bf16=accelerator.mixed_precision == "bf16", load_image=image_loader.load,
        show_progress=show_progress and accelerator.is_main_process)
    if report.dropped:
        log.warning("process %d left out %d items whose image could not be loaded: %s", accelerator.process_index,
                    len(report.dropped), ", ".join(report.dropped[:10]))
    log.info("process %d: %d shards encoded, %d already done; %d items, %d image rows in %d vision forwards",
             accelerator.process_index, len(report.encoded), len(report.skipped), report.items, report.image_rows,
             report.unique_images)
    accelerator.wait_for_everyone()
    summary = EncodeSummary(report, out_dir, Path(cfg.retrieval.index_dir), fingerprint)
    if accelerator.is_main_process:
        summary.counts = finish_shards(out_dir, plan, fingerprint)
        summary.layout = build_group_indexes(out_dir, cfg.retrieval.index_dir, fingerprint, summary.counts,
                                             index_request(cfg), show_progress=show_progress)
    accelerator.wait_for_everyone()
    return summary
