"""Reading what query mapping and annotation wrote into a query AnnData (names in :mod:`scconcerto._keys`).

Plots and the HTML report read a mapped or annotated query through these functions only: they never
re-derive how mapping placed or labelled the cells.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anndata as ad
import numpy as np

from .._errors import InputError
from .._keys import (IMPUTED_PROTEIN_KEY, MAPPING_UNS, REFERENCE_UMAP_KEY, UNKNOWN_LABEL, known_key, pred_key,
                     unknown_key, unknown_score_key)
from ._base import as_strings


def mapped_label_keys(adata: ad.AnnData) -> list[str]:
    """Label keys ``L`` for which ``obs['L_pred']`` exists."""
    suffix = pred_key("")
    return [c[: -len(suffix)] for c in map(str, adata.obs.columns) if c.endswith(suffix) and len(c) > len(suffix)]


def require_obs(adata: ad.AnnData, key: str, hint: str) -> np.ndarray:
    """``adata.obs[key]`` as an array, or a clear error naming the columns there are."""
    if key not in adata.obs:
        raise InputError(f"`obs[{key!r}]` is not in the AnnData (columns: {list(adata.obs.columns)[:20]}). {hint}")
    return adata.obs[key].to_numpy()


def predicted_labels(adata: ad.AnnData, label_key: str, mark_unknown: bool = True) -> np.ndarray:
    """Predicted labels as strings; cells flagged in ``obs['L_unknown']`` become ``"unknown"`` if asked."""
    pred = as_strings(require_obs(adata, pred_key(label_key), "Map the query first (`scconcerto map`), or name "
                                  "the label key whose `<key>_pred` column holds the predictions."))
    if mark_unknown and unknown_key(label_key) in adata.obs:
        pred = pred.copy()
        pred[adata.obs[unknown_key(label_key)].to_numpy(dtype=bool)] = UNKNOWN_LABEL
    return pred


def mapping_info(adata: ad.AnnData) -> dict[str, Any]:
    """``uns['scconcerto_mapping']`` as a plain dict (empty when absent)."""
    info = adata.uns.get(MAPPING_UNS, {})
    return dict(info) if isinstance(info, Mapping) else {}


ANNOTATION_UNS = "scconcerto_annotation"


def annotation_info(adata: ad.AnnData) -> dict[str, Any]:
    """``uns['scconcerto_annotation']`` (written by :meth:`~scconcerto.Concerto.predict`) as a plain dict."""
    info = adata.uns.get(ANNOTATION_UNS, {})
    return dict(info) if isinstance(info, Mapping) else {}


def is_annotated(adata: ad.AnnData) -> bool:
    """Whether the labels come from the classifier (``annotate predict``) rather than from query mapping."""
    return bool(annotation_info(adata)) and not mapping_info(adata)


def mapped_levels(adata: ad.AnnData) -> list[str]:
    """The label keys mapped as a hierarchy, coarse to fine (``map_query(levels=...)``); empty without one."""
    levels = mapping_info(adata).get("levels")
    if levels is None or isinstance(levels, str) or np.size(levels) < 2:
        return []
    return [str(k) for k in np.asarray(levels, dtype=object).ravel()]


def label_classes(adata: ad.AnnData, label_key: str) -> list[str] | None:
    """The labels the query could be given under ``label_key`` (the posterior's columns), if recorded."""
    found = mapping_info(adata).get("classes")
    found = found.get(label_key) if isinstance(found, Mapping) else None
    if found is None:
        found = adata.uns.get(f"{label_key}_proba_classes")
    return None if found is None else [str(c) for c in np.asarray(found, dtype=object).ravel()]


def unknown_score_column(adata: ad.AnnData, label_key: str) -> str | None:
    """The ``obs`` column whose value below the threshold flags a cell unknown: the probability of a known type
    (``L_known_prob``), else the annotation's rejection score (``L_unknown_score``), else ``None``."""
    for column in (known_key(label_key), unknown_score_key(label_key)):
        if column in adata.obs:
            return column
    return None


def check_mapped_onto(adata: ad.AnnData, model: Any, require: bool = True) -> None:
    """Fail clearly when ``adata`` was not mapped (or annotated) with ``model``.

    Mapping and annotation record the model's fingerprint (``model_id``) in
    ``uns['scconcerto_mapping']`` / ``uns['scconcerto_annotation']``; a record naming
    another model is an error. With ``require``, a query holding neither record nor any mapping
    output (``obs['<label>_pred']``, ``obsm['X_umap_ref']``) is an error too.
    """
    records = {key: adata.uns[key] for key in (MAPPING_UNS, ANNOTATION_UNS)
               if isinstance(adata.uns.get(key), Mapping)}
    if not records:
        if require and not mapped_label_keys(adata) and REFERENCE_UMAP_KEY not in adata.obsm:
            raise InputError("The query was never mapped: it has no `uns['scconcerto_mapping']` (nor an "
                             "annotation record). Map it onto the reference first, e.g. `scconcerto map MODEL "
                             "QUERY.h5ad --out mapped.h5ad`, and pass the mapped file.")
        return
    own = getattr(model, "model_id", None)
    for key, record in records.items():
        recorded = record.get("model_id")
        if recorded is not None and own is not None and str(recorded) != own:
            where = f" ({record['model']})" if record.get("model") else ""
            raise InputError(f"The query was mapped onto another model{where}: `uns[{key!r}]['model_id']` is "
                             f"{str(recorded)!r}, the model given has id {own!r}. Pass the model the query was "
                             "mapped onto, or map the query onto this model first.")


def _as_float(value: Any) -> float | None:
    try:
        out = float(np.asarray(value).ravel()[0]) if np.size(value) == 1 else None
    except (TypeError, ValueError):
        return None
    return out if out is not None and np.isfinite(out) else None


def unknown_threshold(adata: ad.AnnData, label_key: str) -> float | None:
    """The value of the unknown score (:func:`unknown_score_column`) below which cells were called unknown.

    Mapping records it in ``uns['scconcerto_mapping']['thresholds'][label_key]``, annotation in
    ``uns['scconcerto_annotation']['unknown_threshold']``; ``None`` when neither records one.
    """
    info = mapping_info(adata)
    for name in ("thresholds", "threshold", "unknown_threshold"):
        value = info.get(name)
        if isinstance(value, Mapping):
            value = value.get(label_key)
        found = _as_float(value) if value is not None else None
        if found is not None:
            return found
    record = annotation_info(adata)
    if record.get("label_key") == label_key:
        found = _as_float(record.get("unknown_threshold"))
        if found is not None and found != -1.0:  # -1: the classifier had no threshold for its score
            return found
    return None


def unknown_score_name(adata: ad.AnnData, label_key: str) -> str:
    """What the unknown score is, in words (for axis labels and the report)."""
    column = unknown_score_column(adata, label_key)
    if column == known_key(label_key):
        return "known-type probability"
    if column is None:
        return "confidence"
    score = str(annotation_info(adata).get("unknown_score", "rejection score"))
    return {"combined": "typicality", "knn": "similarity to the training cells",
            "max_softmax": "classifier confidence"}.get(score, score)


def gene_overlap(adata: ad.AnnData) -> dict[str, Any] | None:
    """The gene overlap summary written by mapping (or by ``scconcerto embed``), if any."""
    for info in (mapping_info(adata), dict(adata.uns.get("scconcerto", {}) or {})):
        value = info.get("gene_overlap")
        if isinstance(value, Mapping):
            return dict(value)
    return None


def imputed_protein(adata: ad.AnnData, key: str = IMPUTED_PROTEIN_KEY) -> tuple[np.ndarray, list[str]] | None:
    """Imputed protein matrix and its names (``uns['<key>_names']``, mapping info, or ``uns['protein_names']``)."""
    if key not in adata.obsm:
        return None
    values = adata.obsm[key]
    if hasattr(values, "columns"):  # a DataFrame carries its names
        return np.asarray(values, dtype=np.float32), [str(c) for c in values.columns]
    values = np.asarray(values, dtype=np.float32)
    info = mapping_info(adata)
    for names in (adata.uns.get(f"{key}_names"), info.get("protein_names"), info.get(f"{key}_names"),
                  adata.uns.get("protein_names")):
        if names is not None and len(names) == values.shape[1]:
            return values, [str(n) for n in names]
    return values, [f"protein_{i}" for i in range(values.shape[1])]
