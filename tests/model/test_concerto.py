import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from scconcerto import Concerto, InputError, ModelFileError
from scconcerto.datasets import simulate
from scconcerto.metrics import batch_entropy, knn_label_accuracy


def test_every_cell_is_embedded_on_the_unit_sphere(trained_model, sim):
    emb = trained_model.embed(sim)
    assert emb.shape == (sim.n_obs, 128) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(trained_model.reference.embedding, emb, atol=1e-6)


def test_save_load_gives_bit_identical_embeddings(trained_model, sim, tmp_path):
    trained_model.save(tmp_path / "m")
    loaded = Concerto.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.embed(sim), trained_model.embed(sim))
    np.testing.assert_array_equal(loaded.reference.embedding, trained_model.reference.embedding)
    for key, codes in trained_model.reference.labels.items():
        np.testing.assert_array_equal(loaded.reference.labels[key], codes)
    assert loaded.setup == trained_model.setup
    assert loaded.train_config == trained_model.train_config


def test_save_refuses_to_overwrite_and_keeps_the_old_model(trained_model, tmp_path):
    path = trained_model.save(tmp_path / "m")
    before = (path / "weights.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        trained_model.save(path)
    assert (path / "weights.safetensors").read_bytes() == before
    trained_model.save(path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary leftovers


def test_loading_rejects_missing_tampered_and_newer_files(trained_model, tmp_path):
    path = trained_model.save(tmp_path / "m")
    weights = path / "weights.safetensors"
    tensors = load_file(str(weights))
    tensors.pop(next(iter(tensors)))
    save_file(tensors, str(weights))
    with pytest.raises(ModelFileError, match="checksum"):
        Concerto.load(path)
    cfg = json.loads((path / "config.json").read_text())
    from scconcerto.model.storage import _sha256, config_checksum

    def write(cfg):  # an edit that also updates the checksums, as a deliberate tampering would
        cfg["config_checksum"] = config_checksum(cfg)
        (path / "config.json").write_text(json.dumps(cfg))

    cfg["checksums"]["weights.safetensors"] = _sha256(weights)
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFileError, match="its own checksum"):
        Concerto.load(path)
    write(cfg)
    with pytest.raises(ModelFileError, match="do not match the network: missing"):
        Concerto.load(path)
    cfg["format_version"] = 99
    write(cfg)
    with pytest.raises(ModelFileError, match="newer"):
        Concerto.load(path)
    cfg["format_version"] = 1  # the format before typed mapping and classifier entries: train again
    write(cfg)
    with pytest.raises(ModelFileError, match="earlier format.*Train the model again"):
        Concerto.load(path)
    cfg["format_version"] = 2
    cfg["files"]["weights"] = "../../etc/passwd"
    write(cfg)
    with pytest.raises(ModelFileError, match="plain file name"):
        Concerto.load(path)


def test_query_gene_order_and_extra_genes_do_not_change_the_embedding(trained_model, sim):
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    query = sim[:100].copy()
    perm = np.random.default_rng(0).permutation(query.n_vars)
    # extra genes the model does not know are dropped; they carry no counts here because a cell's
    # normalization uses the total over all of its genes (as scanpy's normalize_total does)
    names = list(query.var_names[perm]) + [f"extra_{i}" for i in range(20)]
    shuffled = ad.AnnData(sp.hstack([query.X[:, perm], sp.csr_matrix((100, 20), dtype=np.float32)]).tocsr(),
                          obs=query.obs.copy(), var=pd.DataFrame(index=names))
    np.testing.assert_allclose(trained_model.embed(shuffled), trained_model.embed(query), atol=1e-5)


def test_unseen_source_gets_adabn_and_the_model_is_unchanged(trained_model, sim):
    before = {k: v.clone() for k, v in trained_model.network.state_dict().items()}
    query = sim[:150].copy()
    query.obs["batch"] = "new_lab"
    emb_new = trained_model.embed(query)
    emb_known = trained_model.embed(sim[:150].copy())
    assert emb_new.shape == (150, 128)
    assert not np.allclose(emb_new, emb_known)  # statistics re-estimated on the query itself
    for k, v in trained_model.network.state_dict().items():
        assert torch.equal(v, before[k])


def test_same_seed_same_embedding(sim):
    small = sim[:200].copy()
    a = Concerto(small, batch_key="batch", seed=3).train(epochs=2, progress=False, device="cpu")
    b = Concerto(small, batch_key="batch", seed=3).train(epochs=2, progress=False, device="cpu")
    c = Concerto(small, batch_key="batch", seed=4).train(epochs=2, progress=False, device="cpu")
    np.testing.assert_array_equal(a.embed(small), b.embed(small))
    assert not np.allclose(a.embed(small), c.embed(small))


def test_training_learns_cell_types_and_mixes_batches():
    adata = simulate(900, 300, n_types=6, n_batches=2, markers_per_type=10, mean_depth=800, batch_effect=0.6,
                     seed=5)
    labels, batches = adata.obs["cell_type"].to_numpy(), adata.obs["batch"].to_numpy()
    untrained = Concerto(adata, batch_key="batch", label_key="cell_type").embed(adata)
    model = Concerto(adata, batch_key="batch", label_key="cell_type").train(epochs=40, progress=False, device="cpu")
    emb = model.embed(adata)
    acc_trained, acc_untrained = knn_label_accuracy(emb, labels), knn_label_accuracy(untrained, labels)
    assert acc_trained > acc_untrained + 0.1, (acc_trained, acc_untrained)
    assert acc_trained > 0.8
    import scanpy as sc

    x = adata.copy()
    sc.pp.normalize_total(x, target_sum=1e4)
    sc.pp.log1p(x)
    sc.pp.pca(x, n_comps=30, random_state=0)
    assert batch_entropy(emb, batches) > batch_entropy(x.obsm["X_pca"], batches) + 0.2
    assert model.history[-1]["loss"] < model.history[0]["loss"]


def test_protein_modality_is_trained_and_saved(sim_protein, tmp_path):
    model = Concerto(sim_protein, batch_key="batch", protein_key="protein").train(epochs=2, progress=False,
                                                                                  device="cpu")
    assert model.setup.proteins == list(sim_protein.uns["protein_names"])
    assert model.reference.protein.shape == (sim_protein.n_obs, 6)
    both = model.embed(sim_protein)
    rna_only = model.embed(sim_protein, use_protein=False)
    assert not np.allclose(both, rna_only)
    model.save(tmp_path / "m")
    np.testing.assert_array_equal(Concerto.load(tmp_path / "m").embed(sim_protein), both)


def test_bad_keys_are_clear_errors(sim):
    with pytest.raises(InputError, match="batch key 'nope'"):
        Concerto(sim, batch_key="nope")
    with pytest.raises(InputError, match="protein key"):
        Concerto(sim, protein_key="nope")
    with pytest.raises(InputError, match="Layer 'counts'"):
        Concerto(sim, layer="counts")


def test_default_epochs_give_small_references_more_passes_and_large_ones_at_least_two():
    from scconcerto.model import default_epochs

    assert default_epochs(0) == 100 and default_epochs(600) == 100  # ~60k cell visits, at most 100 epochs
    assert default_epochs(1_000) == 60
    assert default_epochs(10_000) == 8 and default_epochs(37_500) == 8
    assert default_epochs(50_000) == 6 and default_epochs(100_000) == 3  # ~300k visits above 37.5k cells
    assert default_epochs(1_000_000) == 2 and default_epochs(50_000_000) == 2
    sizes = [10**k for k in range(2, 8)] + [37_500, 60_000, 150_000]
    visits = {n: default_epochs(n) * n for n in sorted(sizes)}
    # visits grow with the size from decade to decade, and stay within one pass of 300k from 37.5k to 150k cells
    assert all(visits[a] <= visits[b] for a, b in zip(sorted(sizes), sorted(sizes)[1:]))
    assert all(300_000 <= visits[n] <= 300_000 + n for n in (37_500, 60_000, 100_000, 150_000))
