"""Entry-point wrapper: user errors become one message and exit code 2, not a traceback."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from rablip.errors import EXIT_USER_ERROR, RablipError
from rablip.utils.dist import groups_closed


def run_main(main: Callable[[list[str]], int | None], argv: list[str] | None = None) -> None:
    """Run ``main(argv)``; a :class:`RablipError` prints ``error: ...`` and exits 2.

    ``--debug`` anywhere on the command line shows the traceback instead.
    """
    argv = sys.argv[1:] if argv is None else argv
    # transformers 5 swaps in Hub kernels when the `kernels` package is installed, fetching them from the Hub
    # when a model is loaded or switched to eval mode; offline (clusters, the GPU image this was found on) that
    # is a crash. rablip runs offline-first: Hub kernels stay off unless USE_HUB_KERNELS=YES is set.
    os.environ.setdefault("USE_HUB_KERNELS", "NO")
    closed_before = groups_closed()
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
    if groups_closed() > closed_before:  # this job ran on a process group (not an earlier one in this process)
        exit_without_teardown(code or 0)
    raise SystemExit(code or 0)


def exit_without_teardown(code: int) -> None:
    """Flush what the process printed and logged, then end it without the interpreter's teardown.

    A rank whose job ran on a process group ends this way. A gloo worker thread may still be releasing a
    finished collective (a barrier keeps the gathers it waited on) when the main thread returns; releasing
    tensors that Python has seen takes the GIL, which a finalizing interpreter no longer hands out, and
    the thread's exit aborts the process (SIGABRT, "terminate called without an active exception") after
    the job succeeded. Every file a job writes is closed by then (writers use ``with`` blocks; wandb is
    finished by :class:`rablip.training.metrics_log.MetricsLog`)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
