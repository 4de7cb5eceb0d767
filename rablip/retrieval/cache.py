"""Live retrieval over a whole split, cached in the run directory for training and evaluation.

:func:`retrieve_split` runs the configured :class:`~rablip.retrieval.retriever.Retriever` over the
questions of a split. :func:`retrieve_split_cached` keeps its results in
``<run_dir>/retrieval_<split>.jsonl`` (the static retrieval format of
:mod:`rablip.retrieval.static`) with ``retrieval_<split>.meta.json`` beside it, removed before the
results are rewritten and written after them (:func:`rablip.utils.artefacts.rewrite_in_place`). The meta file holds a key over everything the results depend on: the sha256 of the index
layout (which holds the sha256 of every group index manifest, and so the encoder fingerprint and
the index files), the retrieval settings (scope included; with ``retrieval.scope=candidates``, the
sha256 of every question's listed sources; with ``retrieval.rerank_model``, the sha256 of the trained
re-ranker head beside the encoder), and the split's questions. A cache whose key differs is
recomputed, never reused.

The cache keeps the top ``max(2 * retrieval.k, 10)`` items per question, not only ``k``: hard
negatives (``askg.negatives=hard``) come from below the top k, and recall@10 needs ten. Hard-noise
evaluation (``eval.noisy_mode=hard``) takes its replacements from below the top k too, and keeps at
least ``k`` plus two candidates per replaced reference (:func:`cache_depth`).

Under ``accelerate launch`` (torch.distributed initialised) every process retrieves its slice of
the questions into a part file, the main process joins them, and all processes read the result.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path

from rablip.config.schema import Config
from rablip.data.images import ImageLoader
from rablip.data.records import QAExample
from rablip.models.rerank import HEAD_FILE
from rablip.retrieval.candidates import check_scope, listed_sources, retrieve_candidates
from rablip.retrieval.components import encoder_fingerprint
from rablip.retrieval.groups import layout_checksum
from rablip.retrieval.index_manifest import sha256_of_file
from rablip.retrieval.retriever import Retriever
from rablip.retrieval.snippets import snippet_texts
from rablip.retrieval.static import Retrieved, Texts, read_retrieval, read_retrieval_texts, write_retrieval
from rablip.utils.artefacts import rewrite_in_place
from rablip.utils.dist import barrier, process_rank_world
from rablip.utils.io import read_json
from rablip.utils.logging import get_logger

log = get_logger("rablip.retrieval")
MIN_CACHE_DEPTH = 10


def noise_count(fraction: float, k: int) -> int:
    """How many of ``k`` references noisy evaluation replaces: ``fraction * k`` rounded half up."""
    return min(k, math.floor(fraction * k + 0.5))


def cache_depth(cfg: Config) -> int:
    """Items kept per question: ``max(2 * retrieval.k, 10)``; with ``eval.noisy_mode=hard``, at least
    ``k + 2 * replaced`` (two ranked candidates below the top k per replaced reference)."""
    k = cfg.retrieval.k
    depth = max(2 * k, MIN_CACHE_DEPTH)
    if cfg.eval.noisy_mode == "hard":
        depth = max(depth, k + 2 * noise_count(cfg.eval.noisy_fraction, k))
    return depth


def retrieve_examples(retriever: Retriever, examples: Sequence[QAExample], k: int, image_loader: ImageLoader,
                      batch_size: int = 64) -> dict[str, Retrieved]:
    """Question id -> top-``k`` (item id, score) for ``examples`` (:func:`retrieve_examples_with_texts`)."""
    return retrieve_examples_with_texts(retriever, examples, k, image_loader, batch_size)[0]


def retrieve_examples_with_texts(retriever: Retriever, examples: Sequence[QAExample], k: int,
                                 image_loader: ImageLoader, batch_size: int = 64) -> tuple[dict[str, Retrieved], Texts]:
    """``(question id -> top-k (item id, score), texts)`` for ``examples``. In ``two_stage`` mode the
    items are snippet anchors and ``texts`` maps each question to its anchors' attached text ids
    (:mod:`rablip.retrieval.snippets`); in the other modes ``texts`` is empty.

    In ``image`` and ``two_stage`` mode a question whose image is missing or was skipped
    (``data.on_bad_image=skip``) gets an empty list, and is counted in a warning.
    """
    results: dict[str, Retrieved] = {}
    texts: Texts = {}
    snippets = retriever.mode == "two_stage"
    needs_image = retriever.mode != "ra_blip"
    imageless = 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        images = [image_loader.load(ex.image, ex.id) if ex.image is not None else None for ex in chunk]
        usable = [i for i, image in enumerate(images) if image is not None or not needs_image]
        imageless += len(chunk) - len(usable)
        chosen_images, questions = [images[i] for i in usable], [chunk[i].question for i in usable]
        if snippets:
            rows = retriever.retrieve_snippets(chosen_images, questions, k) if usable else []
            hits = [[(snippet.image_id, snippet.score) for snippet in row] for row in rows]
            texts.update((chunk[i].id, snippet_texts(row)) for i, row in zip(usable, rows, strict=True))
        else:
            hits = retriever.retrieve(chosen_images, questions, k)
        found = dict(zip(usable, hits, strict=True))
        for position, example in enumerate(chunk):
            results[example.id] = found.get(position, [])
    if imageless:
        log.warning("%d questions have no usable image; %s retrieval gave them no references", imageless,
                    retriever.mode)
    return results, texts


def retrieve_split(cfg: Config, examples: Sequence[QAExample], retriever: Retriever | None = None,
                   ) -> tuple[dict[str, Retrieved], Texts]:
    """Retrieve for every one of ``examples`` with the configured retriever, over the whole knowledge base
    or (``retrieval.scope=candidates``) among each question's listed sources: ``(results, snippet texts)``
    as :func:`retrieve_examples_with_texts` returns them."""
    check_scope(cfg)
    retriever = retriever or Retriever.from_config(cfg)
    loader = ImageLoader(None, cfg.data.on_bad_image)
    batch_size = cfg.retrieval.encode_batch_size or cfg.eval.batch_size
    if cfg.retrieval.scope == "candidates":
        return retrieve_candidates(retriever, examples, cache_depth(cfg), loader, batch_size=batch_size), {}
    return retrieve_examples_with_texts(retriever, examples, cache_depth(cfg), loader, batch_size=batch_size)


def _examples_digest(examples: Sequence[QAExample]) -> str:
    digest = hashlib.sha256()
    for ex in examples:
        image = ex.image if not isinstance(ex.image, bytes) else hashlib.sha256(ex.image).hexdigest()
        digest.update(json.dumps([ex.id, ex.question, str(image)]).encode() + b"\n")
    return digest.hexdigest()


def cache_key(cfg: Config, split: str, examples: Sequence[QAExample]) -> str:
    """sha256 over the index layout checksum, the retrieval settings and the split's questions."""
    r = cfg.retrieval
    # Without allow_foreign_index the index refuses any encoder but the one in its layout (hashed here).
    encoder = encoder_fingerprint(cfg.model.fusion.checkpoint) if r.allow_foreign_index else None
    settings = {"layout_sha256": layout_checksum(r.index_dir), "foreign_encoder": encoder,
                "mode": r.mode, "depth": cache_depth(cfg), "rerank_model": r.rerank_model,
                "rerank_exact": r.rerank_exact, "rerank_factor": r.rerank_factor, "nprobe": r.nprobe,
                "expansion_entities": r.expansion_entities, "instruct_queries": r.instruct_queries,
                "split": split, "questions_sha256": _examples_digest(examples), "scope": r.scope}
    if r.mode == "two_stage":  # snippets: their attached texts are part of the results
        settings["snippet_texts"] = r.snippet_texts
        if r.snippet_search_depth:  # only a non-default depth enters the key (older caches stay valid)
            settings["snippet_search_depth"] = r.snippet_search_depth
    if r.scope == "candidates":  # the listed sources decide what can be found
        sources = json.dumps([listed_sources(ex) for ex in examples]).encode()
        settings["sources_sha256"] = hashlib.sha256(sources).hexdigest()
    if r.rerank_model:  # the re-ranker's head orders the results: a retrained one invalidates them
        head = Path(cfg.model.fusion.checkpoint) / HEAD_FILE
        settings["rerank_head_sha256"] = sha256_of_file(head) if head.is_file() else None
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def cache_paths(run_dir: str | Path, split: str) -> tuple[Path, Path]:
    """(results jsonl, meta json) of ``split`` in ``run_dir``."""
    return Path(run_dir) / f"retrieval_{split}.jsonl", Path(run_dir) / f"retrieval_{split}.meta.json"


