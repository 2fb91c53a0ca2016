"""``scconcerto report``: an HTML report (one self-contained file) of a query mapped onto a reference."""

from __future__ import annotations

import argparse

from ._common import add_command, add_data, add_output, check_output_free, emit


class _DeprecatedReference(argparse.Action):
    """``--reference``, the former name of ``--model`` here: still accepted, with a deprecation message."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        import logging

        logging.getLogger("scconcerto").warning("scconcerto report: --reference is deprecated; name the model "
                                                "folder with --model.")
        setattr(namespace, "model", values)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "report", help="write an HTML report of a mapped query",
                    description="Write one self-contained HTML file (figures embedded) about a query mapped onto "
                                "a reference (`scconcerto map`) or annotated by its classifier (`scconcerto annotate "
                                "predict`). It opens with the answers: predicted labels on the reference UMAP, a "
                                "table per predicted type (cells, share, confidence, unknown cells), the confidence "
                                "per type, what 'unknown' means and the predictions as a CSV download; then the "
                                "hierarchy (a query mapped with --levels), checks against given labels, the query "
                                "on the reference, gene overlap, imputed proteins and training; parameters last.")
    add_data(p, "mapped query .h5ad (output of `scconcerto map`; never modified)")
    p.add_argument("--model", default=None, metavar="MODEL",
                   help="the reference model folder the query was mapped onto (required)")
    p.add_argument("--reference", action=_DeprecatedReference, metavar="MODEL", help=argparse.SUPPRESS)
    add_output(p, ".html file to write")
    p.add_argument("--label-key", action="append", default=None,
                   help="reference label key to report (repeat for several; default: every mapped key)")
    p.add_argument("--true-key", action="append", default=None, metavar="LABEL=COLUMN",
                   help="obs column of the query's given labels for a label key, as LABEL=COLUMN or just COLUMN "
                        "for the first label key (default: the column named like the label key, if present)")
    p.add_argument("--source-key", default=None, help="obs column of the query's sources (default: the model's "
                                                      "batch key)")
    p.add_argument("--title", default=None, help="title of the page (default: 'scConcerto mapping report', or "
                                                 "'scConcerto annotation report' for a query annotated by the "
                                                 "classifier)")
    p.add_argument("--max-points", type=int, default=50_000, help="cells drawn per scatter plot")
    p.add_argument("--seed", type=int, default=0, help="seed of subsamples and of a UMAP computed for the report")
    p.set_defaults(func=run)


def _true_keys(values: list[str] | None, label_keys: list[str] | None, model_keys: list[str]) -> dict[str, str]:
    from .._errors import InputError

    out: dict[str, str] = {}
    for value in values or []:
        if "=" in value:
            key, column = value.split("=", 1)
        else:
            first = (label_keys or model_keys or [None])[0]
            if first is None:
                raise InputError(f"--true-key {value!r}: the model has no label keys to compare with.")
            key, column = first, value
        out[key] = column
    return out


def run(args: argparse.Namespace) -> int:
    from .._errors import InputError
    from .._io import read_h5ad
    from ..model import Concerto
    from ..report import mapping_report

    if args.model is None:
        raise InputError("Name the reference model folder the query was mapped onto with --model MODEL.")
    check_output_free(args.out, args.overwrite)
    model = Concerto.load(args.model)
    adata = read_h5ad(args.data)
    path = mapping_report(adata, model, args.out, label_keys=args.label_key,
                          true_keys=_true_keys(args.true_key, args.label_key, list(model.setup.labels)),
                          source_key=args.source_key, title=args.title, query_name=str(args.data),
                          model_name=str(args.model), max_points=args.max_points, seed=args.seed,
                          overwrite=args.overwrite)
    emit({"out": str(path), "megabytes": round(path.stat().st_size / 1e6, 2)})
    return 0
