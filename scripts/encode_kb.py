"""Encode the knowledge-base store with the pre-trained retrieval encoder and build its indexes.

    python scripts/encode_kb.py --config configs/experiment/synthetic_eval.yaml [key=value ...]
    accelerate launch scripts/encode_kb.py --config ... # shards spread over the processes

Reads ``data.kb.store_dir`` and ``model.fusion.checkpoint``; writes embedding shards into
``retrieval.embeddings_dir`` (default ``<retrieval.index_dir>/embeddings``; one shard directory per
modality group, ``image/`` and ``text/``, each with ``shards.json`` carrying the encoder
fingerprint) and one FAISS index per group into ``retrieval.index_dir`` (``retrieval.index_type``
and its parameters), with ``retrieval_index.json`` written last. Batches hold
``retrieval.encode_batch_size`` items (0: ``eval.batch_size``); shards hold ``retrieval.shard_rows``
rows. An interrupted run resumes: run the same command again.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rablip.config.cli import parse_config  # noqa: E402
from rablip.stages.encode_kb import encode_knowledge_base  # noqa: E402
from rablip.utils.cli import run_main  # noqa: E402


def main(argv: list[str]) -> int:
    """Encode, index, and print what was built (main process)."""
    cfg = parse_config(argv, description=__doc__)
    summary = encode_knowledge_base(cfg)
    if summary.counts is not None:
        groups = ", ".join(f"{group} {count}" for group, count in summary.counts.items())
        print(f"encoded {sum(summary.counts.values())} knowledge items ({groups}) into {summary.embeddings_dir}; "
              f"{cfg.retrieval.index_type} indexes in {summary.index_dir} (encoder {summary.fingerprint[:12]})")
    return 0


if __name__ == "__main__":
    run_main(main)
