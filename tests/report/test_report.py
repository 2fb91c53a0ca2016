import base64
import io
from html.parser import HTMLParser

import anndata as ad
import numpy as np
import pytest
from PIL import Image

from scconcerto import InputError, OutputExistsError
from scconcerto.report import mapping_report
from scconcerto.report._facts import predicted_table


class _Resources(HTMLParser):
    """Collects every tag and every attribute that could load something."""

    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for name in ("href", "src", "data"):
            if name in attrs and tag != "img":
                self.links.append(f"{tag} {name}={attrs[name]}")


def _parse(path):
    parser = _Resources()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def test_report_is_one_self_contained_file_with_decodable_figures(report_file):
    page = _parse(report_file)
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    assert page.links == []  # nothing is loaded from outside the file
    # placement: by source, per-source panels; cell_type: label, confidence, histogram, confusion, Sankey;
    # imputed proteins; training loss
    assert len(page.images) == 9
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert image.width > 200 and image.height > 150
        pixels = np.asarray(image.convert("L"))
        assert pixels.std() > 5  # not a blank image
    assert "url(" not in report_file.read_text(encoding="utf-8")


def test_report_states_the_mapping_facts(report_file, mapped_for_report):
    model, query = mapped_for_report
    text = report_file.read_text(encoding="utf-8")
    truth = query.obs["cell_type"].astype(str).to_numpy()
    pred = query.obs["cell_type_pred"].astype(str).to_numpy()
    n_unknown = int(query.obs["cell_type_unknown"].sum())
    assert 0 < n_unknown < query.n_obs
    assert f"accuracy {np.mean(truth == pred):.3f}" in text
    assert f"{n_unknown} ({100 * n_unknown / query.n_obs:.1f}%) called unknown (confidence below 0.70)" in text
    assert "300 of 300 (100.0%)" in text  # gene overlap recorded by mapping
    assert f"{query.n_obs} query cells from 1 source(s)" in text
    assert f"reference of {model.reference.embedding.shape[0]:,} cells" in text
    n_batch0 = int((model.reference.domains == 0).sum())
    assert "tech_new: 200" in text and f"batch_0: {n_batch0}" in text  # query and reference sources
    assert "mapping: timings.embed_seconds" in text and "this report" in text
    for package in ("scconcerto", "torch", "scanpy", "anndata", "numpy"):
        assert f"<th>{package}</th>" in text
    assert "ref_model/" in text and "query.h5ad" in text
    for protein in ("CD3", "CD19", "CD14"):
        assert f"<td>{protein}</td>" in text


def test_predicted_label_table_counts_by_hand(mapped_for_report):
    _, query = mapped_for_report
    table = predicted_table(query, "cell_type", "cell_type")
    counts = query.obs["cell_type_pred"].astype(str).value_counts()
    assert table["cells"].to_dict() == counts.to_dict()
    assert table["share"].sum() == pytest.approx(1.0)
    assert table["unknown"].sum() == query.obs["cell_type_unknown"].sum()
    conf = query.obs.groupby(query.obs["cell_type_pred"].astype(str))["cell_type_confidence"]
    np.testing.assert_allclose(table["mean_confidence"], conf.mean()[table.index], rtol=1e-6)
    agree = (query.obs["cell_type"].astype(str) == query.obs["cell_type_pred"].astype(str)).groupby(
        query.obs["cell_type_pred"].astype(str)).mean()
    np.testing.assert_allclose(table["agrees_with_given"], agree[table.index])


def test_report_without_given_labels_or_coordinates_says_what_it_cannot_show(mapped_for_report, tmp_path):
    model, query = mapped_for_report
    bare = ad.AnnData(obs=query.obs.drop(columns=["cell_type"]), uns=dict(query.uns))
    path = mapping_report(bare, model, tmp_path / "r.html")
    text = path.read_text(encoding="utf-8")
    page = _parse(path)
    assert len(page.images) == 2  # confidence histogram and training loss
    assert "need given labels" in text
    assert "no UMAP is drawn" in text
    assert "accuracy" not in text.split("Label transfer")[1].split("</section>")[0]


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


def test_report_errors_and_gene_overlap_counted_when_not_recorded(mapped_for_report, tmp_path):
    model, query = mapped_for_report
    with pytest.raises(InputError, match="no predictions for \\['other'\\]"):
        mapping_report(query, model, tmp_path / "x.html", label_keys=["other"])
    renamed = query.copy()
    del renamed.uns["scconcerto_mapping"]
    renamed.var_names = [f"x{i}" if i < 100 else g for i, g in enumerate(renamed.var_names)]
    text = mapping_report(renamed, model, tmp_path / "y.html").read_text(encoding="utf-8")
    vocab = model.setup.genes
    shared = len(set(vocab) & set(renamed.var_names))
    assert shared < 0.8 * len(vocab)
    assert f"{shared} of {len(vocab)} ({100 * shared / len(vocab):.1f}%)" in text
    assert "Counted here" in text and "Less than 80%" in text
