"""attention_heatmap / attention_dotplot: scanpy-style figures of mean attention on each group's top features."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from scconcerto import InputError  # noqa: E402
from scconcerto.plotting import attention_dotplot, attention_heatmap  # noqa: E402
from scconcerto.tools import rank_attention  # noqa: E402


@pytest.fixture(scope="module")
def sim_att(trained_model, sim):
    return trained_model.attention(sim)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _tick_labels(fig: Figure) -> set[str]:
    return {t.get_text() for ax in fig.axes for t in ax.get_xticklabels()}


def _expected_columns(ranking: dict[str, list[str]]) -> list[str]:
    seen: list[str] = []
    for names in ranking.values():
        seen += [n for n in names if n not in seen]
    return seen


def test_heatmap_draws_the_stored_ranking_and_saves(sim, sim_att, tmp_path):
    import pandas as pd

    data = sim.copy()
    rank_attention(data, "cell_type", attention=sim_att, n_top=3)
    groups = list(data.obs["cell_type"].cat.categories)
    stored = {g: [f"gene_{280 + 3 * k}", f"gene_{281 + 3 * k}", f"gene_{282 + 3 * k}"] for k, g in enumerate(groups)}
    scores = {g: [2.0, 1.0, -1.0] for g in groups}  # the third feature is attended less than elsewhere
    data.uns["rank_attention"]["names"] = pd.DataFrame(stored).to_records(index=False, column_dtypes="O")
    data.uns["rank_attention"]["scores"] = pd.DataFrame(scores).to_records(index=False, column_dtypes="float32")
    fig = attention_heatmap(data, "cell_type", attention=sim_att, n_top=3, save=tmp_path / "heat.png", show=False)
    assert isinstance(fig, Figure)
    shown = _tick_labels(fig) & set(sim.var_names)
    assert shown == set(_expected_columns({g: names[:2] for g, names in stored.items()}))
    assert (tmp_path / "heat.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_a_stored_ranking_the_contrast_ranking_is_drawn(sim, sim_att):
    data = sim.copy()
    fig = attention_heatmap(data, "cell_type", attention=sim_att, n_top=2)
    ranked = rank_attention(sim.copy(), "cell_type", attention=sim_att, n_top=2)
    expected = _expected_columns({g: list(t["feature"]) for g, t in ranked.items()})
    assert _tick_labels(fig) & set(sim.var_names) == set(expected)
    assert "rank_attention" not in data.uns  # plotting does not write results


def test_dotplot_into_a_given_axes(sim, sim_att, trained_model):
    fig, ax = plt.subplots(figsize=(6, 3))
    out = attention_dotplot(sim.copy(), "cell_type", model=trained_model, n_top=2, ax=ax, show=False)
    assert out is fig
    assert len(fig.axes) > 1  # scanpy split the axes area into main plot, brackets and legends


def test_bad_arguments(sim, sim_att):
    with pytest.raises(InputError, match="n_top"):
        attention_heatmap(sim.copy(), "cell_type", attention=sim_att, n_top=0)
    with pytest.raises(InputError, match="model"):
        attention_heatmap(sim.copy(), "cell_type")
    with pytest.raises(InputError, match="extension"):
        attention_heatmap(sim.copy(), "cell_type", attention=sim_att, save="no_suffix")


def test_scc_pl_and_tl_aliases():
    import scconcerto as scc

    assert scc.pl.attention_heatmap is attention_heatmap and scc.tl.rank_attention is rank_attention
    assert "attention_heatmap" in scc.pl.__all__ and "rank_attention" in scc.tl.__all__
