import anndata as ad
import numpy as np
import pytest

from scconcerto import InputError
from scconcerto import plotting as pl
from scconcerto.data.setup import normalize_protein


def test_pearson_per_column_matches_numpy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 4))
    b = a * [1, -2, 0, 1] + rng.normal(size=(50, 4))
    expected = [np.corrcoef(a[:, j], b[:, j])[0, 1] for j in range(4)]
    r = pl.pearson_per_column(a, b)
    np.testing.assert_allclose(r, expected, rtol=1e-10)
    assert r[1] < -0.5 and abs(r[2]) < 0.5  # anti-correlated; noise only
    assert np.isnan(pl.pearson_per_column(np.ones((5, 1)), np.arange(5.0)[:, None])[0])


def _protein_query():
    rng = np.random.default_rng(1)
    raw = rng.poisson(rng.uniform(1, 50, size=(80, 3))).astype(np.float32)
    imputed = normalize_protein(raw, "clr")
    imputed[:, 2] = rng.normal(size=80)  # the third protein is imputed badly
    return ad.AnnData(obsm={"protein": raw, "protein_imputed": imputed[:, [2, 0, 1]]},
                      uns={"protein_names": np.array(["A", "B", "C"]),
                           "protein_imputed_names": np.array(["C", "A", "B"])})


def test_measured_proteins_are_normalized_and_matched_by_name():
    q = _protein_query()
    measured, imputed, names = pl.measured_vs_imputed(q, normalize="clr")
    assert names == ["C", "A", "B"]
    r = pl.pearson_per_column(measured, imputed)
    np.testing.assert_allclose(r[1:], 1.0, atol=1e-6)  # A and B imputed exactly (after CLR)
    assert abs(r[0]) < 0.4
    raw_r = pl.pearson_per_column(*pl.measured_vs_imputed(q, normalize=None)[:2])
    assert raw_r[1] < 0.999  # without the model's normalization they do not match exactly


def test_protein_imputation_panels_are_titled_with_r_best_first():
    q = _protein_query()
    fig = pl.protein_imputation(q, normalize="clr")
    titles = [a.get_title() for a in fig.axes if a.get_visible()]
    assert titles[:2] == ["A  r = 1.00", "B  r = 1.00"] and titles[2].startswith("C  r = ")
    one = pl.protein_imputation(q, proteins=["C"], normalize="clr")
    assert [a.get_title()[:1] for a in one.axes if a.get_visible()] == ["C"]
    with pytest.raises(InputError, match="not both measured and imputed"):
        pl.protein_imputation(q, proteins=["Z"])
    with pytest.raises(InputError, match="no imputed proteins"):
        pl.protein_imputation(ad.AnnData(obsm={"protein": q.obsm["protein"]}))


def test_loss_curve_plots_the_history():
    history = [{"epoch": 0, "loss": 5.0, "seconds": 1.0}, {"epoch": 1, "loss": 4.0, "seconds": 1.0},
               {"epoch": 2, "loss": 3.5, "seconds": 1.0}]
    fig = pl.loss_curve(history)
    line = fig.axes[0].lines[0]
    np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3])
    np.testing.assert_array_equal(line.get_ydata(), [5.0, 4.0, 3.5])
    assert "5.000 → 3.500 in 3 epochs (3 s)" in fig.axes[0].get_title()
    with pytest.raises(InputError, match="no training history"):
        pl.loss_curve([])


def test_loss_curve_of_a_trained_model(trained_model):
    line = pl.loss_curve(trained_model).axes[0].lines[0]
    np.testing.assert_allclose(line.get_ydata(), [h["loss"] for h in trained_model.history])
