"""MuData (.h5mu) input: RNA + protein modalities read as one AnnData, and the CLI on .h5mu files."""

import json
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scconcerto import InputError
from scconcerto.data.readers import from_mudata, read

mudata = pytest.importorskip("mudata")


def _as_mudata(adata: ad.AnnData, protein_name: str = "prot", shuffle_protein: bool = True) -> "mudata.MuData":
    rna = adata.copy()
    del rna.obsm["protein"]
    prot = ad.AnnData(np.asarray(adata.obsm["protein"], dtype=np.float32),
                      obs=pd.DataFrame(index=adata.obs_names.copy()),
                      var=pd.DataFrame(index=[str(p) for p in adata.uns["protein_names"]]))
    if shuffle_protein:  # the modalities need not list the cells in the same order
        prot = prot[np.random.default_rng(0).permutation(prot.n_obs)].copy()
    mdata = mudata.MuData({"rna": rna, protein_name: prot})
    mdata.obs["donor"] = "d1"  # a global obs column
    return mdata


def test_from_mudata_aligns_the_proteins_by_cell(sim_protein):
    adata = sim_protein[:100].copy()
    out = from_mudata(_as_mudata(adata))
    assert list(out.obs_names) == list(adata.obs_names)
    np.testing.assert_allclose(out.obsm["protein"], adata.obsm["protein"])
    assert out.uns["protein_names"] == [str(p) for p in adata.uns["protein_names"]]
    assert (out.obs["donor"] == "d1").all() and "cell_type" in out.obs
    assert (out.X != adata.X).nnz == 0


def test_read_h5mu_with_named_modalities_and_clear_errors(sim_protein, tmp_path):
    mdata = _as_mudata(sim_protein[:60].copy(), protein_name="antibodies")
    mdata.write(tmp_path / "cells.h5mu")
    rna_only = read(tmp_path / "cells.h5mu")  # an unknown protein name: RNA only
    assert "protein" not in rna_only.obsm and rna_only.n_obs == 60
    both = read(tmp_path / "cells.h5mu", protein_modality="antibodies")
    assert both.obsm["protein"].shape == (60, sim_protein.obsm["protein"].shape[1])
    with pytest.raises(InputError, match="no modality 'adt'"):
        read(tmp_path / "cells.h5mu", protein_modality="adt")
    partial = _as_mudata(sim_protein[:60].copy())
    partial.mod["prot"] = partial.mod["prot"][:50].copy()
    partial.update()
    with pytest.raises(InputError, match="10 of 60 cells"):
        from_mudata(partial)


def test_missing_mudata_names_the_extra(sim_protein, tmp_path, monkeypatch):
    _as_mudata(sim_protein[:20].copy()).write(tmp_path / "c.h5mu")
    monkeypatch.setitem(sys.modules, "mudata", None)  # as if it were not installed
    with pytest.raises(InputError, match=r"pip install scconcerto\[mudata\]"):
        read(tmp_path / "c.h5mu")


def test_train_map_and_annotate_read_h5mu(sim_protein, tmp_path, capsys):
    from scconcerto.cli import main

    _as_mudata(sim_protein[:400].copy()).write(tmp_path / "ref.h5mu")
    _as_mudata(sim_protein[400:].copy()).write(tmp_path / "query.h5mu")
    assert main(["train", str(tmp_path / "ref.h5mu"), "--out", str(tmp_path / "model"), "--epochs", "3",
                 "--label-key", "cell_type", "--batch-key", "batch", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["proteins"] == sim_protein.obsm["protein"].shape[1]
    assert main(["map", str(tmp_path / "model"), str(tmp_path / "query.h5mu"), "--out", str(tmp_path / "m.h5ad"),
                 "--device", "cpu", "--no-umap"]) == 0
    capsys.readouterr()
    mapped = ad.read_h5ad(tmp_path / "m.h5ad")
    assert mapped.uns["scconcerto_mapping"]["with_protein"] and "cell_type_pred" in mapped.obs
    assert main(["annotate", "train", str(tmp_path / "ref.h5mu"), "--pretrained", str(tmp_path / "model"),
                 "--label-key", "cell_type", "--epochs", "2", "--out", str(tmp_path / "clf"), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["annotate", "predict", str(tmp_path / "clf"), str(tmp_path / "query.h5mu"),
                 "--out", str(tmp_path / "a.h5ad"), "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["modalities"] == "rna+protein"


def test_concerto_takes_a_mudata(sim_protein):
    from scconcerto import Concerto

    model = Concerto(_as_mudata(sim_protein[:100].copy()), label_key="cell_type")
    assert model.setup.protein_key == "protein"
    assert model.setup.proteins == [str(p) for p in sim_protein.uns["protein_names"]]
