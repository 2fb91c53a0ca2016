"""``scconcerto annotate``: supervised cell-type classifier (train / predict / cv)."""

from __future__ import annotations

import argparse

from .._defaults import DEFAULT_CLASSIFIER_LR, END_TO_END_CLASSIFIER_LR
from ._common import (HelpFormatter, add_command, add_data, add_global_options, add_hvg, add_model, add_output,
                      add_runtime, check_output_free, emit, read_data, use_protein_key)


def _sub(commands: argparse._SubParsersAction, name: str, **kwargs: object) -> argparse.ArgumentParser:
    p = commands.add_parser(name, formatter_class=HelpFormatter, **kwargs)
    add_global_options(p)
    return p


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "annotate", help="supervised cell-type classifier: train, predict, cross-validate",
                    description="Fine-tune a dense + softmax classifier on the Concerto teacher (optionally with "
                                   "domain adaptation to an unlabeled target), predict with calibrated confidence "
                                   "and unknown flags, or cross-validate it.")
    commands = p.add_subparsers(dest="annotate_command", required=True, metavar="SUBCOMMAND")
    _register_train(commands)
    _register_predict(commands)
    _register_cv(commands)


def _add_fit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--label-key", required=True, help="obs column of the cell types")
    p.add_argument("--batch-key", default=None, help="obs column of the source/batch of each cell")
    p.add_argument("--protein-key", default=None,
                   help="obsm key of protein counts, names in uns['protein_names'] (default: none; .h5mu input: "
                        "the protein modality; with --pretrained: the model's)")
    p.add_argument("--layer", default=None, help="layer holding the values (default: X)")
    add_hvg(p)
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default: by size)")
    p.add_argument("--pretrain-epochs", type=int, default=None,
                   help="contrastive pre-training epochs (default: by size)")
    p.add_argument("--lr", type=float, default=None,
                   help=f"initial fine-tuning learning rate (default: {DEFAULT_CLASSIFIER_LR:g} from the pre-trained "
                        f"teacher, {END_TO_END_CLASSIFIER_LR:g} end to end)")
    p.add_argument("--no-expression-vote", dest="expression_vote", action="store_false",
                   help="predict from the classifier alone, without pooling its posterior with the vote of the "
                        "nearest labeled cells in the reference's expression space")
    p.add_argument("--class-balanced", action="store_true", help="weight the cross-entropy by inverse class frequency")
    p.add_argument("--validation-fraction", type=float, default=0.1,
                   help="labeled cells held out to calibrate the confidence and the unknown threshold")
    p.add_argument("--false-rejection-rate", type=float, default=0.05,
                   help="fraction of held-out (known-type) cells allowed below the unknown threshold")
    p.add_argument("--unknown-score", choices=["auto", "reference", "combined", "knn", "max_softmax"], default="auto",
                   help="score that flags unknown cells: the probability of a type the reference has, from "
                        "mapping's novelty model (reference; the default 'auto' when the label key is the "
                        "reference's), the calibrated top probability (max_softmax), the similarity to the nearest "
                        "training cells' features (knn), or both of the latter (combined)")
    p.add_argument("--seed", type=int, default=0, help="random seed")


def _register_train(commands: argparse._SubParsersAction) -> None:
    p = _sub(commands, "train", help="fine-tune a classifier and save the model",
             description="Pre-train Concerto on the labeled reference (or start from --pretrained), "
                         "fine-tune a classifier on it, calibrate it, and write a model folder.")
    add_data(p, "labeled reference cells (never modified)", mudata=True)
    add_output(p, "model folder to write")
    _add_fit_options(p)
    p.add_argument("--pretrained", default=None, metavar="MODEL",
                   help="start from this model folder (written by `scconcerto train`)")
    p.add_argument("--target", default=None,
                   help="unlabeled cells (.h5ad or .h5mu) the classifier is for: it learns from the genes they have "
                        "(see --all-genes), and is adapted to them with --consistency-weight above 0")
    p.add_argument("--target-batch-key", default=None,
                   help="obs column of the target's sources (default: the batch key, if the target has it)")
    p.add_argument("--target-species", choices=["human", "mouse"], default=None,
                   help="the target's species when it is not the reference's: genes matched by 1:1 orthologs (without "
                        "--target, the classifier learns from the genes with a 1:1 ortholog in that species)")
    p.add_argument("--all-genes", action="store_true",
                   help="learn from every gene of the model, not only those the target (or its species) has")
    p.add_argument("--consistency-weight", type=float, default=None,
                   help="weight of the target consistency loss (default: the classifier's, 0: no adaptation, which no "
                        "adaptation setting beat on the development tasks of benchmarks/ADAPTATION.md)")
    p.add_argument("--min-overlap", type=float, default=0.5,
                   help="smallest fraction of the model's genes the labeled data / target must have")
    add_runtime(p)
    p.set_defaults(func=run_train)


