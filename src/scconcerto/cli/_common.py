"""Arguments shared by several commands."""

from __future__ import annotations

import argparse


def add_output(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--out", required=True, help=help)
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")


def add_runtime(p: argparse.ArgumentParser, training: bool = False) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    help = ("cells per training mini-batch (default 256; on a GPU, 1024 built a 1M-cell reference in 51 s "
            "instead of 155 s on an H100: benchmarks/SCALE.md)") if training else "cells per mini-batch"
    p.add_argument("--batch-size", type=positive_int, default=None, help=help)


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (0 must not silently mean the default)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def check_output_free(path: str, overwrite: bool, kind: str | None = None) -> None:
    """Fail before any work when the output exists and --overwrite was not given, or may not be replaced
    (``kind``: ``"file"``, ``"model"`` folder, or ``None``: whichever is there)."""
    from .._io import check_output

    check_output(path, overwrite, kind)
