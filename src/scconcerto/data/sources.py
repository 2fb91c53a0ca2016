"""Which source (batch) each cell belongs to, and the batch-norm domain of each source: the one rule.

A model normalizes each of its sources by its own statistics (domain-specific batch norm). The reference,
every query, the classifier's labelled and target data and its predictions all name their cells' sources
with :func:`source_names` and turn the names into domain codes with :func:`domain_codes`.
"""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np

from .._errors import InputError

#: The one source of a model built without a batch key.
DEFAULT_SOURCE = "all"
#: Where the model's batch key is meant (the default of ``batch_key`` arguments).
SETUP_KEY = "__setup__"

__all__ = ["DEFAULT_SOURCE", "SETUP_KEY", "domain_codes", "source_names"]


def source_names(adata: ad.AnnData, batch_key: str | None, model_batch_key: str | None = None,
                 model_sources: Sequence[str] = (), default: str = "query", what: str = "the data") -> np.ndarray:
    """The source name of every cell of ``adata`` (object array of ``str``).

    Parameters
    ----------
    adata
        The cells.
    batch_key
        ``obs`` column of the sources; ``"__setup__"``: the model's batch key where ``adata`` has it;
        ``None``: no column.
    model_batch_key, model_sources
        The model's batch key and sources.
    default
        Name of the one source of cells without a source column.
    what
        How errors name ``adata``.

    Returns
    -------
    numpy.ndarray
        The column's values as text. Without a column, every cell is in one source: the model's own
        when it was built without a batch key (its single source ``"all"``), else a new source ``default``.

    Raises
    ------
    InputError
        When a named column is absent, or has missing values (every cell needs a source).
    """
    named = batch_key != SETUP_KEY
    key = batch_key if named else model_batch_key
    if key is not None and key in adata.obs:
        col = adata.obs[key]
        missing = int(col.isna().sum())
        if missing:
            raise InputError(f"`obs[{key!r}]` of {what} has {missing} missing values; every cell needs a source. "
                             "Fill them (e.g. with 'unknown') or drop those cells.")
        return col.astype(str).to_numpy(dtype=object)
    if key is not None and named:
        raise InputError(f"The batch key {key!r} is not a column of {what}'s obs (columns: "
                         f"{list(adata.obs.columns)[:20]}). Pass one of them, or leave the key out: "
                         + (f"the model's ({model_batch_key!r}) is used where {what} has it, else all cells are "
                            "one new source." if model_batch_key else "all cells are then one source."))
    single = key is None and list(model_sources) == [DEFAULT_SOURCE]
    return np.full(adata.n_obs, DEFAULT_SOURCE if single else default, dtype=object)


def domain_codes(names: np.ndarray, known: Sequence[str] = ()) -> tuple[np.ndarray, list[str]]:
    """Domain code of each cell from its source name, and the sources not in ``known``.

    A source in ``known`` (the model's domains in slot order) gets its slot; where a name is there twice (a
    target source named like a labelled one) the later slot. Other sources get the codes after the known
    slots, in sorted order of their names.

    Returns
    -------
    codes, unseen
        ``(n_cells,)`` int64 codes, and the unseen names in code order.
    """
    lookup = {str(name): slot for slot, name in enumerate(known)}
    uniq, inverse = np.unique(np.asarray(names).astype(str), return_inverse=True)
    unseen = [u for u in uniq.tolist() if u not in lookup]
    lookup.update({u: len(known) + j for j, u in enumerate(unseen)})
    return np.asarray([lookup[u] for u in uniq.tolist()], dtype=np.int64)[inverse.ravel()], unseen
