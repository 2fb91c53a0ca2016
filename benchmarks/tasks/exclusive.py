"""A lineage held by one source only, built from development data: the situation of the pancreas test set,
whose exocrine and stellate cells are all in one source (Wang), while both sources hold the endocrine cells.

Per-source normalization centres each source on its own mean; a source that alone holds a lineage has its
mean pulled toward that lineage, and the cell types it shares with the other sources move away from theirs.
:func:`kept_in_one_source` keeps the myeloid cells (monocytes and dendritic cells) of the source richest in
them and drops those of every other source. Names ``<data set>:myeloid-in-one`` (a multi-batch data set)
or ``<donor variant>:myeloid-in-one`` (:mod:`.donors`); read with :func:`load_variant`.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np

from .data import load
from .donors import load_donors

SUFFIX = ":myeloid-in-one"
#: Development sets with their myeloid cells in one source: PBMC across chemistries, Kang's two conditions,
#: cord-blood donors with a technical effect.
EXCLUSIVE = ("symphony_pbmc_3tech" + SUFFIX, "kang_ifnb_pbmc_scgen" + SUFFIX,
             "cbmc_citeseq:donors-shift" + SUFFIX)
#: The myeloid labels of each data set.
MYELOID = {"symphony_pbmc_3tech": ("Mono_CD14", "Mono_CD16", "DC"),
           "kang_ifnb_pbmc_scgen": ("CD14+Mono", "FCGR3A+Mono", "Dendritic"),
           "cbmc_citeseq": ("CD14+ Mono", "CD16+ Mono", "DC")}


def kept_in_one_source(adata: ad.AnnData, types: tuple[str, ...], batch_key: str = "batch",
                       label_key: str = "cell_type") -> ad.AnnData:
    """The cells of ``types`` kept only in the source that has most of them; every other cell kept."""
    labels = adata.obs[label_key].astype(str).to_numpy()
    batches = adata.obs[batch_key].astype(str).to_numpy()
    chosen = np.isin(labels, types)
    if not chosen.any():
        raise ValueError(f"none of the types {list(types)} is in obs[{label_key!r}]")
    names, counts = np.unique(batches[chosen], return_counts=True)
    owner = names[np.argmax(counts)]
    return adata[~chosen | (batches == owner)].copy()


def load_exclusive(data_dir: Path | None, name: str, skipped: list[str]) -> ad.AnnData | None:
    """The variant ``name`` (``...:myeloid-in-one``), or ``None`` (recorded in ``skipped``) when its data set
    is absent."""
    if not name.endswith(SUFFIX):
        raise ValueError(f"{name}: not a one-source variant (<data set>{SUFFIX})")
    base = name[: -len(SUFFIX)]
    dataset = base.split(":", 1)[0]
    if dataset not in MYELOID:
        raise ValueError(f"{name}: no myeloid labels known for {dataset} (known: {', '.join(MYELOID)})")
    adata = load_variant(data_dir, base, skipped)
    return None if adata is None else kept_in_one_source(adata, MYELOID[dataset])


def load_variant(data_dir: Path | None, name: str, skipped: list[str]) -> ad.AnnData | None:
    """A data set, a donor variant (:mod:`.donors`) or a one-source variant (:func:`load_exclusive`) by name."""
    if name.endswith(SUFFIX):
        return load_exclusive(data_dir, name, skipped)
    return load_donors(data_dir, name, skipped) if ":donors" in name else load(data_dir, name, skipped)
