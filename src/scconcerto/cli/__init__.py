"""Command-line interface: ``scconcerto <command> ...``. Every command calls only the public Python API.

Each command lives in its own module exposing ``register(subparsers)``, which
adds its parser and sets ``func`` to a function ``(args) -> int``. The modules
import nothing heavy at the top, so ``--help`` and ``--version`` answer at once.

Conventions, the same in every command: a model folder that is the command's
main input is the positional ``MODEL`` (``map``, ``embed``, ``attention``,
``annotate predict``), a model that is only consulted is ``--model``
(``plot``, ``report``); data are the positional ``DATA`` (``.h5ad``, or ``.h5mu``
for ``train``, ``map`` and ``annotate``); what a command writes is ``--out``,
never replaced without ``--overwrite``. A command prints one JSON object on
standard output (its result, with the written path under ``"out"``); progress
bars and messages go to standard error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .._errors import ScConcertoError
from ._common import HelpFormatter, add_global_options

#: Arguments that name files or folders a command reads.
INPUT_ARGS = ("data", "model", "reference", "pretrained", "target", "checkpoint_dir")
COMMANDS = ["train", "embed", "map", "annotate", "plot", "report", "attention", "cluster", "demo"]


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="scconcerto", description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")
    add_global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


class _Version(argparse.Action):
    """``--version``: looks the version up only when asked (the lookup costs a tenth of a second)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        from .. import __version__

        print(f"scconcerto {__version__}")
        parser.exit()


def _verbosity(args: argparse.Namespace) -> str:
    level = 2 + getattr(args, "verbose", 0) - getattr(args, "quiet", 0)  # info by default
    return ["error", "warning", "info", "debug"][min(max(level, 0), 3)]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; errors of the package's own classes are printed as one paragraph (exit code 2)."""
    from .._settings import settings

    parser = build_parser()
    args = parser.parse_args(argv)
    previous = settings.verbosity, settings.progress
    settings.verbosity = _verbosity(args)
    if getattr(args, "progress", None) is not None:
        settings.progress = args.progress
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
    finally:
        settings.verbosity, settings.progress = previous
