"""The bad-input table's machinery: a row (:class:`BadInput`), the entry points it names, and the check
every row must pass (:func:`check_bad_input`): exit code 2, one ``error:`` line holding the row's
fragments (what, where, what to do), no traceback, nothing that existed changed, nothing left behind
but what the row allows. The rows live in the ``test_*bad_inputs.py`` files beside this one."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from rablip.benchmarks.cli import score_main
from rablip.retrieval import search
from rablip.utils.cli import run_main
from tests.reliability.conftest import ROOT, entry_main

BASE_CONFIG = str(ROOT / "configs" / "base.yaml")


@dataclass(frozen=True)
class BadInput:
    """One row of the table."""

    name: str
    entry: str
    """Key of :data:`ENTRY_POINTS`."""
    build: Callable[..., list[str]]
    """``build(tmp)`` (or ``build(tmp, world)`` for ``finetune`` data cases) writes the files, returns argv."""
    says: tuple[str, ...]
    """Fragments of the error line (``{tmp}`` is the case's directory): what, where, what to do."""
    may_create: tuple[str, ...] = ()
    """Paths under ``tmp`` that may appear (relative)."""
    needs_world: bool = False
    one_line: bool = True
    """False where the message lists things on lines of their own (the keys of a checkpoint)."""


ENTRY_POINTS: dict[str, Callable[[], Callable[[list[str]], int | None]]] = {
    "finetune": lambda: entry_main("run_finetune.py"),
    "eval": lambda: entry_main("run_eval.py"),
    "build_kb": lambda: entry_main("scripts/build_kb.py"),
    "build_index": lambda: entry_main("scripts/build_index.py"),
    "score": lambda: score_main,
    "search": lambda: search.main,
}


def write_file(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def jsonl(*records: dict) -> str:
    """JSON Lines text of ``records``."""
    return "".join(json.dumps(record) + "\n" for record in records)


def snapshot(root: Path) -> dict[Path, bytes | None]:
    """Every path under ``root``: file contents, ``None`` for directories."""
    return {p: (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def check_bad_input(case: BadInput, argv: list[str], tmp: Path, capsys) -> None:
    """Run ``case``'s entry point on ``argv`` (its files under ``tmp``) and assert what every row must hold."""
    before = snapshot(tmp)
    main = ENTRY_POINTS[case.entry]()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(main, argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err[-3000:]
    assert "Traceback" not in err, err
    message = err[err.index("error: "):]
    assert err.count("error: ") == 1 and (message.count("\n") == 1 or not case.one_line), message
    for fragment in case.says:
        assert fragment.format(tmp=tmp) in message, f"{fragment.format(tmp=tmp)!r} not in {message!r}"
    after = snapshot(tmp)
    changed = [str(p) for p, content in before.items() if after.get(p, b"<gone>") != content]
    assert not changed, f"pre-existing files changed or removed: {changed}"
    new = {str(p.relative_to(tmp)) for p in after if p not in before}
    allowed = {str(p.relative_to(tmp)) for pattern in case.may_create for p in tmp.glob(pattern)}
    assert new <= allowed, f"left behind: {sorted(new - allowed)}"
