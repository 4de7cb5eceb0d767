"""The command line every entry point shares: ``--config PATH [key=value ...] [--print-config]``."""

from __future__ import annotations

import argparse
import sys

from rablip.config.load import load_config, to_yaml
from rablip.config.schema import Config


def build_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, metavar="PATH",
                        help="YAML config (may include others through 'defaults:')")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override any config key, e.g. train.lr=1e-4 retrieval.k=5 model.trainable=[qformer]")
    parser.add_argument("--print-config", action="store_true",
                        help="print the fully resolved config as YAML and exit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return parser


def parse_config(argv: list[str] | None = None, description: str = "") -> Config:
    """Parse the command line and return the validated config.

    With ``--print-config`` the resolved YAML is printed and the process exits 0. A bad config
    raises :class:`rablip.errors.ConfigError` before any work is done (entry points turn it into
    exit code 2 through :func:`rablip.utils.cli.run_main`).
    """
    args = build_parser(description).parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        sys.stdout.write(to_yaml(cfg))
        sys.stdout.flush()
        raise SystemExit(0)
    return cfg