def _register_predict(commands: argparse._SubParsersAction) -> None:
    p = _sub(commands, "predict", help="annotate cells with a fine-tuned classifier",
             description="Write obs['<label>_pred'], obs['<label>_confidence'], obs['<label>_unknown'], "
                         "obs['<label>_unknown_score'] (the score behind the flag) and obsm['<label>_proba'] (class "
                         "names in uns) into a copy of the data. Cells without the proteins of an RNA + protein "
                         "model are predicted from RNA alone, with the classifier's RNA-only calibration.")
    add_model(p, "model folder written by `scconcerto annotate train`")
    add_data(p, "cells to annotate (never modified)", mudata=True)
    add_output(p, ".h5ad to write")
    p.add_argument("--protein-key", default=None,
                   help="obsm key of the data's protein counts (default: the model's, or an .h5mu's protein "
                        "modality)")
    p.add_argument("--batch-key", default="__setup__",
                   help="obs column of sources (default: the model's batch key, if the data has it)")
    p.add_argument("--reject", action="store_true", help="write 'unknown' as the prediction of low-confidence cells")
    p.add_argument("--unknown-score", choices=["reference", "combined", "knn", "max_softmax"], default=None,
                   help="score that flags unknown cells (default: the model's)")
    p.add_argument("--unknown-threshold", type=float, default=None,
                   help="score below which a cell is unknown: a probability (0-1) for reference, a confidence "
                        "(0-1) for max_softmax, a cosine similarity for knn, a typicality (0-1) for combined "
                        "(default: the model's, chosen on held-out cells)")
    p.add_argument("--known-share", type=float, default=None,
                   help="with the reference score: share of the cells expected to be of known types, the prior of "
                        "L_known_prob (default: 0.5, even odds); it does not change the default unknown flags")
    p.add_argument("--min-overlap", type=float, default=0.5, help="smallest fraction of the model's genes required")
    p.add_argument("--query-species", choices=["human", "mouse"], default=None,
                   help="the data's species when it is not the model's: genes matched by 1:1 orthologs")
    add_runtime(p)
    p.set_defaults(func=run_predict)


def _register_cv(commands: argparse._SubParsersAction) -> None:
    p = _sub(commands, "cv", help="stratified k-fold cross-validation of the classifier",
             description="Per fold: pre-train on the training folds (unless --no-pretrain), fine-tune, predict the "
                         "held-out fold. Prints ACC, macro-F1 and median per-class F1 per fold and their means as "
                         "JSON (and as a table on standard error).")
    add_data(p, "labeled cells (never modified)", mudata=True)
    _add_fit_options(p)
    p.add_argument("--folds", type=int, default=5, help="number of stratified folds")
    p.add_argument("--no-pretrain", action="store_true", help="end-to-end training without contrastive pre-training")
    p.add_argument("--out", default=None, help="also write the per-fold table to this .csv")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_runtime(p)
    p.set_defaults(func=run_cv)


def _fit_kwargs(args: argparse.Namespace) -> dict:
    return {"epochs": args.epochs, "lr": args.lr, "expression_vote": args.expression_vote,
            "class_balanced": args.class_balanced,
            "validation_fraction": args.validation_fraction, "false_rejection_rate": args.false_rejection_rate,
            "unknown_score": args.unknown_score,
            "batch_size": args.batch_size or 128, "device": args.device}


