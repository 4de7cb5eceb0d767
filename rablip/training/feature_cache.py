"""The frozen-feature cache: the vision encoder's patch features of every knowledge-item image,
computed once, stored on disk as float16 and memory-mapped by every later step and run.

While the vision tower is frozen, an item image's patch features (the vision model's
``last_hidden_state``, which the Q-Former cross-attends to) never change, yet fine-tuning would
recompute them for each of the k references of every example at every step. The cache keeps them
as rows of a ``(items, patches, width)`` float16 ``.npy`` file read with ``mmap_mode="r"``; the
collator hands them to the model as ``image_embeds`` (see :mod:`rablip.models.processing`).

A cache directory (by default beside the KB store, ``<data.kb.store_dir>.vision_features``):

    features.npy         (R, P, D) float16; row r holds the r-th image item of the store (row order)
    rows.npy             (len(store),) int64: the cache row of each store row, -1 where there is none
                         (text items, images skipped under ``data.on_bad_image=skip``)
    feature_cache.json   the manifest, written last: the key and its parts, shapes and file sizes

A cache is valid only under the key it was built with: a sha256 over the vision tower's weights
(names, dtypes, shapes and bytes) and config, the image processor's settings, and the KB store's
manifest and root. :func:`open_or_build` rebuilds a cache whose key differs or whose files do not
match its manifest; a stale or damaged cache is never used. A build writes into the sibling
``<dir>.building`` (recording its progress after every batch, so an interrupted build goes on
from there under the same key) and renames the finished directory into place
(:func:`rablip.utils.artefacts.build_beside`, the manifest written last).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from rablip.config.schema import Config
from rablip.data.images import ImageLoader
from rablip.data.kb import KBStore
from rablip.data.samples import item_has_image
from rablip.errors import ConfigError, RablipError
from rablip.models.processor_files import image_size
from rablip.utils.artefacts import build_beside
from rablip.utils.io import atomic_write_json, read_json
from rablip.utils.logging import get_logger

log = get_logger("rablip.feature_cache")

CACHE_FORMAT = "rablip-feature-cache"
CACHE_VERSION = 1
"""Layout version; it is part of the key, so a cache of another version is rebuilt."""
MANIFEST_NAME = "feature_cache.json"
FEATURES_FILE = "features.npy"
ROWS_FILE = "rows.npy"
ITEM_ROWS_FILE = "item_rows.npy"
"""In a build directory only: the store row of each cache row."""
PROGRESS_FILE = "progress.json"
"""In a build directory only: the key and the cache rows written so far."""
FLOAT16_MAX = float(np.finfo(np.float16).max)
FLOAT16_TINY = float(np.finfo(np.float16).tiny)
"""Below this (6.1e-5) float16 values are subnormal and lose relative precision."""
_PROCESSOR_NOISE = ("processor_class", "image_processor_type", "auto_map")


class StaleFeatureCache(RablipError):
    """A cache directory that cannot be used: missing, unfinished, damaged or built under another key."""


@dataclass(frozen=True)
class CacheKey:
    """What a cache is valid for: ``digest`` (sha256 hex) of ``parts``."""

    digest: str
    parts: dict[str, Any]


def vision_weights_sha256(vision_model: torch.nn.Module) -> str:
    """sha256 over the vision tower's state dict: each tensor's name, dtype, shape and bytes, by name."""
    digest = hashlib.sha256()
    for name, tensor in sorted(vision_model.state_dict().items()):
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{data.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def cache_key(model: torch.nn.Module, image_processor: Any, kb: KBStore) -> CacheKey:
    """The key of the cache for ``model``'s vision tower, ``image_processor`` and ``kb``."""
    vision_config = model.config.vision_config.to_dict()
    vision_config.pop("transformers_version", None)
    processor = {k: v for k, v in image_processor.to_dict().items() if k not in _PROCESSOR_NOISE and k[0] != "_"}
    parts = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "vision_weights_sha256": vision_weights_sha256(model.vision_model),
        "vision_config": vision_config,
        "vision_backbone": [model.config.vision_backbone, model.config.timm_model_name, model.config.timm_kwargs],
        "image_processor": processor,
        "kb_manifest": kb.manifest,
        "kb_root": str(kb.root) if kb.root is not None else None,
    }
    parts = _jsonable(parts)
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return CacheKey(digest, parts)


