"""Command-line interface: ``scconcerto <command> ...``. Every command calls only the public Python API.

Each command lives in its own module exposing ``register(subparsers)``, which
adds its parser and sets ``func`` to a function ``(args) -> int``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .._errors import ScConcertoError

#: Arguments that name files or folders a command reads.
INPUT_ARGS = ("data", "model", "reference", "pretrained", "target", "checkpoint_dir")
COMMANDS = ["train", "embed", "demo", "attention", "report", "cluster", "annotate", "map", "plot"]


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="scconcerto", description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", "-v", action="store_true", help="more log messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; errors of the package's own classes are printed as one paragraph (exit code 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    from .._io import protect_inputs

    try:
        with protect_inputs(getattr(args, name, None) for name in INPUT_ARGS):  # --overwrite never hits an input
            return int(args.func(args) or 0)
    except ScConcertoError as exc:
        print(f"scconcerto {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"scconcerto {args.command}: interrupted", file=sys.stderr)
        return 130


