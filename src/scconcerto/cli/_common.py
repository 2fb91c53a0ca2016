"""Arguments shared by several commands."""

from __future__ import annotations

import argparse


def add_output(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--out", required=True, help=help)
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")


def add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--batch-size", type=int, default=None, help="cells per mini-batch")


def check_output_free(path: str, overwrite: bool) -> None:
    """Fail before any work when the output exists and --overwrite was not given."""
    from .._io import check_output

    check_output(path, overwrite)
