"""The ``retrieval`` section of the config schema (see :mod:`rablip.config.schema` for the conventions)."""

from __future__ import annotations

from dataclasses import dataclass

from rablip.config.checks import check_choice, check_positive


@dataclass
class RetrievalConfig:
    source: str = "gold"
    """index: live search; static: a retrieval results file; gold: the dataset's relevance labels; none."""
    mode: str = "ra_blip"
    """ra_blip: fused image+question -> multimodal items; image: image -> image items;
    two_stage: RORA-VLM image -> entity names -> expanded question -> text items."""
    k: int = 3
    """References given to the generator per question."""
    index_dir: str = ""
    static_file: str = ""
    """Retrieval results file for source=static."""
    index_type: str = "flat"
    """flat (exact inner product), ivfflat, ivfpq, hnsw. Per modality group: IVF lowers nlist to items // 39,
    and an ivfpq group with fewer than 2**nbits items is built flat (exact) instead, as its manifest records."""
    nlist: int = 1024
    pq_m: int = 32
    """ivfpq: sub-quantizers per embedding; must divide the embedding width."""
    nbits: int = 8
    """ivfpq: bits per sub-quantizer code (1-16); training needs 2**nbits rows."""
    hnsw_m: int = 32
    nprobe: int = 16
    rerank_exact: bool = False
    """Re-score k x rerank_factor candidates with full-precision embeddings."""
    rerank_factor: int = 4
    rerank_model: bool = False
    """Re-score the top k x rerank_factor with the fusion re-ranker on the joint (question, item) sequence:
    the head that run_pretrain.py train.stage=rerank saved beside the encoder (model.fusion.checkpoint),
    or the encoder's ITM head when it holds none."""
    expansion_entities: int = 1
    """two_stage: entity names in the one expanded question of Retriever.retrieve_two_stage (the stages'
    diagnostic view); the references are snippets, whose stage-2 query names its own entity alone."""
    snippet_texts: int = 2
    """two_stage: text hits attached to each knowledge snippet (RORA-VLM: retrieved image + entity name and
    description + text snippets; rablip/retrieval/snippets.py): the question expanded with the snippet's
    entity name searches the text index and up to this many of that entity's text items are kept. 0: a
    snippet is its image with the entity name and description alone."""
    snippet_search_depth: int = 0
    """two_stage: text hits each snippet's expanded question searches before those of other entities are dropped
    (capped at the text group's size); 0: snippet_texts x 5. A depth of at least the text group's size makes
    stage 2 an exact entity filter ranked by the expanded question (the synthetic RORA configs: the tiny retrieval
    encoder does not rank a made-up name's text items high, so a shallow search finds none of them)."""
    allow_foreign_index: bool = False
    """Accept an index whose manifest names another encoder or whose checksum differs (not advised)."""
    embeddings_dir: str = ""
    """Knowledge-base embedding shards written by scripts/encode_kb.py; empty: <index_dir>/embeddings."""
    shard_rows: int = 65536
    """Knowledge-base rows per embedding shard: the unit of work per process and of resuming."""
    encode_batch_size: int = 0
    """Items per encoder batch when encoding the knowledge base (0: eval.batch_size)."""
    instruct_queries: bool = True
    """False: query images are extracted without the question as Q-Former instruction (uninstructed ablation)."""
    scope: str = "global"
    """source=index: global searches the whole KB; candidates (WebQA's standard setting; dataset webqa, mode ra_blip):
    rank only each question's listed sources (train/val: its pos+neg facts; test: txt_Facts+img_Facts) exactly
    by their stored embeddings; a question listing none gets no references."""

    def __post_init__(self) -> None:
        check_choice("retrieval.source", self.source, ("index", "static", "gold", "none"))
        check_choice("retrieval.scope", self.scope, ("global", "candidates"))
        check_choice("retrieval.mode", self.mode, ("ra_blip", "image", "two_stage"))
        check_choice("retrieval.index_type", self.index_type, ("flat", "ivfflat", "ivfpq", "hnsw"))
        check_positive("retrieval.k", self.k, allow_zero=True)
        check_positive("retrieval.shard_rows", self.shard_rows)
        check_positive("retrieval.encode_batch_size", self.encode_batch_size, allow_zero=True)
        check_positive("retrieval.expansion_entities", self.expansion_entities)
        check_positive("retrieval.snippet_texts", self.snippet_texts, allow_zero=True)
        check_positive("retrieval.snippet_search_depth", self.snippet_search_depth, allow_zero=True)
        check_positive("retrieval.rerank_factor", self.rerank_factor)
