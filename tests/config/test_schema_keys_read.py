"""Every key of the config schema is read by some code under rablip/: a key no code reads would pass
validation and silently do nothing.

A key ``section.name`` counts as read when some module accesses the attribute ``name`` on something
that is a ``section``: an attribute access ending in ``.section`` (``cfg.train.lr``), a name bound
to one (``tc = cfg.train``; ``tc.lr``), a parameter annotated with the section's class
(``split: SplitConfig``; ``split.path``), or ``getattr(<section>, ...)``. Sections sharing a class
(``data.train``, ``data.val``, ...) share their reads.
"""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

from rablip.config.schema import Config, TrainConfig

PACKAGE = Path(__file__).resolve().parents[2] / "rablip"
SCHEMA_FILES = {PACKAGE / "config" / name
                for name in ("schema.py", "data_schema.py", "eval_schema.py", "retrieval_schema.py")}


def schema_classes(root: type = Config) -> tuple[dict[str, set[type]], dict[str, type], list[tuple[str, type, str]]]:
    """(section field name -> classes, class name -> class, every leaf key as (dotted key, class, name))."""
    by_field: dict[str, set[type]] = {}
    by_name: dict[str, type] = {}
    leaves: list[tuple[str, type, str]] = []

    def walk(cls: type, prefix: str) -> None:
        by_name[cls.__name__] = cls
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind = hints[f.name]
            if dataclasses.is_dataclass(kind):
                by_field.setdefault(f.name, set()).add(kind)
                walk(kind, f"{prefix}{f.name}.")
            else:
                leaves.append((f"{prefix}{f.name}", cls, f.name))

    walk(root, "")
    return by_field, by_name, leaves


class ReadCollector(ast.NodeVisitor):
    """Collects (class, attribute) reads of schema sections in one module."""

    def __init__(self, by_field: dict[str, set[type]], by_name: dict[str, type]) -> None:
        self.by_field, self.by_name = by_field, by_name
        self.aliases: dict[str, set[type]] = {}
        self.reads: set[tuple[type, str]] = set()

    def classes_of(self, node: ast.AST) -> set[type]:
        if isinstance(node, ast.Attribute):
            return self.by_field.get(node.attr, set())
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id, set())
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "getattr" and node.args:
            owners = self.classes_of(node.args[0])
            hints = [typing.get_type_hints(c) for c in owners]
            return {kind for h in hints for kind in h.values() if dataclasses.is_dataclass(kind)}
        return set()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        for arg in [*node.args.args, *node.args.kwonlyargs]:
            annotation = ast.unparse(arg.annotation) if arg.annotation is not None else ""
            for name, cls in self.by_name.items():
                if name in annotation.replace('"', "").split(" | "):
                    self.aliases.setdefault(arg.arg, set()).add(cls)
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Assign(self, node: ast.Assign) -> None:
        classes = self.classes_of(node.value)
        for target in node.targets:
            if isinstance(target, ast.Name) and classes:
                self.aliases.setdefault(target.id, set()).update(classes)
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        for cls in self.classes_of(node.value):
            self.reads.add((cls, node.attr))
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if getattr(node.func, "id", "") == "getattr" and len(node.args) > 1:
            name = node.args[1]
            for cls in self.classes_of(node.args[0]):
                if isinstance(name, ast.Constant):
                    self.reads.add((cls, name.value))
                else:  # getattr(section, variable): any of its keys
                    self.reads.update((cls, f.name) for f in dataclasses.fields(cls))
        self.generic_visit(node)


def unread_keys(root: type = Config) -> list[str]:
    """The leaf keys of the schema rooted at ``root`` that no module under rablip/ reads."""
    by_field, by_name, leaves = schema_classes(root)
    reads: set[tuple[type, str]] = set()
    for path in PACKAGE.rglob("*.py"):
        if path in SCHEMA_FILES:
            continue
        collector = ReadCollector(by_field, by_name)
        collector.visit(ast.parse(path.read_text(encoding="utf-8")))
        reads |= collector.reads
    return [key for key, cls, name in leaves if (cls, name) not in reads]


def test_every_schema_key_is_read_by_some_code():
    assert unread_keys() == [], "schema keys no code under rablip/ reads: remove them or read them"


@dataclasses.dataclass
class _Probe:
    never_read_anywhere: int = 0


@dataclasses.dataclass
class _ProbeConfig:
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    probe: _Probe = dataclasses.field(default_factory=_Probe)


def test_the_check_finds_a_key_nobody_reads_and_not_one_that_is_read():
    unread = unread_keys(_ProbeConfig)
    assert "probe.never_read_anywhere" in unread
    assert "train.lr" not in unread and "train.max_steps" not in unread
