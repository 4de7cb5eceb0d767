"""The manifest of an index directory: what was built from what, and the checks made on load.

``manifest.json`` is the last file written into an index directory. It records the encoder
fingerprint, width, metric, item count, index type and build parameters, the faiss version, the
sha256 of ``index.faiss`` and of the ids file, and the embeddings the index was built from (used for
exact re-ranking). :func:`verify_manifest` turns every mismatch into a
:class:`~rablip.errors.RablipError` that says what differs, in which file, and what to do; with
``allow_foreign=True`` the same findings become warnings.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from rablip.errors import RablipError
from rablip.utils.io import read_json
from rablip.utils.logging import get_logger

MANIFEST_NAME = "manifest.json"
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.txt"
INDEX_FORMAT = "rablip-faiss-index"
INDEX_FORMAT_VERSION = 1
METRIC = "inner_product"

_logger = get_logger("rablip.retrieval.index")


def sha256_of_file(path: str | os.PathLike, block_bytes: int = 8 * 2**20) -> str:
    """Hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(block_bytes):
            digest.update(block)
    return digest.hexdigest()


class IndexCheckError(RablipError):
    """An index directory that failed a load check (missing manifest, foreign encoder, bad checksum)."""


def _complain(message: str, allow_foreign: bool) -> None:
    if not allow_foreign:
        raise IndexCheckError(message)
    _logger.warning("%s Loading anyway because allow_foreign=True.", message)


def read_manifest(directory: Path, allow_foreign: bool) -> dict[str, Any] | None:
    """The parsed manifest, or None for a manifest-less directory accepted with ``allow_foreign``."""
    path = directory / MANIFEST_NAME
    if not directory.is_dir():
        raise IndexCheckError(f"index directory not found: {directory}. Build one with scripts/build_index.py.")
    if not path.is_file():
        _complain(
            f"index directory {directory} has no {MANIFEST_NAME}: its build did not finish, or it was not "
            "made by rablip. Rebuild it with scripts/build_index.py.",
            allow_foreign,
        )
        return None
    manifest = read_json(path, "index manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != INDEX_FORMAT:
        raise IndexCheckError(f"{path} is not a rablip index manifest (format {INDEX_FORMAT!r} expected).")
    if manifest.get("version") != INDEX_FORMAT_VERSION:
        raise IndexCheckError(
            f"{path} has index format version {manifest.get('version')!r}; this rablip reads version "
            f"{INDEX_FORMAT_VERSION}. Rebuild the index with scripts/build_index.py."
        )
    return manifest


def verify_manifest(directory: Path, manifest: dict[str, Any], *, expected_fingerprint: str | None,
                    allow_foreign: bool) -> None:
    """Check the encoder fingerprint and the checksums of the index and ids files."""
    manifest_path = directory / MANIFEST_NAME
    built_with = manifest.get("encoder_fingerprint", "")
    if expected_fingerprint is not None and built_with != expected_fingerprint:
        _complain(
            f"index {directory} was built from embeddings of encoder {built_with or '(unrecorded)'!r} "
            f"(see {manifest_path}), but the model in use has fingerprint {expected_fingerprint!r}. "
            "Re-encode the knowledge base with this model and rebuild the index.",
            allow_foreign,
        )
    for file_key, hash_key in (("index_file", "index_sha256"), ("ids_file", "ids_sha256")):
        name = manifest.get(file_key)
        if not name:
            continue
        path = directory / name
        if not path.is_file():
            raise IndexCheckError(f"{path} is missing but {manifest_path} lists it. Rebuild the index.")
        actual = sha256_of_file(path)
        if actual != manifest.get(hash_key):
            _complain(
                f"checksum mismatch for {path}: sha256 {actual[:16]}... but {manifest_path} records "
                f"{str(manifest.get(hash_key))[:16]}... The file was changed or damaged after the build; "
                "rebuild the index with scripts/build_index.py.",
                allow_foreign,
            )