def run_train(args: argparse.Namespace) -> int:
    from ..model import Concerto

    check_output_free(args.out, args.overwrite, kind="model")
    adata = read_data(args)
    target = read_data(args, args.target) if args.target else None
    if args.pretrained:
        model = Concerto.load(args.pretrained)
        batch_key = args.batch_key if args.batch_key is not None else "__setup__"
        use_protein_key(adata, args.protein_key, model.setup.protein_key, args.data)
        if target is not None:
            use_protein_key(target, args.protein_key, model.setup.protein_key, args.target)
    else:
        model = Concerto(adata, batch_key=args.batch_key, label_key=args.label_key, layer=args.layer, hvg=args.hvg,
                         protein_key=_protein_key(args, adata), seed=args.seed)
        batch_key = "__setup__"
    model.fit_classifier(adata, label_key=args.label_key, target=target, pretrain=True, batch_key=batch_key,
                         target_batch_key=args.target_batch_key or "__setup__", min_overlap=args.min_overlap,
                         target_species=args.target_species, shared_genes=not args.all_genes,
                         pretrain_epochs=args.pretrain_epochs, seed=args.seed, **_fit_kwargs(args),
                         **({} if args.consistency_weight is None else {"consistency_weight": args.consistency_weight}))
    model.save(args.out, overwrite=args.overwrite)
    s = model.annotation_summary
    emit({"out": args.out, "label_key": s["label_key"], "classes": s["classes"],
                      "train_cells": s["n_train"], "validation_cells": s["n_validation"],
                      "target_cells": s["n_target"], "gene_overlap": s["gene_overlap"],
                      "target_gene_overlap": s.get("target_gene_overlap"), "adaptation": s.get("adaptation"),
                      "genes_learned_from": len(s["genes"] if s.get("genes") else model.setup.genes),
                      "temperature": round(s["temperature"], 4), "unknown_score": s["unknown_score"],
                      "unknown_thresholds": s["thresholds"],
                      "validation": s["calibration"],
                      "rna_only_validation": (s.get("rna_only") or {}).get("calibration"),
                      "train_seconds": round(s["train_seconds"], 1)})
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from .._io import write_h5ad
    from .._keys import pred_key
    from ..model import Concerto

    check_output_free(args.out, args.overwrite)
    model = Concerto.load(args.model)
    adata = read_data(args)
    use_protein_key(adata, args.protein_key, model.setup.protein_key, args.data)
    result = model.predict(adata, batch_key=args.batch_key, reject=args.reject,
                           unknown_threshold=args.unknown_threshold, unknown_score=args.unknown_score,
                           batch_size=args.batch_size or 1024,
                           device=args.device, min_overlap=args.min_overlap, query_species=args.query_species,
                           known_share=args.known_share)
    write_h5ad(adata, args.out, overwrite=args.overwrite)
    counts = adata.obs[pred_key(result.label_key)].value_counts()
    emit({"out": args.out, "cells": int(adata.n_obs), "label_key": result.label_key,
          "predicted": {str(k): int(v) for k, v in counts.items() if v},
          "unknown": int(result.unknown.sum()), "unknown_score": result.unknown_score,
          "modalities": result.modalities, "gene_overlap": result.gene_overlap})
    return 0


def run_cv(args: argparse.Namespace) -> int:
    import logging

    from .._io import write_atomic_file
    from ..model import Concerto

    if args.out:
        check_output_free(args.out, args.overwrite)
    adata = read_data(args)
    table = Concerto.cross_validate(
        adata, args.label_key, folds=args.folds, batch_key=args.batch_key, pretrain=not args.no_pretrain,
        seed=args.seed, model_kwargs={"layer": args.layer, "hvg": args.hvg, "protein_key": _protein_key(args, adata)},
        pretrain_kwargs={"epochs": args.pretrain_epochs}, progress=None, **_fit_kwargs(args))
    shown = table.rename(columns={"accuracy": "ACC", "macro_f1": "macro-F1", "median_f1": "median-F1"})
    cols = ["fold", "n_train", "n_test", "ACC", "macro-F1", "median-F1"]
    means = shown[["ACC", "macro-F1", "median-F1"]].mean()
    log = logging.getLogger("scconcerto")
    log.info("%s\nmean  %s", shown[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"),
             "  ".join(f"{k} {v:.4f}" for k, v in means.items()))
    if args.out:
        write_atomic_file(args.out, lambda p: table.to_csv(p, index=False), overwrite=args.overwrite)
    emit({"out": args.out, "folds": table.drop(columns=["seconds"], errors="ignore").to_dict(orient="records"),
          "mean": {"accuracy": float(table["accuracy"].mean()), "macro_f1": float(table["macro_f1"].mean()),
                   "median_f1": float(table["median_f1"].mean())}})
    return 0


def _protein_key(args: argparse.Namespace, adata: object) -> str | None:
    """``--protein-key``, or the protein modality of an .h5mu input."""
    from ..data.readers import PROTEIN_KEY

    if args.protein_key is None and str(args.data).lower().endswith(".h5mu") and PROTEIN_KEY in adata.obsm:
        return PROTEIN_KEY
    return args.protein_key
