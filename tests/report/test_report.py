"""The report on a hand-mapped query: one self-contained file that opens with the answers."""

import base64
import io

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from scconcerto import InputError, OutputExistsError
from scconcerto.report import mapping_report
from scconcerto.report._facts import type_table


def test_report_is_one_self_contained_file_with_decodable_figures(report_file, Page):
    page = Page(report_file)
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    # the only link is the embedded predictions table: nothing is loaded from outside the file
    assert [(link["tag"], link["value"][:13]) for link in page.links] == [("a", "data:text/csv")]
    assert len(page.images) >= 8
    for image in page.images:
        assert image["src"].startswith("data:image/png;base64,")
        decoded = Image.open(io.BytesIO(base64.b64decode(image["src"].split(",", 1)[1])))
        assert decoded.width > 200 and decoded.height > 150
        assert np.asarray(decoded.convert("L")).std() > 5  # not a blank image
    assert "url(" not in page.html


def test_report_opens_with_the_answers_and_ends_with_the_parameters_folded(report_file, Page):
    page = Page(report_file)
    order = page.order
    first_image = next(o for o in order if o.startswith("img:"))
    assert first_image == "img:Predicted cell_type on the reference"  # not the query coloured by source
    assert order.index("img:cell_type: confidence per predicted type") < order.index("section:checks-1")
    assert order.index("section:answers-1") < order.index("section:placement") < order.index("section:overview")
    assert order[-1] == "details:run"  # parameters last, in a <details> closed by default
    details = page.html[page.html.index('<details id="run">'):]
    assert "<details id=\"run\" open" not in page.html and "<th>thresholds.cell_type</th>" in details
    assert page.html.index('id="download"') < page.html.index('id="answers-1"')  # the download comes first


def test_per_type_table_counts_by_hand(report_file, mapped_for_report, Page):
    _, query = mapped_for_report
    pred = query.obs["cell_type_pred"].astype(str)
    table = type_table(query, "cell_type", "cell_type")
    assert table["cells"].to_dict() == pred.value_counts().to_dict()
    assert list(table.index) == list(pred.value_counts().index)  # most cells first
    assert table["share"].sum() == pytest.approx(1.0)
    by_type = query.obs.groupby(pred)
    np.testing.assert_allclose(table["mean_confidence"], by_type["cell_type_confidence"].mean()[table.index],
                               rtol=1e-6)
    np.testing.assert_allclose(table["mean_known_prob"], by_type["cell_type_known_prob"].mean()[table.index],
                               rtol=1e-6)
    unknown = by_type["cell_type_unknown"].sum()[table.index]
    np.testing.assert_array_equal(table["unknown"], unknown)
    np.testing.assert_allclose(table["unknown_share"], unknown / pred.value_counts()[table.index])
    agree = (query.obs["cell_type"].astype(str) == pred).groupby(pred).mean()
    np.testing.assert_allclose(table["agrees_with_given"], agree[table.index])
    # the page shows the same table
    shown = Page(report_file).table("types-cell_type").set_index("predicted type")
    assert list(shown.index) == list(table.index)
    assert shown["cells"].astype(int).tolist() == table["cells"].tolist()
    assert shown["unknown"].astype(int).tolist() == table["unknown"].tolist()
    assert shown["mean confidence"].tolist() == [f"{v:.2f}" for v in table["mean_confidence"]]
    assert shown["unknown share"].tolist() == [f"{100 * v:.1f}%" for v in table["unknown_share"]]


def test_the_embedded_csv_holds_every_cells_prediction(report_file, mapped_for_report, Page):
    _, query = mapped_for_report
    name, frame = Page(report_file).download()
    assert name == "query_predictions.csv"
    assert list(frame.index) == list(query.obs_names)
    assert (frame["cell_type_pred"] == query.obs["cell_type_pred"].astype(str).to_numpy()).all()
    np.testing.assert_allclose(frame["cell_type_confidence"].astype(float), query.obs["cell_type_confidence"],
                               rtol=1e-3)
    assert (frame["cell_type_unknown"].astype(str) == query.obs["cell_type_unknown"].astype(str).to_numpy()).all()
    assert (frame["cell_type"] == query.obs["cell_type"].astype(str).to_numpy()).all()  # the given labels too