def _file_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else -1


class FeatureCache:
    """A finished cache, memory-mapped: the precomputed features of knowledge items by id.

    Open with :meth:`open` (or :func:`open_or_build`); :meth:`features_of` returns, per item id, a
    (P, D) float16 tensor or None (no cached image). Pickles as "open again" for data-loader workers.
    """

    def __init__(self, directory: Path, kb: KBStore, key: str, manifest: dict[str, Any],
                 features: np.ndarray, rows: np.ndarray) -> None:
        self.directory = directory
        self.kb = kb
        self.key = key
        self.manifest = manifest
        self.features = features
        self.rows = rows

    @classmethod
    def open(cls, directory: str | os.PathLike, kb: KBStore, key: str) -> FeatureCache:
        """Open the cache at ``directory``; StaleFeatureCache says why when it is not a finished,
        intact cache built under ``key`` for this store."""
        directory = Path(directory)
        manifest_path = directory / MANIFEST_NAME
        if not manifest_path.is_file():
            raise StaleFeatureCache(f"{directory} holds no finished feature cache ({MANIFEST_NAME} is missing)")
        try:
            manifest = read_json(manifest_path, "feature cache manifest")
        except RablipError as err:
            raise StaleFeatureCache(str(err)) from None
        if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
            raise StaleFeatureCache(f"{manifest_path} is not a rablip feature cache manifest")
        if manifest.get("key") != key:
            raise StaleFeatureCache(f"{directory} was built for another vision encoder, image processor or KB store "
                                    f"(key {str(manifest.get('key'))[:12]}, expected {key[:12]})")
        for name in (FEATURES_FILE, ROWS_FILE):
            expected = manifest.get("file_bytes", {}).get(name)
            if _file_size(directory / name) != expected:
                raise StaleFeatureCache(f"{directory / name} has {_file_size(directory / name)} bytes, the manifest "
                                        f"says {expected}: the cache is damaged or incomplete")
        try:
            features = np.load(directory / FEATURES_FILE, mmap_mode="r", allow_pickle=False)
            rows = np.load(directory / ROWS_FILE, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise StaleFeatureCache(f"{directory} cannot be read ({err})") from None
        if list(features.shape) != manifest.get("shape") or features.dtype != np.float16:
            raise StaleFeatureCache(f"{directory / FEATURES_FILE} is {features.dtype} {list(features.shape)}, the "
                                    f"manifest says float16 {manifest.get('shape')}")
        if rows.shape != (len(kb),) or rows.dtype != np.int64:
            raise StaleFeatureCache(f"{directory / ROWS_FILE} does not map the {len(kb)} rows of the KB store")
        return cls(directory, kb, key, manifest, features, rows)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def __reduce__(self) -> tuple[Any, ...]:
        return (FeatureCache.open, (str(self.directory), self.kb, self.key))

    def features_of(self, item_ids: list[str]) -> list[torch.Tensor | None]:
        """Per id, the cached (P, D) float16 features of the item's image, or None when none is cached."""
        cache_rows = self.rows[self.kb.rows_of(item_ids)] if item_ids else []
        return [None if row < 0 else torch.from_numpy(np.array(self.features[row])) for row in cache_rows]


def image_item_rows(kb: KBStore) -> np.ndarray:
    """The store rows of the items whose image fills an image slot, in row order."""
    rows: list[int] = []
    row = 0
    for batch in kb.iter_batches(4096):
        rows.extend(row + offset for offset, item in enumerate(batch) if item_has_image(item))
        row += len(batch)
    return np.asarray(rows, dtype=np.int64)


@torch.no_grad()
def _encode(model: torch.nn.Module, pixels: torch.Tensor, device: torch.device) -> np.ndarray:
    """The vision tower's patch features of ``pixels`` as float16 (refusing values float16 cannot hold)."""
    features = model.encode_images(pixels.to(device)).float()
    if not torch.isfinite(features).all() or float(features.abs().max()) > FLOAT16_MAX:
        raise RablipError("the vision encoder's features are not finite or exceed the float16 range; the feature "
                          "cache cannot hold them. Set train.feature_cache=false.")
    nonzero = features[features != 0].abs()
    if nonzero.numel() and float((nonzero < FLOAT16_TINY).float().mean()) > 0.01:
        log.warning("over 1%% of the vision encoder's features are below %.1e, where float16 loses precision: the "
                    "cached features will differ from the computed ones by more than float16 rounding (is the vision "
                    "tower initialised?)", FLOAT16_TINY)
    return features.cpu().numpy().astype(np.float16)


class _Build:
    """The files of a build directory, new or resumed."""

    def __init__(self, work: Path, key: CacheKey, kb: KBStore, model: torch.nn.Module, image_processor: Any,
                 device: torch.device) -> None:
        self.work = work
        try:
            progress = read_json(work / PROGRESS_FILE, "feature cache build progress")
        except RablipError:  # no build to resume, or its progress file is unreadable
            progress = {}
        if isinstance(progress, dict) and progress.get("key") == key.digest:
            try:
                self.item_rows = np.load(work / ITEM_ROWS_FILE, allow_pickle=False)
                self.features = np.load(work / FEATURES_FILE, mmap_mode="r+", allow_pickle=False)
                self.rows = np.load(work / ROWS_FILE, mmap_mode="r+", allow_pickle=False)
                self.done = int(progress["rows_done"])
                shape_ok = list(self.features.shape) == progress["shape"] == [len(self.item_rows), *progress["shape"][1:]]
                if shape_ok and self.rows.shape == (len(kb),) and 0 <= self.done <= len(self.item_rows):
                    log.info("resuming the feature cache build in %s at %d of %d images", work, self.done,
                             self.features.shape[0])
                    return
            except (OSError, ValueError, KeyError, TypeError):
                pass
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        self.item_rows = image_item_rows(kb)
        np.save(work / ITEM_ROWS_FILE, self.item_rows)
        height, width = image_size(image_processor)
        probe = _encode(model, torch.zeros(1, 3, height, width), device)
        shape = (len(self.item_rows), *probe.shape[1:])
        self.features = np.lib.format.open_memmap(work / FEATURES_FILE, mode="w+", dtype=np.float16, shape=shape)
        self.rows = np.lib.format.open_memmap(work / ROWS_FILE, mode="w+", dtype=np.int64, shape=(len(kb),))
        self.rows[:] = -1
        self.done = 0
        self.save_progress(key)

    def save_progress(self, key: CacheKey) -> None:
        """Flush the written rows, then record how far the build got."""
        self.features.flush()
        self.rows.flush()
        atomic_write_json(self.work / PROGRESS_FILE, {"key": key.digest, "shape": list(self.features.shape),
                                                      "rows_done": self.done})


def _check_replaceable(directory: Path) -> None:
    """Refuse to build over a non-empty directory that is not a feature cache (has no manifest)."""
    if directory.exists() and not (directory / MANIFEST_NAME).is_file() and any(directory.iterdir()):
        raise ConfigError(f"{directory} is not empty and holds no {MANIFEST_NAME}: it is not a feature cache, so "
                          "it will not be replaced. Choose another train.feature_cache_dir.")


def build_feature_cache(directory: str | os.PathLike, model: torch.nn.Module, image_processor: Any, kb: KBStore,
                        key: CacheKey, *, on_bad_image: str = "error", batch_size: int = 64,
                        device: torch.device | str | None = None, show_progress: bool = True) -> Path:
    """Encode every image item of ``kb`` with ``model``'s vision tower into a new cache at ``directory``.

    Images are decoded as fine-tuning decodes them (``ImageLoader`` under the KB root with the
    ``on_bad_image`` policy; a skipped image gets no row) and preprocessed by ``image_processor``;
    ``batch_size`` images go through the tower at a time on ``device`` (default: where the tower is).
    """
    directory = Path(directory)
    _check_replaceable(directory)
    device = torch.device(device) if device is not None else next(model.vision_model.parameters()).device
    home = next(model.vision_model.parameters()).device
    was_training = model.vision_model.training
    model.vision_model.to(device).eval()
    started = time.monotonic()
    work = directory.with_name(directory.name + ".building")
    loader = ImageLoader(kb.root, on_bad_image)
    try:
        # A fixed work directory, kept when the build is interrupted: the next build resumes there.
        with build_beside(directory, MANIFEST_NAME, work=work,
                          aside=directory.with_name(directory.name + ".old")) as artefact:
            build = _Build(artefact.path, key, kb, model, image_processor, device)
            total = len(build.item_rows)
            with tqdm(total=total, initial=build.done, disable=not show_progress, desc="feature cache",
                      unit=" images") as bar:
                while build.done < total:
                    stop = min(total, build.done + batch_size)
                    store_rows = build.item_rows[build.done:stop]
                    items = kb.get_many(kb.ids_at(store_rows))
                    images = [loader.load(item.image, item.id) for item in items]
                    kept = [i for i, image in enumerate(images) if image is not None]
                    block = np.zeros((stop - build.done, *build.features.shape[1:]), dtype=np.float16)
                    if kept:
                        pixels = image_processor(images=[images[i] for i in kept], return_tensors="pt")["pixel_values"]
                        block[kept] = _encode(model, pixels, device)
                    build.features[build.done:stop] = block
                    for offset, store_row in enumerate(store_rows):
                        build.rows[store_row] = build.done + offset if images[offset] is not None else -1
                    bar.update(stop - build.done)
                    build.done = stop
                    build.save_progress(key)
            manifest = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "key": key.digest, "key_parts": key.parts,
                        "shape": list(build.features.shape), "dtype": "float16", "images": total,
                        "skipped_images": len(loader.report().skipped), "store_items": len(kb),
                        "built_seconds": round(time.monotonic() - started, 3)}
            del build  # close the memory maps before the files move
            for name in (PROGRESS_FILE, ITEM_ROWS_FILE):
                (work / name).unlink()
            manifest["file_bytes"] = {name: _file_size(work / name) for name in (FEATURES_FILE, ROWS_FILE)}
            artefact.commit(manifest)  # the manifest last (its presence marks the cache finished), then the rename
    finally:
        model.vision_model.to(home).train(was_training)
    log.info("feature cache of %d item images built at %s in %.1f s", total, directory, time.monotonic() - started)
    return directory


