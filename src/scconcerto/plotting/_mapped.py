"""Reading what query mapping wrote into a query AnnData (the names are in :mod:`scconcerto._keys`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anndata as ad
import numpy as np

from .._errors import InputError
from .._keys import IMPUTED_PROTEIN_KEY, MAPPING_UNS, REFERENCE_UMAP_KEY, UNKNOWN_LABEL, pred_key, unknown_key
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
    """The confidence below which cells were called unknown, as recorded by mapping, if any.

    Looks in ``uns['scconcerto_mapping']`` for ``thresholds[label_key]`` (or a
    single ``thresholds``/``threshold``/``unknown_threshold`` number).
    """
    info = mapping_info(adata)
    for name in ("thresholds", "threshold", "unknown_threshold", "confidence_threshold"):
        value = info.get(name)
        if isinstance(value, Mapping):
            value = value.get(label_key)
        found = _as_float(value) if value is not None else None
        if found is not None:
            return found
    return None


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