def read_cache(run_dir: str | Path, split: str, key: str) -> dict[str, Retrieved] | None:
    """The cached results when their meta file carries ``key`` and the counts agree; else None."""
    results_path, meta_path = cache_paths(run_dir, split)
    if not (results_path.is_file() and meta_path.is_file()):
        return None
    meta = read_json(meta_path, "retrieval cache meta")
    if not isinstance(meta, dict) or meta.get("key") != key:
        return None
    results = read_retrieval(results_path)
    return results if len(results) == meta.get("questions") else None


def retrieve_split_cached(cfg: Config, split: str, examples: Sequence[QAExample], run_dir: str | Path,
                          ) -> dict[str, Retrieved]:
    """The retrieval results of ``examples`` (the questions of ``data.<split>``) from the run-dir cache,
    computed (and cached) when stale or absent."""
    check_scope(cfg)
    key = cache_key(cfg, split, examples)
    cached = read_cache(run_dir, split, key)
    if cached is not None:
        log.info("retrieval results for %s read from %s", split, cache_paths(run_dir, split)[0])
        return cached
    rank, world = process_rank_world()
    results_path, meta_path = cache_paths(run_dir, split)
    part = results_path.with_name(f".{results_path.stem}.part-{rank}-of-{world}.jsonl")
    mine = examples[rank * len(examples) // world:(rank + 1) * len(examples) // world]
    mine_results, mine_texts = retrieve_split(cfg, mine)
    write_retrieval(part, mine_results.items(), mine_texts)
    barrier()
    if rank == 0:
        results: dict[str, Retrieved] = {}
        texts: Texts = {}
        for other in range(world):
            other_part = results_path.with_name(f".{results_path.stem}.part-{other}-of-{world}.jsonl")
            results.update(read_retrieval(other_part))
            texts.update(read_retrieval_texts(other_part))
        # The meta file goes first and comes back last: old meta never vouches for new results.
        with rewrite_in_place(meta_path.parent, meta_path.name) as cache:
            write_retrieval(results_path, ((ex.id, results[ex.id]) for ex in examples), texts)
            cache.commit({"key": key, "questions": len(examples), "split": split,
                          "mode": cfg.retrieval.mode, "depth": cache_depth(cfg)})
        for other in range(world):
            results_path.with_name(f".{results_path.stem}.part-{other}-of-{world}.jsonl").unlink(missing_ok=True)
        log.info("retrieval results for %s (%d questions) cached in %s", split, len(examples), results_path)
    barrier()
    return read_retrieval(results_path)
