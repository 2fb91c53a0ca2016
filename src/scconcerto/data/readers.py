"""Reading cells from disk: ``.h5ad``, and ``.h5mu`` (MuData: RNA + protein modalities) as one AnnData.

scConcerto works on an AnnData with the RNA in ``X`` (or a layer) and, for
CITE-seq, the antibody counts in ``obsm['protein']`` with their names in
``uns['protein_names']``. A MuData holds the two as modalities; :func:`from_mudata`
puts the protein modality into the RNA AnnData that way, aligned by cell name.
MuData support is an optional extra: ``pip install scconcerto[mudata]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import scipy.sparse as sp

from .._errors import InputError

__all__ = ["PROTEIN_KEY", "PROTEIN_MODALITIES", "RNA_MODALITIES", "from_mudata", "is_mudata", "read", "read_h5mu"]

#: ``obsm`` key the protein modality of a MuData is written to.
PROTEIN_KEY = "protein"
#: Modality names taken for RNA / protein when not given (the conventions of muon and scvi-tools).
RNA_MODALITIES = ("rna", "RNA", "gex", "GEX", "Gene Expression")
PROTEIN_MODALITIES = ("prot", "protein", "adt", "ADT", "Antibody Capture", "cite")
_MUDATA_MISSING = ("Reading MuData (.h5mu) needs the optional package mudata: install it with "
                   "`pip install scconcerto[mudata]` (or `pip install mudata`), or convert the file to .h5ad "
                   "with the RNA in X and the protein counts in obsm['protein'].")


def _mudata() -> Any:
    try:
        import mudata
    except ImportError as exc:
        raise InputError(_MUDATA_MISSING) from exc
    return mudata


def _pick(mods: Sequence[str], given: str | None, known: Sequence[str], what: str, required: bool) -> str | None:
    if given is not None:
        if given not in mods:
            raise InputError(f"The MuData has no modality {given!r} (it has {list(mods)}); name its {what} "
                             "modality.")
        return given
    found = [m for m in known if m in mods]
    if found:
        return found[0]
    if required:
        raise InputError(f"No {what} modality found among {list(mods)} (looked for {list(known)}); name it, e.g. "
                         f"`--rna-modality` / `rna_modality=`.")
    return None


def is_mudata(data: object) -> bool:
    """Whether ``data`` is a MuData (without importing mudata when it is not installed)."""
    return type(data).__name__ == "MuData" and hasattr(data, "mod")


def from_mudata(mdata: Any, rna_modality: str | None = None, protein_modality: str | None = None,
                protein_key: str = PROTEIN_KEY) -> ad.AnnData:
    """One AnnData from a MuData: the RNA modality, with the protein modality in ``obsm[protein_key]``.

    Parameters
    ----------
    mdata
        A :class:`mudata.MuData`; not modified.
    rna_modality
        Name of the RNA modality (default: the first of :data:`RNA_MODALITIES` present).
    protein_modality
        Name of the protein modality (default: the first of :data:`PROTEIN_MODALITIES` present;
        none found: the result has RNA only).
    protein_key
        ``obsm`` key of the protein counts (names in ``uns['protein_names']``).

    Returns
    -------
    AnnData
        The RNA cells (a copy), with the MuData's global ``obs`` columns added (modality-prefixed
        columns such as ``rna:cell_type`` are the RNA modality's own ``obs``), and the proteins
        (dense float32, one row per RNA cell).
    """
    mods = list(mdata.mod)
    rna_name = _pick(mods, rna_modality, RNA_MODALITIES, "RNA", required=True)
    prot_name = _pick(mods, protein_modality, PROTEIN_MODALITIES, "protein", required=False)
    out = mdata.mod[rna_name].copy()
    shared = [c for c in mdata.obs.columns if ":" not in str(c) and c not in out.obs.columns]
    if shared and mdata.obs.index.is_unique:
        out.obs[shared] = mdata.obs[shared].reindex(out.obs_names)
    if prot_name is not None:
        prot = mdata.mod[prot_name]
        if not prot.obs_names.is_unique or not out.obs_names.is_unique:
            raise InputError(f"Cell names repeat within the {rna_name!r} or {prot_name!r} modality; make them "
                             "unique (`mdata.obs_names_make_unique()`) so the modalities can be aligned.")
        rows = prot.obs_names.get_indexer(out.obs_names)
        missing = int((rows < 0).sum())
        if missing:
            raise InputError(f"{missing} of {out.n_obs} cells of the {rna_name!r} modality have no row in the "
                             f"{prot_name!r} modality. Keep the cells measured in both (e.g. "
                             "`muon.pp.intersect_obs(mdata)`), or pass only the RNA.")
        values = prot.X[rows]
        values = values.toarray() if sp.issparse(values) else np.asarray(values)
        out.obsm[protein_key] = values.astype(np.float32)
        out.uns["protein_names"] = [str(n) for n in prot.var_names]
    return out


def read_h5mu(path: str | Path, rna_modality: str | None = None, protein_modality: str | None = None,
              protein_key: str = PROTEIN_KEY) -> ad.AnnData:
    """Read an ``.h5mu`` file as one AnnData (see :func:`from_mudata`); the file is not modified."""
    from .._settings import quiet_third_party

    path = Path(path)
    _check_hdf5(path)
    mudata = _mudata()
    try:
        with quiet_third_party():
            mdata = mudata.read_h5mu(path)
    except Exception as exc:  # h5py/mudata raise many types for damaged files
        raise InputError(f"{str(path)!r} could not be read as .h5mu ({type(exc).__name__}: {exc}). The file may "
                         "be truncated or corrupt.") from exc
    with quiet_third_party():
        return from_mudata(mdata, rna_modality, protein_modality, protein_key)


def _check_hdf5(path: Path) -> None:
    if not path.exists():
        raise InputError(f"The input file {str(path)!r} does not exist.")
    if path.is_dir() or path.stat().st_size == 0:
        raise InputError(f"{str(path)!r} is a folder or an empty file, not an .h5mu file.")
    import h5py

    if not h5py.is_hdf5(path):  # (MuData files start with a user block: the HDF5 signature follows it)
        raise InputError(f"{str(path)!r} is not an .h5mu (HDF5) file.")


def read(path: str | Path, rna_modality: str | None = None, protein_modality: str | None = None,
         protein_key: str = PROTEIN_KEY) -> ad.AnnData:
    """Read cells for scConcerto: an ``.h5ad`` file, or an ``.h5mu`` file as one AnnData (RNA + proteins).

    Parameters
    ----------
    path
        ``.h5ad`` or ``.h5mu`` file (never modified).
    rna_modality, protein_modality, protein_key
        For ``.h5mu`` files: see :func:`from_mudata`.

    Returns
    -------
    AnnData
    """
    from .._io import read_h5ad

    if Path(path).suffix.lower() == ".h5mu":
        return read_h5mu(path, rna_modality, protein_modality, protein_key)
    return read_h5ad(path)
