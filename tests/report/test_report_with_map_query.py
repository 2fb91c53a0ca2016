"""The report on the real outputs of ``Concerto.map_query`` (with levels, no batch column) and ``Concerto.predict``
(the names they write are the report's contract)."""

import numpy as np
import pytest

from scconcerto.mapping.label_model import FALSE_REJECTION, at_seen_prior
from scconcerto.report import mapping_report


@pytest.fixture(scope="module")
def levels_page(levels_mapped, tmp_path_factory, Page):
    model, query = levels_mapped
    path = tmp_path_factory.mktemp("levels") / "r.html"
    return Page(mapping_report(query, model, path, query_name="query.h5ad"))


def test_report_reads_what_map_query_writes(levels_mapped, levels_page):
    model, query = levels_mapped
    text = levels_page.text
    info = query.uns["scconcerto_mapping"]
    assert levels_page.html.count("<title>scConcerto mapping report</title>") == 1
    for key in ("cell_type_major", "cell_type"):
        truth = query.obs[key].astype(str).to_numpy()
        pred = query.obs[f"{key}_pred"].astype(str).to_numpy()
        assert f"Against {key} ({query.n_obs} labelled cells): accuracy {np.mean(truth == pred):.3f}" in text
        assert f"{key}_known_prob']) is below {info['thresholds'][key]:.2f}" in text
        table = levels_page.table(f"types-{key}")
        assert table["cells"].astype(int).sum() == query.n_obs
        assert table["unknown"].astype(int).sum() == int(query.obs[f"{key}_unknown"].sum())
    n_shared, n_vocab = info["gene_overlap"]["n_shared"], info["gene_overlap"]["n_vocab"]
    assert f"{n_shared:,} of {n_vocab:,}" in text and "counted here" not in text
    assert "img:Predicted cell_type on the reference" in levels_page.order
    assert levels_page.missing_shown() == []


def test_the_unknown_rate_on_seen_types_comes_from_the_models_calibration(levels_mapped, levels_page):
    model, query = levels_mapped
    decision = model.label_model("cell_type", query.uns["scconcerto_mapping"]["space"])
    prior = query.uns["scconcerto_mapping"]["known_share"]  # the probabilities and threshold at this prior
    assert query.uns["scconcerto_mapping"]["thresholds"]["cell_type"] in (
        pytest.approx(at_seen_prior(decision.threshold, prior), abs=1e-6),
        pytest.approx(at_seen_prior(decision.threshold_small, prior), abs=1e-6))
    cells = int(decision.report["held_out_cells"])
    assert (f"This is the model's default threshold: {100 * FALSE_REJECTION:.0f}% of the {cells:,} held-out "
            "reference cells (all of types it has) fall below it") in levels_page.text
    flagged = query.obs["cell_type_unknown"].to_numpy(bool)
    assert (f"{flagged.sum()} ({100 * flagged.mean():.1f}%) are flagged (calibrated rate on seen types: "
            f"{100 * FALSE_REJECTION:.0f}%)") in levels_page.text


def test_a_threshold_set_by_hand_is_told_apart_from_the_default(levels_model, tmp_path, Page):
    model, query = levels_model
    mapped = model.map_query(query, unknown_threshold=0.5, device="cpu", copy=True)
    text = Page(mapping_report(mapped, model, tmp_path / "r.html")).text
    assert "is below 0.50" in text and "This threshold was set when mapping; the model's default (" in text
    assert "This is the model's default threshold" not in text


def test_levels_are_shown_as_a_hierarchy(levels_mapped, levels_page):
    _, query = levels_mapped
    assert "section:hierarchy" in levels_page.order
    assert "img:cell_type_major to cell_type" in levels_page.order
    assert levels_page.order.index("section:hierarchy") < levels_page.order.index("section:checks-1")
    rows = levels_page.tables["levels-cell_type_major-cell_type"]
    header, body = rows[0], rows[1:]
    assert header[:3] == ["cell_type_major", "cell_type", "cells"]
    pairs = query.obs.groupby([query.obs["cell_type_major_pred"].astype(str),
                               query.obs["cell_type_pred"].astype(str)]).size()
    shown = {(r[0], r[1]): int(r[2]) for r in body}
    assert shown == {k: int(v) for k, v in pairs[pairs > 0].items()}


def test_a_query_without_a_batch_column_has_no_sources(levels_page):
    assert not any("sources" in row[0] for row in levels_page.tables["query-facts"])
    assert not any("sources" in row[0] for row in levels_page.tables["reference-facts"])
    assert "img:Query by source" not in levels_page.order


def test_the_annotation_report_has_its_own_title_and_a_umap(annotated, tmp_path, Page):
    model, query = annotated
    page = Page(mapping_report(query, model, tmp_path / "a.html"))
    assert "<title>scConcerto annotation report</title>" in page.html and "mapping report" not in page.text
    boxes = "img:cell_type: confidence per predicted type"
    assert page.order.index("img:Predicted cell_type") < page.order.index(boxes)
    umap = next(i for i in page.images if i["alt"] == "Predicted cell_type")
    assert umap["src"].startswith("data:image/png;base64,")
    assert "What was annotated" in page.text and "computed from the model's embedding of the query" in page.text
    score = query.uns["scconcerto_annotation"]
    threshold = score["unknown_threshold"]
    assert f"is below {threshold:.2f}" in page.text
    assert "the classifier's calibrated probability that the predicted label is right" in page.text
    assert page.table("types-cell_type")["cells"].astype(int).sum() == query.n_obs
    assert page.missing_shown() == []


def test_report_command_titles_an_annotated_query_as_an_annotation_report(annotated, tmp_path, capsys, Page):
    from scconcerto.cli import main

    model, query = annotated
    model.save(tmp_path / "model")
    query.write_h5ad(tmp_path / "annotated.h5ad")
    out = tmp_path / "report.html"
    assert main(["report", str(tmp_path / "annotated.h5ad"), "--model", str(tmp_path / "model"),
                 "--out", str(out)]) == 0
    page = Page(out)
    assert "<title>scConcerto annotation report</title>" in page.html
    assert page.order[:3] == ["section:answers-1", "img:Predicted cell_type",
                              "img:cell_type: confidence per predicted type"]
    name, frame = page.download()
    assert name == "annotated_predictions.csv" and len(frame) == query.n_obs
