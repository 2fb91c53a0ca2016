import hashlib
import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scconcerto.cli import main
from scconcerto.metrics import ari


@pytest.fixture(scope="module")
def embedded_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 50)
    x = (rng.normal(size=(3, 12)) * 4)[labels] + rng.normal(size=(150, 12))
    adata = ad.AnnData(obs=pd.DataFrame({"truth": labels.astype(str)}, index=[f"c{i}" for i in range(150)]),
                       obsm={"X_concerto": x.astype(np.float32)})
    path = tmp_path_factory.mktemp("cluster") / "embedded.h5ad"
    adata.write_h5ad(path)
    return path


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cluster_writes_leiden_clusters_without_touching_the_input(embedded_file, tmp_path, capsys):
    before = _sha(embedded_file)
    out = tmp_path / "clustered.h5ad"
    assert main(["cluster", str(embedded_file), "--resolution", "0.5", "--out", str(out)]) == 0
    result = ad.read_h5ad(out)
    assert ari(result.obs["truth"], result.obs["leiden"]) == pytest.approx(1.0)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n_clusters"] == 3 and summary["resolution"] == 0.5
    assert _sha(embedded_file) == before


def test_cluster_sweep_reports_silhouette_per_resolution(embedded_file, tmp_path, capsys):
    out = tmp_path / "swept.h5ad"
    assert main(["cluster", str(embedded_file), "--sweep", "0.3,5", "--out", str(out), "--key-added", "cl"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [row["resolution"] for row in summary["sweep"]] == [0.3, 5.0]
    assert summary["sweep"][0]["n_clusters"] == 3 < summary["sweep"][1]["n_clusters"]
    assert summary["sweep"][0]["silhouette"] > summary["sweep"][1]["silhouette"]
    assert summary["resolution"] == 0.3  # the best silhouette is kept when no resolution is given
    result = ad.read_h5ad(out)
    assert {"cl", "cl_0.3", "cl_5"} <= set(result.obs.columns)
    np.testing.assert_allclose(result.uns["cl_sweep"]["silhouette"], [r["silhouette"] for r in summary["sweep"]],
                               atol=1e-4)


def test_cluster_refuses_existing_output_and_reports_bad_input(embedded_file, tmp_path, capsys):
    out = tmp_path / "exists.h5ad"
    out.write_text("keep me")
    assert main(["cluster", str(embedded_file), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_text() == "keep me"
    assert main(["cluster", str(embedded_file), "--out", str(tmp_path / "x.h5ad"), "--use-rep", "X_pca"]) == 2
    assert "X_pca" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["cluster", str(embedded_file), "--out", str(tmp_path / "y.h5ad"), "--sweep", "a,b"])
