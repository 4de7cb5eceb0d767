"""Build an artefact beside its target, write its manifest last, rename it into place.

rablip's on-disk artefacts (knowledge-base store, vision feature cache, FAISS index directory,
embedding shards, retrieval cache) each carry a manifest file whose presence marks the artefact
finished; every reader refuses an artefact without one. This module is the one way they are written.

:func:`build_beside` is for an artefact that is a directory built whole:

1. the caller writes every file into ``build.path``, a work directory beside the target (same file
   system, so the final rename is atomic), never into the target itself;
2. :meth:`ArtefactBuild.commit` writes the manifest (atomically, :func:`write_manifest`) after every
   other file, then renames the work directory onto the target with
   :func:`~rablip.utils.io.replace_directory`: an older artefact there is renamed aside first and
   deleted only once the new one is in place.

A process killed at any point leaves, at the target, the old artefact, the new one or nothing (the
old one then waits whole at the aside path), never a directory with a manifest and missing files.
By default the work directory is a fresh ``.<target name>.building-XXXXXXXX`` (with the mode a plain
``mkdir`` gives) that is deleted when the block fails; a build that resumes after a crash passes its
own fixed ``work`` directory, which is kept on failure so that the next build goes on from it.

:func:`rewrite_in_place` is for an artefact whose files live where readers find them and are
replaced one by one (each with :func:`~rablip.utils.io.atomic_write`): the manifest is removed on
entry, so that no reader trusts it while the files change, and :meth:`ArtefactBuild.commit` writes
it again last. An artefact that only ever gains files (embedding shards, whose older manifest stays
true while a shard is added) calls :func:`write_manifest` after the new files instead.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rablip.utils.io import PathLike, atomic_write_json, replace_directory


def write_manifest(directory: PathLike, name: str, manifest: Mapping[str, Any]) -> Path:
    """Write ``manifest`` as JSON to ``directory/name`` atomically and return its path.

    Call it after every other file of the artefact is complete: its presence marks them finished.
    An object that cannot be serialized writes nothing.
    """
    path = Path(directory) / name
    atomic_write_json(path, manifest)
    return path


@dataclass
class ArtefactBuild:
    """An artefact being written: files go into :attr:`path`; :meth:`commit` finishes it."""

    target: Path
    """Where readers find the finished artefact."""
    path: Path
    """The directory the caller writes into: the work directory, or the target when in place."""
    manifest_name: str
    """File name of the manifest inside the artefact directory."""
    aside: Path | None
    """Where an older artefact waits while the new one is renamed in; None when written in place."""
    committed: bool = False

    def commit(self, manifest: Mapping[str, Any]) -> Path:
        """Write ``manifest`` last, then (unless in place) rename the work directory onto the target.

        Returns the target. Call it once, as the last step of the block, after every other file is
        written and closed.
        """
        if self.committed:
            raise RuntimeError(f"the artefact {self.target} is already committed")
        write_manifest(self.path, self.manifest_name, manifest)
        if self.aside is not None:
            replace_directory(self.path, self.target, self.aside)
        self.committed = True
        return self.target


@contextlib.contextmanager
def build_beside(target: PathLike, manifest_name: str, *, work: PathLike | None = None,
                 aside: PathLike | None = None) -> Iterator[ArtefactBuild]:
    """Build the directory artefact ``target`` beside it; the block must end with ``build.commit(manifest)``.

    ``work`` is a fixed work directory (created if missing and kept when the block fails, for a
    resumable build); by default a fresh one is made beside the target and deleted on failure.
    ``aside`` is where an older artefact waits during the rename (default: ``<work>.old``).
    A block that ends without committing is a RuntimeError (its fresh work directory is deleted).
    The target's parent directory is created.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fresh = work is None
    if work is None:
        work_dir = _fresh_directory(target.parent, f".{target.name}.building-")
    else:
        work_dir = Path(work)
        work_dir.mkdir(parents=True, exist_ok=True)
    aside_dir = Path(aside) if aside is not None else work_dir.with_name(work_dir.name + ".old")
    build = ArtefactBuild(target, work_dir, manifest_name, aside_dir)
    try:
        yield build
        if not build.committed:
            raise RuntimeError(f"the build of {target} ended without commit(); nothing was written there")
    except BaseException:
        if fresh and not build.committed:
            shutil.rmtree(work_dir, ignore_errors=True)
        raise


@contextlib.contextmanager
def rewrite_in_place(directory: PathLike, manifest_name: str) -> Iterator[ArtefactBuild]:
    """Rewrite the artefact whose manifest is ``directory/manifest_name`` where it lies.

    The manifest is removed on entry; the block replaces the artefact's files (each atomically) in
    ``build.path`` (= ``directory``) and ends with ``build.commit(manifest)``. A block that fails or
    ends without committing leaves no manifest, so readers treat the artefact as unfinished.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / manifest_name).unlink(missing_ok=True)
    _fsync_directory(directory)
    build = ArtefactBuild(directory, directory, manifest_name, aside=None)
    yield build
    if not build.committed:
        raise RuntimeError(f"the rewrite of {directory / manifest_name} ended without commit()")


def _fresh_directory(parent: Path, prefix: str) -> Path:
    """A new, uniquely named directory ``parent/<prefix>XXXXXXXX`` with the mode a plain mkdir gives
    (``tempfile.mkdtemp`` would make it 0700, and the renamed artefact unreadable to others)."""
    for _ in range(100):
        candidate = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"no free name {prefix}XXXXXXXX in {parent}")


def _fsync_directory(directory: Path) -> None:
    """Make the manifest's removal durable before the files change; best effort."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
