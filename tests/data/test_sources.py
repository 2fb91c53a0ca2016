"""The one source -> domain rule: missing values, absent columns, known and unseen sources."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scconcerto import InputError
from scconcerto.data import prepare_cells, setup_reference
from scconcerto.data.sources import DEFAULT_SOURCE, domain_codes, source_names


def _cells(batches) -> ad.AnnData:
    return ad.AnnData(obs=pd.DataFrame({"batch": batches}, index=[f"c{i}" for i in range(len(batches))]))


@pytest.mark.parametrize("column", [
    ["a", None, "b"],
    [1.0, np.nan, 2.0],
    pd.Categorical(["a", np.nan, "b"]),
])
def test_missing_sources_are_an_error_whatever_the_column_type(column):
    with pytest.raises(InputError, match="1 missing values; every cell needs a source"):
        source_names(_cells(column), "batch")
    with pytest.raises(InputError, match="missing values"):  # through the model's key as well
        source_names(_cells(column), "__setup__", model_batch_key="batch", model_sources=["a", "b"])


def test_a_query_with_missing_sources_is_refused_like_the_reference(sim):
    setup = setup_reference(sim, batch_key="batch")
    query = sim[:50].copy()
    query.obs["batch"] = query.obs["batch"].astype(object)
    query.obs.iloc[3, query.obs.columns.get_loc("batch")] = np.nan
    with pytest.raises(InputError, match="missing values"):
        prepare_cells(query, setup)
    with pytest.raises(InputError, match="missing values"):
        setup_reference(query, batch_key="batch")


def test_values_are_named_as_text():
    np.testing.assert_array_equal(source_names(_cells([1, 2, 1]), "batch"), ["1", "2", "1"])


def test_cells_without_a_column_are_one_source():
    cells = ad.AnnData(obs=pd.DataFrame(index=["a", "b"]))
    # a model built without a batch key has one source: such cells are in it
    assert source_names(cells, "__setup__", None, [DEFAULT_SOURCE]).tolist() == [DEFAULT_SOURCE] * 2
    assert source_names(cells, None, None, [DEFAULT_SOURCE]).tolist() == [DEFAULT_SOURCE] * 2
    # a model with sources: the cells are a new source; the model's key missing from the data is no error
    assert source_names(cells, "__setup__", "batch", ["x", "y"], default="query").tolist() == ["query"] * 2
    assert source_names(cells, None, "batch", ["x", "y"], default="target").tolist() == ["target"] * 2
    with pytest.raises(InputError, match="batch key 'nope' is not a column"):
        source_names(cells, "nope", "batch", ["x", "y"])


def test_domain_codes_known_slots_then_unseen_sources_in_sorted_order():
    codes, unseen = domain_codes(np.array(["z", "b", "a", "q", "z"], dtype=object), ["a", "b"])
    assert unseen == ["q", "z"]
    np.testing.assert_array_equal(codes, [3, 1, 0, 2, 3])
    # the order of the cells does not change a source's code
    again, _ = domain_codes(np.array(["q", "z", "a"], dtype=object), ["a", "b"])
    np.testing.assert_array_equal(again, [2, 3, 0])
    # a name in two slots (a target source named like a labelled one) takes the later slot
    np.testing.assert_array_equal(domain_codes(np.array(["a", "b"]), ["a", "b", "a"])[0], [2, 1])


def test_prepare_cells_uses_the_rule(sim):
    setup = setup_reference(sim, batch_key="batch")
    query = sim[:40].copy()
    query.obs["batch"] = np.where(np.arange(40) % 2, "site_b", "site_a")
    query.obs.iloc[0, query.obs.columns.get_loc("batch")] = setup.sources[1]
    prepared = prepare_cells(query, setup)
    expected, unseen = domain_codes(source_names(query, "batch"), setup.sources)
    np.testing.assert_array_equal(prepared.cells.domains, expected)
    assert prepared.unseen_sources == unseen == ["site_a", "site_b"]
    assert prepared.cells.domains[0] == 1
