"""Do no harm, on real data: on every label-transfer split of the benchmark and on adversarial variants of a
development split, mapping's labels are at least as accurate as the plain 5-NN vote on the same query
embedding, minus 0.01. Opt-in: reads ``SCCONCERTO_DATA`` (CI sets it); skipped without it.

The networks train briefly on 2,000 highly variable genes (the comparison is between two decisions on one
embedding, not of embeddings; a barely trained network puts every cell at nearly the same similarity to all
reference cells, where the two decisions' tie-breaks decide).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.tasks.adversarial import variants
from benchmarks.tasks.data import label_transfer_splits
from scconcerto import Concerto
from scconcerto.tools import knn, vote

pytestmark = pytest.mark.data
EPOCHS = 20
HVG = 2000


def accuracies(split, seed: int = 0) -> tuple[float, float]:
    """Accuracy of mapping's labels and of the plain 5-NN vote on the query's embedding (seen types only)."""
    model = Concerto(split.reference, batch_key=split.batch_key, label_key=split.label_key, seed=seed, hvg=HVG)
    model.train(epochs=EPOCHS, progress=False, device="cpu", prepare_mapping={"umap": False})
    query = split.query.copy()
    key = split.label_key
    model.map_query(query, batch_key=split.batch_key if split.batch_key in query.obs else None, impute=False,
                    place=False, min_overlap=0.0, device="cpu")
    names = np.asarray(model.setup.labels[key])
    plain = names[vote(knn(query.obsm["X_concerto"], model.reference.embedding, k=5),
                       model.reference.labels[key], len(names)).codes]
    truth = query.obs[key].astype(str).to_numpy()
    seen = np.isin(truth, names)
    mapped = query.obs[f"{key}_pred"].astype(str).to_numpy()
    return float((mapped == truth)[seen].mean()), float((plain == truth)[seen].mean())


def test_mapping_is_never_worse_than_the_plain_vote(data_dir):
    skipped: list[str] = []
    splits = list(label_transfer_splits(Path(data_dir), skipped)) + list(variants(Path(data_dir), skipped))
    assert len(splits) >= 10, f"expected the benchmark's splits and variants, got {len(splits)} ({skipped})"
    results = {split.name: accuracies(split) for split in splits}
    worse = {name: f"{mapped:.3f} < {plain:.3f}" for name, (mapped, plain) in results.items() if mapped < plain - 0.01}
    assert not worse, f"mapping fell below the plain 5-NN vote: {worse}"
