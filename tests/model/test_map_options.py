"""MapOptions: map's keyword options as one frozen, checked value; map and map_query take either form."""

import dataclasses

import numpy as np
import pytest

from scconcerto import InputError
from scconcerto.model import MapOptions


def test_options_are_checked_when_made():
    assert MapOptions(levels=" major, minor ,").levels == ("major", "minor")
    assert MapOptions(levels=["a", "b"]).levels == MapOptions(levels="a,b").levels
    assert MapOptions(levels=None).levels == ()
    for bad, match in [({"levels": "a,a"}, "twice"), ({"k": 0}, "k must"), ({"k": 2.5}, "k must"),
                       ({"finetune_epochs": -1}, "finetune_epochs"), ({"impute_k": 0}, "impute_k"),
                       ({"batch_size": 0}, "batch_size"), ({"unknown_threshold": 1.5}, r"\[0, 1\]"),
                       ({"unknown_threshold": {"cell_type": -0.1}}, r"\[0, 1\]"), ({"seed": -1}, "seed"),
                       ({"known_share": 1.0}, "known_share"), ({"known_share": 0}, "known_share"),
                       ({"known_share": "most"}, "known_share")]:
        with pytest.raises(InputError, match=match):
            MapOptions(**bad)
    MapOptions(impute=False, impute_k=0)  # no imputation: its neighbours are not used
    with pytest.raises(dataclasses.FrozenInstanceError):
        MapOptions().k = 3


def test_keywords_replace_the_fields_of_given_options():
    base = MapOptions(reject=True, k=7)
    merged = MapOptions.of(base, k=3, levels="x")
    assert (merged.reject, merged.k, merged.levels) == (True, 3, ("x",))
    assert base.k == 7  # unchanged
    assert MapOptions.of(None) == MapOptions()
    with pytest.raises(TypeError, match="knn"):
        MapOptions.of(None, knn=5)
    assert MapOptions(unknown_threshold={"a": 0.2}).threshold("a", 0.05) == 0.2
    assert MapOptions(unknown_threshold={"a": 0.2}).threshold("b", 0.05) == 0.05
    assert MapOptions(unknown_threshold=0.3).threshold("b", 0.05) == 0.3


def test_map_query_takes_options_or_keywords_alike(trained_model, sim):
    query = sim[sim.obs["batch"] == "batch_1"].copy()
    by_keywords = trained_model.map_query(query.copy(), reject=True, unknown_threshold=0.9, place=False,
                                          device="cpu")
    by_options = trained_model.map_query(query.copy(), options=MapOptions(reject=True, unknown_threshold=0.9,
                                                                          place=False), device="cpu")
    default = trained_model.map_query(query.copy(), place=False, device="cpu")
    got, expected = by_options.predictions["cell_type"], by_keywords.predictions["cell_type"]
    assert (got["pred"].astype(str) == expected["pred"].astype(str)).all()
    assert "unknown" in got["pred"].cat.categories  # reject=True applied
    assert "unknown" not in default.predictions["cell_type"]["pred"].cat.categories
    assert (got["unknown"] == (got["known_prob"] < 0.9)).all()
    np.testing.assert_array_equal(by_options.embedding, by_keywords.embedding)
    assert by_options.info["thresholds"]["cell_type"] == 0.9 != default.info["thresholds"]["cell_type"]
    with pytest.raises(TypeError, match="Unknown mapping option"):
        trained_model.map_query(query.copy(), knn=5)


def test_known_share_moves_known_prob_but_not_the_default_flags(trained_model, sim):
    query = sim[sim.obs["batch"] == "batch_1"].copy()
    low = trained_model.map_query(query.copy(), known_share=0.3, place=False, impute=False, device="cpu")
    high = trained_model.map_query(query.copy(), known_share=0.97, place=False, impute=False, device="cpu")
    a, b = low.predictions["cell_type"], high.predictions["cell_type"]
    assert (b["known_prob"].to_numpy() >= a["known_prob"].to_numpy()).all()
    assert b["known_prob"].mean() > a["known_prob"].mean()
    assert high.info["thresholds"]["cell_type"] > low.info["thresholds"]["cell_type"]
    np.testing.assert_array_equal(a["unknown"].to_numpy(), b["unknown"].to_numpy())
    assert (low.info["known_share"], high.info["known_share"]) == (0.3, 0.97)
    from scconcerto.mapping.label_model import SEEN_PRIOR

    assert MapOptions().seen_prior == SEEN_PRIOR == trained_model.map_query(
        query.copy(), place=False, impute=False, device="cpu").info["known_share"]
