"""The names scConcerto writes into an AnnData: stable, since other tools read them.

Query mapping (:meth:`~scconcerto.Concerto.map_query`) and annotation write, for each
label key ``L``, ``obs['L_pred']``, ``obs['L_confidence']`` (probability that the label is
right), ``obs['L_known_prob']`` (probability that the cell is of a type the reference has),
``obs['L_unknown']`` (bool) and ``obsm['L_proba']`` (the posterior over the labels listed in
``uns['scconcerto_mapping']['classes'][L]``); the embedding is ``obsm['X_concerto']``; mapping also writes the query placed on
the reference UMAP (``obsm['X_umap_ref']``), the imputed proteins
(``obsm['protein_imputed']``, names in ``uns['protein_imputed_names']``) and the run's
report (``uns['scconcerto_mapping']``).
"""

from __future__ import annotations

__all__ = ["EMBEDDING_KEY", "IMPUTED_PROTEIN_KEY", "IMPUTED_PROTEIN_NAMES_KEY", "MAPPING_UNS", "REFERENCE_UMAP_KEY",
           "UNKNOWN_LABEL", "confidence_key", "known_key", "pred_key", "proba_key", "unknown_key", "unknown_score_key"]

EMBEDDING_KEY = "X_concerto"
REFERENCE_UMAP_KEY = "X_umap_ref"
IMPUTED_PROTEIN_KEY = "protein_imputed"
IMPUTED_PROTEIN_NAMES_KEY = f"{IMPUTED_PROTEIN_KEY}_names"
MAPPING_UNS = "scconcerto_mapping"
#: The label of cells called unknown (with rejection), and their name in legends and tables.
UNKNOWN_LABEL = "unknown"


def pred_key(label_key: str) -> str:
    """``obs`` column of the predicted labels of ``label_key``."""
    return f"{label_key}_pred"


def confidence_key(label_key: str) -> str:
    """``obs`` column of the confidence (0-1) of those predictions."""
    return f"{label_key}_confidence"


def unknown_key(label_key: str) -> str:
    """``obs`` column flagging the cells whose confidence is below the unknown threshold."""
    return f"{label_key}_unknown"


def known_key(label_key: str) -> str:
    """``obs`` column of the probability that a cell is of a type the reference has (under ``label_key``)."""
    return f"{label_key}_known_prob"


def proba_key(label_key: str) -> str:
    """``obsm`` key of the posterior over the labels of ``label_key`` (one column per label)."""
    return f"{label_key}_proba"


def unknown_score_key(label_key: str) -> str:
    """``obs`` column of the score behind ``obs['L_unknown']`` (annotation: the rejection score it thresholds)."""
    return f"{label_key}_unknown_score"