def open_or_build(directory: str | os.PathLike, model: torch.nn.Module, image_processor: Any, kb: KBStore, *,
                  build: bool = True, **build_options: Any) -> FeatureCache:
    """The cache at ``directory`` for this vision tower, processor and store: opened when it is intact
    and its key matches, otherwise (re)built when ``build`` (a process that must not build raises).
    ``build_options`` go to :func:`build_feature_cache`."""
    key = cache_key(model, image_processor, kb)
    try:
        cache = FeatureCache.open(directory, kb, key.digest)
    except StaleFeatureCache as why:
        if not build:
            raise RablipError(f"no usable feature cache at {directory}: {why}. The main process builds it.") from None
        if Path(directory).exists():
            log.warning("rebuilding the feature cache: %s", why)
        build_feature_cache(directory, model, image_processor, kb, key, **build_options)
        return FeatureCache.open(directory, kb, key.digest)
    log.info("using the feature cache at %s (%d item images)", directory, len(cache))
    return cache


def feature_cache_dir(cfg: Config) -> Path:
    """``train.feature_cache_dir``, or ``<data.kb.store_dir>.vision_features`` beside the store."""
    if cfg.train.feature_cache_dir:
        return Path(cfg.train.feature_cache_dir)
    store = Path(cfg.data.kb.store_dir)
    return store.with_name(store.name + ".vision_features")


def cache_for_run(cfg: Config, model: torch.nn.Module, image_processor: Any, kb: KBStore, *,
                  is_main_process: bool, device: torch.device | str | None = None) -> FeatureCache | None:
    """The run's feature cache when ``train.feature_cache`` is on (None otherwise); only the main
    process builds it. A trainable vision encoder is refused: its features change every step."""
    if not cfg.train.feature_cache:
        return None
    if "vision_model" in model.config.trainable_modules:
        raise ConfigError("train.feature_cache=true caches the frozen vision encoder's features, but model.trainable "
                          "lists vision_model, so they would change every step. Remove vision_model from "
                          "model.trainable or set train.feature_cache=false.")
    return open_or_build(feature_cache_dir(cfg), model, image_processor, kb, build=is_main_process,
                         on_bad_image=cfg.data.on_bad_image, batch_size=cfg.train.feature_cache_batch_size,
                         device=device, show_progress=is_main_process)
