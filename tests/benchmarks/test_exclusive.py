"""One-source variants: a lineage kept in the source richest in it, every other cell untouched."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from benchmarks.tasks.exclusive import kept_in_one_source, load_exclusive


def _cells() -> ad.AnnData:
    types = ["mono"] * 6 + ["T"] * 6 + ["DC"] * 3 + ["B"] * 5
    batches = ["a", "b", "b", "b", "c", "c"] + ["a", "a", "b", "b", "c", "c"] + ["a", "c", "c"] + ["a"] * 5
    x = sp.csr_matrix(np.arange(len(types) * 3, dtype=np.float32).reshape(len(types), 3))
    return ad.AnnData(x, obs=pd.DataFrame({"cell_type": types, "batch": batches},
                                          index=[f"c{i}" for i in range(len(types))]))


def test_a_lineage_stays_only_in_the_source_richest_in_it():
    adata = _cells()
    out = kept_in_one_source(adata, ("mono", "DC"))
    kept = out.obs[out.obs["cell_type"].isin(["mono", "DC"])]
    # b holds 3 monocytes, c holds 2 monocytes and 2 DCs: c holds most of the lineage
    assert set(kept["batch"]) == {"c"} and len(kept) == 4
    others = adata.obs[~adata.obs["cell_type"].isin(["mono", "DC"])]
    assert out.obs_names[~out.obs["cell_type"].isin(["mono", "DC"])].tolist() == others.index.tolist()
    np.testing.assert_array_equal(out[others.index].X.toarray(), adata[others.index].X.toarray())
    assert adata.n_obs == 20  # the input is not modified


def test_only_known_variants_are_built(tmp_path):
    with pytest.raises(ValueError, match="none of the types"):
        kept_in_one_source(_cells(), ("NK",))
    with pytest.raises(ValueError, match="not a one-source variant"):
        load_exclusive(tmp_path, "symphony_pbmc_3tech:donors", [])
    with pytest.raises(ValueError, match="no myeloid labels"):
        load_exclusive(tmp_path, "scmerge_mesc:myeloid-in-one", [])
    skipped: list[str] = []
    assert load_exclusive(tmp_path, "cbmc_citeseq:donors-shift:myeloid-in-one", skipped) is None and skipped
