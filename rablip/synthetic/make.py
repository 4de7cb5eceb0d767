"""Build everything the synthetic experiments read, explicitly (``scripts/make_synthetic.py``, the demo
and the tests call :func:`make_synthetic`): the world, its knowledge-base store, the tiny generator
(tokenizers trained on the world, warm-ups), the extra pre-training pairs and, when asked, the tiny LLaVA of
the RORA configs, all inside one dir that ``data.root`` of ``configs/data/synthetic.yaml`` points at
(layout: :mod:`rablip.synthetic.files`).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path

from rablip.config.schema import KBConfig
from rablip.data.kb_build import build_kb_from_config
from rablip.errors import ConfigError, DataError
from rablip.synthetic.describing import write_invented_pairs
from rablip.synthetic.files import (
    EXTRA_PAIRS_DIR,
    KB_NAME,
    KB_STORE_DIR,
    TINY_CHECKPOINT_DIR,
    TINY_LLAVA_DIR,
    load_manifest,
)
from rablip.synthetic.settings import SyntheticSettings, settings_yaml
from rablip.synthetic.tiny_llava import build_world_llava
from rablip.synthetic.tiny_model import build_tiny_generator
from rablip.synthetic.world import WorldSettings, build_world
from rablip.utils.artefacts import build_beside
from rablip.utils.logging import get_logger

log = get_logger("rablip.synthetic")
PARTS = ("world", "kb", "checkpoint", "extra_pairs")
"""What :func:`make_synthetic` builds by default, in build order (each part needs the world)."""
OPTIONAL_PARTS = ("llava",)
"""What it builds only when asked, after those: ``llava``, the tiny LLaVA of the RORA configs
(``tiny-llava/``, configs/model/tiny_llava.yaml)."""
SETTINGS_NAME = "make_synthetic.yaml"
"""The settings of the last build, written into the world dir."""


def make_synthetic(out_dir: str | Path, settings: SyntheticSettings | None = None, *, parts=PARTS,
                   overwrite: bool = False) -> dict[str, float]:
    """Build ``parts`` (default: all of :data:`PARTS`; :data:`OPTIONAL_PARTS` when named) into ``out_dir``
    and return seconds per part.

    Without ``"world"`` the world must already be there; a part that is already there is a DataError
    unless ``overwrite`` (a non-empty ``out_dir`` too, when the world is built). The same settings give
    the same world and extra-pairs bytes.
    """
    settings = settings or SyntheticSettings()
    out_dir = Path(out_dir)
    known = (*PARTS, *OPTIONAL_PARTS)
    unknown = [part for part in parts if part not in known]
    if unknown:
        raise ConfigError(f"make_synthetic: unknown part(s) {unknown}; choose from {', '.join(known)}")
    seconds: dict[str, float] = {}
    for part in (p for p in known if p in parts):
        started = time.perf_counter()
        if part == "world":
            build_world(out_dir, WorldSettings(seed=settings.seed, **asdict(settings.world)), overwrite=overwrite)
        else:
            load_manifest(out_dir)  # the world must be there
            BUILDERS[part](out_dir, settings, overwrite)
        seconds[part] = time.perf_counter() - started
        log.info("synthetic %s built in %.1f s", part, seconds[part])
    (out_dir / SETTINGS_NAME).write_text(settings_yaml(settings), encoding="utf-8")
    return seconds


def _replace(path: Path, overwrite: bool) -> None:
    if path.exists():
        if not overwrite:
            raise DataError(f"{path} exists; pass overwrite (--overwrite) to build it again")
        shutil.rmtree(path)


def make_kb_store(out_dir: Path, settings: SyntheticSettings, overwrite: bool = False) -> None:
    """The world's knowledge-base store (``kb_store/``), built by the core's KB build from ``kb.jsonl``."""
    _replace(out_dir / KB_STORE_DIR, overwrite)
    kb = KBConfig(format="jsonl", path=str(out_dir / KB_NAME), root=str(out_dir), store_dir=str(out_dir / KB_STORE_DIR))
    build_kb_from_config(kb, show_progress=False)


def make_checkpoint(out_dir: Path, settings: SyntheticSettings, overwrite: bool = False) -> None:
    """The warmed-up tiny generator checkpoint (``tiny-instructblip-llama/``)."""
    _replace(out_dir / TINY_CHECKPOINT_DIR, overwrite)
    build_tiny_generator(out_dir, out_dir / TINY_CHECKPOINT_DIR, settings)


def make_llava(out_dir: Path, settings: SyntheticSettings, overwrite: bool = False) -> None:
    """The tiny LLaVA generator of the RORA configs (``tiny-llava/``; :mod:`rablip.synthetic.tiny_llava`)."""
    _replace(out_dir / TINY_LLAVA_DIR, overwrite)
    build_world_llava(out_dir, out_dir / TINY_LLAVA_DIR, settings)


def make_extra_pairs(out_dir: Path, settings: SyntheticSettings, overwrite: bool = False) -> None:
    """``extra_pairs/``: ``extra_pairs.count`` invented-creature pairs (none when 0), built beside and
    renamed into place, ``settings.json`` last (:func:`rablip.utils.artefacts.build_beside`)."""
    target = out_dir / EXTRA_PAIRS_DIR
    _replace(target, overwrite)
    if not settings.extra_pairs.count:
        return
    with build_beside(target, "settings.json") as build:
        write_invented_pairs(out_dir, build.path, settings.extra_pairs.count, settings.seed,
                             settings.extra_pairs.scene_share)
        build.commit({"count": settings.extra_pairs.count, "seed": settings.seed,
                      "scene_share": settings.extra_pairs.scene_share})


BUILDERS = {"kb": make_kb_store, "checkpoint": make_checkpoint, "extra_pairs": make_extra_pairs, "llava": make_llava}
