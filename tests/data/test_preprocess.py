import numpy as np
import pytest
import scipy.sparse as sp

from scconcerto import InputError
from scconcerto.data import detect_input_kind, normalize_values


def test_detects_counts_lognormalized_and_normalized():
    assert detect_input_kind(np.array([1.0, 3.0, 7.0])) == "counts"
    assert detect_input_kind(np.log1p(np.array([1.5, 3.2, 7.0]))) == "log_normalized"
    assert detect_input_kind(np.array([150.5, 3.2, 7000.0])) == "normalized"


@pytest.mark.parametrize("bad, msg", [(np.array([1.0, np.nan]), "NaN"), (np.array([1.0, -2.0]), "negative")])
def test_bad_values_are_clear_errors(bad, msg):
    with pytest.raises(InputError, match=msg):
        detect_input_kind(bad)


def test_counts_are_normalized_like_scanpy():
    import anndata as ad
    import scanpy as sc

    x = sp.random(20, 50, density=0.3, format="csr", random_state=0, dtype=np.float32)
    x.data = np.ceil(x.data * 10)
    totals = np.asarray(x.sum(1)).ravel()
    row_of = np.repeat(np.arange(20), np.diff(x.indptr))
    ours = normalize_values(x.data, row_of, totals, "counts")
    a = ad.AnnData(x.copy())
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    np.testing.assert_allclose(ours, a.X.data, rtol=1e-5)
    np.testing.assert_array_equal(normalize_values(x.data, row_of, totals, "log_normalized"), x.data)
