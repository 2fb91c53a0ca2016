"""Property-based fuzzing: random small AnnData objects thrown at train, embed and map either work
(finite outputs) or raise the package's own error class."""

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scconcerto import Concerto, ScConcertoError


@st.composite
def small_adata(draw):
    n_obs = draw(st.integers(1, 24))
    n_vars = draw(st.integers(1, 12))
    density = draw(st.floats(0.0, 1.0))
    kind = draw(st.sampled_from(["counts", "lognorm", "large", "negative", "nan"]))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int32]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    mask = rng.random((n_obs, n_vars)) < density
    if kind == "counts":
        vals = rng.poisson(3.0, (n_obs, n_vars)) + 1.0
    elif kind == "lognorm":
        vals = np.log1p(rng.random((n_obs, n_vars)) * 50)
    elif kind == "large":
        vals = rng.random((n_obs, n_vars)) * 1e6
    elif kind == "negative":
        vals = rng.normal(size=(n_obs, n_vars))
    else:
        vals = rng.random((n_obs, n_vars))
        vals[0, 0] = np.nan
        mask[0, 0] = True
    x = np.where(mask, vals, 0).astype(dtype if kind in ("counts",) else np.float64)
    matrix = sp.csr_matrix(x) if draw(st.booleans()) else x
    names = draw(st.sampled_from(["genes", "numbers", "dups"]))
    var_names = {"genes": [f"G{i}" for i in range(n_vars)], "numbers": [str(i) for i in range(n_vars)],
                 "dups": ["G"] * n_vars}[names]
    obs = pd.DataFrame({"batch": rng.choice(["a", "b"], n_obs), "label": rng.choice(["x", "y", None], n_obs)},
                       index=[f"c{i}" for i in range(n_obs)])
    return ad.AnnData(matrix, obs=obs, var=pd.DataFrame(index=var_names))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(adata=small_adata(), use_batch=st.booleans())
def test_train_and_embed_succeed_with_finite_output_or_raise_our_error(adata, use_batch):
    try:
        model = Concerto(adata, batch_key="batch" if use_batch else None, label_key="label", dim=8, out_dim=8)
        model.train(epochs=1, batch_size=8, progress=False, device="cpu")
        emb = model.embed(adata)
    except ScConcertoError:
        return
    assert emb.shape == (adata.n_obs, 8)
    assert np.all(np.isfinite(emb))
    query = adata.copy()
    query.obs["batch"] = "unseen"
    try:
        model.map_query(query, k=3, device="cpu")
    except ScConcertoError:
        return
    assert np.all(np.isfinite(query.obsm["X_concerto"]))
    if "label_pred" in query.obs:
        conf = query.obs["label_confidence"].to_numpy()
        assert np.all((conf >= 0) & (conf <= 1))
