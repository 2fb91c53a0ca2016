"""Opt-in, real data (SCCONCERTO_DATA): a query in versioned Ensembl ids maps onto a symbol reference as well as
the same query in symbols."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scconcerto import Concerto
from scconcerto._io import read_h5ad
from scconcerto.data.genes import gene_table

pytestmark = pytest.mark.data


def _as_ensembl(names: pd.Index) -> np.ndarray:
    """Each symbol as its versioned GENCODE id when the shipped table gives it one id, else a made-up id
    (a gene the model cannot know, as an id of another annotation release would be)."""
    human = gene_table("human")
    one_id = human.drop_duplicates("symbol", keep=False).set_index("symbol")["id"]
    ids = pd.Series(names).map(one_id)
    made_up = pd.Series([f"ENSG9{i:010d}" for i in range(len(names))])
    ids = ids.where(ids.notna(), made_up)
    return (ids + "." + pd.Series(np.arange(len(names)) % 20 + 1).astype(str)).to_numpy()


def test_ensembl_query_maps_like_the_symbol_query(data_dir):
    adata = read_h5ad(Path(data_dir) / "symphony_pbmc_3tech" / "symphony_pbmc_3tech.h5ad")
    is_query = (adata.obs["batch"] == "5p").to_numpy()
    ref, query = adata[~is_query].copy(), adata[is_query].copy()
    model = Concerto(ref, batch_key="batch", label_key="cell_type", seed=0).train(epochs=10, progress=False,
                                                                                  device="cpu")
    truth = query.obs["cell_type"].astype(str).to_numpy()
    symbols = query.copy()
    model.map_query(symbols, place=False, device="cpu")
    ids = query.copy()
    ids.var_names = _as_ensembl(query.var_names)
    model.map_query(ids, place=False, device="cpu")
    overlap = ids.uns["scconcerto_mapping"]["gene_overlap"]
    assert overlap["matched_by"]["id_symbol"] > 0.75 * ref.n_vars  # converted back through the shipped table
    acc_symbols = float(np.mean(symbols.obs["cell_type_pred"].astype(str).to_numpy() == truth))
    acc_ids = float(np.mean(ids.obs["cell_type_pred"].astype(str).to_numpy() == truth))
    print(f"symphony 5p query: accuracy {acc_symbols:.4f} in symbols, {acc_ids:.4f} in Ensembl ids "
          f"({overlap['n_shared']} of {overlap['n_vocab']} genes)")
    # a briefly trained network (10 epochs; seeds 0-1 gave 0.77-0.83 here): far above the largest type's share
    # (0.29), and the ids must not cost more than a few of the 430 cells
    assert acc_symbols > 0.7 and abs(acc_ids - acc_symbols) <= 0.02
