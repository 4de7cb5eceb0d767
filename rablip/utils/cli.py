"""Entry-point wrapper: user errors become one message and exit code 2, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from rablip.errors import EXIT_USER_ERROR, RablipError


def run_main(main: Callable[[list[str]], int | None], argv: list[str] | None = None) -> None:
    """Run ``main(argv)``; a :class:`RablipError` prints ``error: ...`` and exits 2.

    ``--debug`` anywhere on the command line shows the traceback instead.
    """
    argv = sys.argv[1:] if argv is None else argv
    try:
        code = main(argv)
    except RablipError as exc:
        if "--debug" in argv:
            raise
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    raise SystemExit(code or 0)


def run_stage(argv: list[str], description: str, stage: str) -> int:
    """Parse the config and run the stage function ``stage`` ("package.module:function").

    The stage receives the validated config; the run directory is prepared by the stage itself
    (it knows which process is the main one).
    """
    import importlib

    from rablip.config.cli import parse_config

    cfg = parse_config(argv, description)
    module_name, function_name = stage.split(":")
    return getattr(importlib.import_module(module_name), function_name)(cfg) or 0
