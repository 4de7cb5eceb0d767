"""Logging that prints on the main process only."""

from __future__ import annotations

import logging
import sys

from rablip.utils.dist import is_main_process

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _MainProcessFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return is_main_process() or record.levelno >= logging.WARNING


def get_logger(name: str = "rablip") -> logging.Logger:
    """A logger under ``rablip`` whose info messages appear on the main process only.

    Warnings and errors print on every process (they may be rank-specific).
    """
    root = logging.getLogger("rablip")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        handler.addFilter(_MainProcessFilter())
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    return logging.getLogger(name if name.startswith("rablip") else f"rablip.{name}")
