"""One objective at every size: a reference trained from disk is trained as the same reference in memory."""

from __future__ import annotations

import numpy as np
import pytest

from scconcerto import Concerto
from scconcerto.data.backed import read_backed
from scconcerto.datasets import simulate_hard
from scconcerto.tools import knn, vote

GENES = 1000


@pytest.fixture(scope="module")
def hard(tmp_path_factory):
    """A small hard world: 1,200 reference cells of batches 0-2 (also on disk), 400 query cells of batch 3."""
    reference = simulate_hard(1200, seed=0, n_genes=GENES)
    query = simulate_hard(400, "query", seed=0, n_genes=GENES)
    path = tmp_path_factory.mktemp("hard") / "reference.h5ad"
    reference.write_h5ad(path)
    return reference, query, path


def _held_out_accuracy(model: Concerto, query, key: str) -> float:
    """5-NN vote of the query's embedding (AdaBN for its unseen batch) among the reference cells."""
    emb = model.embed(query, device="cpu")
    cats = np.asarray(model.setup.labels[key])
    ref = model.reference
    codes = vote(knn(emb, ref.embedding, 5), ref.labels[key], len(cats)).codes
    return float(np.mean(cats[codes] == query.obs[key].astype(str).to_numpy()))


def test_backed_and_in_memory_references_train_the_same_model(hard):
    """The same cells trained from memory and from a backed file: the same configuration (label-aware
    neighbour positives in the centred and scaled spaces, searched among all cells), the same accuracy on the
    held-out batch, and the same embedding (a file that fits one streamed window is trained batch for batch as
    in memory)."""
    reference, query, path = hard
    models = {}
    for name, data in (("memory", reference), ("backed", read_backed(path))):
        models[name] = Concerto(data, batch_key="batch", label_key=["cell_type", "cell_type_major"]).train(
            epochs=4, progress=False, device="cpu", prepare_mapping=False)
    memory, backed = models["memory"], models["backed"]
    assert backed.train_config == memory.train_config
    cfg = backed.train_config
    assert cfg.positive_neighbors == 10 and cfg.label_positives and cfg.positive_space == "centred"
    assert cfg.positive_sources == "any" and cfg.positive_rank == "nearest"
    assert backed.training_record.positive_pool_cells == memory.training_record.positive_pool_cells == 1200
    np.testing.assert_array_equal(backed.reference.calibration_rows, memory.reference.calibration_rows)
    for key in ("cell_type", "cell_type_major"):
        assert abs(_held_out_accuracy(backed, query, key) - _held_out_accuracy(memory, query, key)) <= 0.01
    assert _held_out_accuracy(backed, query, "cell_type_major") > 0.6  # lineages (chance: 0.25) are learnt
    np.testing.assert_allclose(backed.reference.embedding, memory.reference.embedding, atol=1e-4)


def test_the_supervised_term_tells_apart_subtypes_that_a_few_genes_separate(hard):
    """In the hard world a lineage's subtypes differ by a handful of genes. Contrastive training alone learns
    the lineages; the supervised term (``label_weight``) must also tell the subtypes apart on the held-out
    batch, and record what was trained."""
    reference, query, _ = hard
    accuracy = {}
    for weight in (0.0, 1.0):
        model = Concerto(reference, batch_key="batch", label_key="cell_type").train(
            epochs=40, label_weight=weight, progress=False, device="cpu", prepare_mapping=False)
        assert model.train_config.label_weight == weight
        accuracy[weight] = _held_out_accuracy(model, query, "cell_type")
    assert accuracy[1.0] >= accuracy[0.0] + 0.1, accuracy
    assert accuracy[1.0] > 0.5, accuracy  # 12 subtypes: chance is below 0.1


def test_backed_and_in_memory_references_map_with_the_same_decision(hard):
    """Trained without neighbour positives (no expression space needed to train), a reference still gets the
    scaled expression space that mapping pools its votes with, from disk as in memory: the same decision and
    the same labels."""
    reference, query, path = hard
    models = {}
    for name, data in (("memory", reference), ("backed", read_backed(path))):
        models[name] = Concerto(data, batch_key="batch", label_key="cell_type").train(
            epochs=2, positive_neighbors=0, progress=False, device="cpu", prepare_mapping={"umap": False})
    decisions = {name: model.label_model("cell_type") for name, model in models.items()}
    assert all(d.expression_posterior is not None for d in decisions.values())
    assert decisions["backed"].tau == pytest.approx(decisions["memory"].tau, rel=1e-3)
    labels = {name: model.map_query(query.copy(), impute=False, place=False, device="cpu")
              .predictions["cell_type"]["pred"].astype(str).to_numpy() for name, model in models.items()}
    assert np.mean(labels["backed"] == labels["memory"]) > 0.99