def test_the_unknown_note_states_the_threshold_and_the_rate_on_seen_types(report_file, mapped_for_report, Page):
    _, query = mapped_for_report
    text = Page(report_file).text
    unknown = query.obs["cell_type_unknown"].to_numpy(bool)
    assert 0 < unknown.sum() < query.n_obs
    assert "What \"unknown\" means" in text
    assert "is below 0.70" in text  # the threshold recorded in uns['scconcerto_mapping']['thresholds']
    assert f"Here {unknown.sum()} cells ({100 * unknown.mean():.1f}%) are flagged" in text
    # every given label is a reference type here: the rate on seen types is over all cells
    assert (f"Of the {query.n_obs} cells whose given label (cell_type) is a type the reference has, "
            f"{unknown.sum()} ({100 * unknown.mean():.1f}%) are flagged") in text


def test_a_messy_query_shows_no_nan_none_or_empty_sources(mapped_for_report, tmp_path, Page):
    model, query = mapped_for_report
    messy = query.copy()
    del messy.obs["batch"]  # no batch column
    given = messy.obs["cell_type"].astype(object).to_numpy()
    given[::7] = np.nan  # some cells without a given label
    messy.obs["cell_type"] = pd.Categorical(given)
    messy.uns["scconcerto_mapping"] = {**messy.uns["scconcerto_mapping"], "auroc": float("nan"), "note": None,
                                       "finetune": {"epochs": None, "loss": np.array([np.nan, 1.5])}}
    page = Page(mapping_report(messy, model, tmp_path / "r.html"))
    assert page.missing_shown() == []
    query_rows = [row[0] for row in page.tables["query-facts"]]
    assert query_rows[:3] == ["file", "cells", "genes"] and not any("sources" in r for r in query_rows)
    params = dict(page.tables["parameters"])
    assert params["auroc"] == "–" and params["note"] == "–" and params["finetune.loss"] == "–, 1.5"
    _, frame = page.download()
    assert (frame["cell_type"].iloc[::7] == "").all()  # a missing label is an empty field, not "nan"


def test_report_without_given_labels_or_coordinates_says_what_it_cannot_show(mapped_for_report, tmp_path, Page):
    model, query = mapped_for_report
    bare = ad.AnnData(obs=query.obs.drop(columns=["cell_type"]), uns=dict(query.uns))
    page = Page(mapping_report(bare, model, tmp_path / "r.html"))
    assert page.missing_shown() == []
    assert "Confusion matrix and Sankey plot: the query has no given labels" in page.text
    assert "UMAP: the query has neither a place on the reference UMAP" in page.text
    assert not any(o.startswith("section:checks") for o in page.order)
    assert "img:cell_type: confidence per predicted type" in page.order  # the answers are still there
    assert page.table("types-cell_type")["cells"].astype(int).sum() == query.n_obs


def test_report_refuses_to_overwrite_and_leaves_the_query_untouched(mapped_for_report, tmp_path):
    model, query = mapped_for_report
    before_obs, before_obsm = list(query.obs.columns), sorted(query.obsm)
    target = tmp_path / "r.html"
    target.write_text("keep me")
    with pytest.raises(OutputExistsError):
        mapping_report(query, model, target)
    assert target.read_text() == "keep me"
    mapping_report(query, model, target, overwrite=True, label_keys=["cell_type"])
    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert list(query.obs.columns) == before_obs and sorted(query.obsm) == before_obsm


def test_report_errors_and_gene_overlap_counted_when_not_recorded(mapped_for_report, tmp_path, Page):
    model, query = mapped_for_report
    with pytest.raises(InputError, match="no predictions for \\['other'\\]"):
        mapping_report(query, model, tmp_path / "x.html", label_keys=["other"])
    renamed = query.copy()
    del renamed.uns["scconcerto_mapping"]
    renamed.var_names = [f"x{i}" if i < 100 else g for i, g in enumerate(renamed.var_names)]
    text = Page(mapping_report(renamed, model, tmp_path / "y.html")).text
    vocab = model.setup.genes
    shared = len(set(vocab) & set(renamed.var_names))
    assert shared < 0.8 * len(vocab)
    assert f"{shared} of {len(vocab)} ({100 * shared / len(vocab):.1f}%)" in text
    assert "Gene overlap counted here from gene names" in text
    assert f"Only {100 * shared / len(vocab):.1f}% of the reference genes are in the query" in text
