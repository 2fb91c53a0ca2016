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
    p.add_argument("--batch-size", type=int, default=None, help=help)


def check_output_free(path: str, overwrite: bool, kind: str | None = None) -> None:
    """Fail before any work when the output exists and --overwrite was not given, or may not be replaced
    (``kind``: ``"file"``, ``"model"`` folder, or ``None``: whichever is there)."""
    from .._io import check_output

    check_output(path, overwrite, kind)
