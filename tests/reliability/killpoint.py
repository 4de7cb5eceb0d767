"""Run a Python script and SIGKILL it at a precise moment: before or after the n-th call of a function.

    python tests/reliability/killpoint.py --target MODULE.ATTR --match REGEX [--nth N] [--after] \\
        -- SCRIPT [ARGS ...]

``MODULE.ATTR`` is replaced by a wrapper; a call whose positional arguments, joined by spaces,
match ``REGEX`` counts, and on the ``N``-th counted call the process sends itself SIGKILL, before
the real function runs or (``--after``) once it has returned. Nothing is cleaned up, no handler
runs: what is left on disk is what a power cut or the OOM killer would leave. ``SCRIPT`` then runs
as ``__main__`` with ``ARGS``, exactly as ``python SCRIPT ARGS`` would run it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import runpy
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def install(target: str, pattern: str, nth: int, after: bool) -> None:
    """Wrap ``target`` so that its ``nth`` call matching ``pattern`` kills this process."""
    module_name, attribute = target.rsplit(".", 1)
    module = importlib.import_module(module_name)
    original: Callable[..., Any] = getattr(module, attribute)
    regex = re.compile(pattern)
    seen = 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal seen
        if regex.search(" ".join(str(arg) for arg in args)):
            seen += 1
            if seen == nth and not after:
                os.kill(os.getpid(), signal.SIGKILL)
            result = original(*args, **kwargs)
            if seen == nth:
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        return original(*args, **kwargs)

    setattr(module, attribute, wrapper)


def main(argv: list[str]) -> None:
    """Install the kill point, then run the script as ``__main__``."""
    split = argv.index("--")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="MODULE.ATTR to wrap, e.g. os.replace")
    parser.add_argument("--match", default="", help="regex over the call's positional arguments")
    parser.add_argument("--nth", type=int, default=1, help="which matching call kills (1-based)")
    parser.add_argument("--after", action="store_true", help="kill once the call has returned")
    args = parser.parse_args(argv[:split])
    script, script_args = argv[split + 1], argv[split + 2:]
    sys.path.insert(0, str(ROOT))
    install(args.target, args.match, args.nth, args.after)
    sys.argv = [script, *script_args]
    sys.path.insert(0, str(Path(script).resolve().parent))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
