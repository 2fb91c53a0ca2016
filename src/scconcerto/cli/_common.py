"""Arguments, help layout and output shared by the commands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless its help already states it or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or action.default in (None, False, argparse.SUPPRESS)
                or action.option_strings == [] or isinstance(action, argparse._HelpAction)):
            return text
        return text + " (default: %(default)s)"


def add_global_options(p: argparse.ArgumentParser, top: bool = False) -> None:
    """``-v``, ``-q`` and ``--progress/--no-progress``: accepted before or after the command name.

    Sub-commands leave them unset unless given (``SUPPRESS``), so that an option given before
    the command is not reset by the sub-command's default.
    """
    default = (lambda value: value) if top else (lambda value: argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="count", default=default(0),
                   help="more messages on standard error: debug (default: info)")
    p.add_argument("-q", "--quiet", action="count", default=default(0),
                   help="fewer messages: warnings only (-qq: errors only)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=default(None),
                   help="draw progress bars on standard error (default: only when it is a terminal; otherwise "
                        "one log line per training epoch)")


def add_command(sub: argparse._SubParsersAction, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A sub-command parser with the shared help layout and global options."""
    p = sub.add_parser(name, formatter_class=HelpFormatter, **kwargs)
    add_global_options(p)
    return p


def add_model(p: argparse.ArgumentParser, help: str = "model folder written by `scconcerto train`",
              positional: bool = True) -> None:
    """The model folder: positional ``MODEL`` when it is the command's main input, else ``--model``."""
    if positional:
        p.add_argument("model", metavar="MODEL", help=help)
    else:
        p.add_argument("--model", required=True, metavar="MODEL", help=help)


def add_data(p: argparse.ArgumentParser, help: str, mudata: bool = False) -> None:
    """The cells: positional ``DATA``; with ``mudata``, ``.h5mu`` files and their modality names too."""
    p.add_argument("data", metavar="DATA", help=help + (" (.h5ad, or .h5mu with RNA and protein modalities)"
                                                         if mudata else ""))
    if mudata:
        p.add_argument("--rna-modality", default=None,
                       help=".h5mu input: name of the RNA modality (default: rna, gex, ...)")
        p.add_argument("--protein-modality", default=None,
                       help=".h5mu input: name of the protein modality (default: prot, protein, adt, ...)")


def add_output(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--out", required=True, help=help)
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")


def add_runtime(p: argparse.ArgumentParser, training: bool = False) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    help = ("cells per training mini-batch (default 256; larger batches are faster on a GPU: "
            "docs/scale.md)") if training else \
        "cells per mini-batch (default: 1024)"
    p.add_argument("--batch-size", type=positive_int, default=None, help=help)


def _whole_number(text: str, minimum: int, words: str = "") -> int:
    """``text`` as a whole number of at least ``minimum``, or an argparse error (``words``: what else it may be)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number{words}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}{words}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (0 must not silently mean the default)."""
    return _whole_number(text, 1)


def gene_count(text: str) -> int | str | None:
    """An argparse type for ``--hvg``: a number of genes of at least 2, ``all`` (every gene) or ``auto``."""
    word = text.strip().lower()
    if word in ("all", "auto"):
        return None if word == "all" else "auto"
    return _whole_number(text, 2, " (or 'all', 'auto')")


def add_hvg(p: argparse.ArgumentParser) -> None:
    """``--hvg``: ``auto`` (the package's default), a number of genes, or ``all``."""
    from .._defaults import DEFAULT_HVG, WHOLE_TRANSCRIPTOME_GENES

    p.add_argument("--hvg", type=gene_count, default="auto", metavar="N|all|auto",
                   help=f"highly variable genes of the reference to keep: N, 'all' (every gene) or 'auto' "
                        f"(default: {DEFAULT_HVG} when the reference has more than {WHOLE_TRANSCRIPTOME_GENES} "
                        f"genes, else every gene; how it was chosen: benchmarks/ABLATIONS_GENES.md)")


def check_output_free(path: str, overwrite: bool, kind: str | None = None) -> None:
    """Fail before any work when the output exists and --overwrite was not given, or may not be replaced
    (``kind``: ``"file"``, ``"model"`` folder, or ``None``: whichever is there); create its folder."""
    from .._io import check_output

    Path(path).absolute().parent.mkdir(parents=True, exist_ok=True)
    check_output(path, overwrite, kind)


def read_data(args: argparse.Namespace, path: str | None = None) -> Any:
    """Read ``DATA`` (or ``path``): an .h5ad, or an .h5mu as one AnnData with ``obsm['protein']``."""
    from ..data.readers import read

    return read(path or args.data, rna_modality=getattr(args, "rna_modality", None),
                protein_modality=getattr(args, "protein_modality", None))


def use_protein_key(adata: Any, given: str | None, model_key: str | None, path: str | None = None) -> None:
    """Let the model find the proteins under its own ``obsm`` key when the data holds them under ``given``
    (default for an ``.h5mu`` ``path``: its protein modality)."""
    from .._errors import InputError
    from ..data.readers import PROTEIN_KEY

    if given is None and path is not None and str(path).lower().endswith(".h5mu") and PROTEIN_KEY in adata.obsm:
        given = PROTEIN_KEY
    if given is None or model_key is None or given == model_key:
        return
    if given not in adata.obsm:
        raise InputError(f"--protein-key {given!r} is not in the data's obsm (keys: {list(adata.obsm)}).")
    adata.obsm[model_key] = adata.obsm[given]


def emit(result: dict[str, Any]) -> None:
    """Print the command's result: one JSON object, alone on standard output."""
    print(json.dumps(result, default=str), file=sys.stdout, flush=True)
