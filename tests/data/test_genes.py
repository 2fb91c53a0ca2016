"""Gene-name harmonisation, rule by rule, on small synthetic tables (and the shipped tables' shape)."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scconcerto import InputError
from scconcerto.data import GeneVocabulary
from scconcerto.data import genes

HUMAN = pd.DataFrame({"id": ["ENSG00000000001", "ENSG00000000002", "ENSG00000000003", "ENSG00000000004",
                             "ENSG00000000005", "ENSG00000000006"],
                      "symbol": ["AAA", "BBB", "BBB", "CCC", "DDD", "EEE"]})
MOUSE = pd.DataFrame({"id": ["ENSMUSG00000000001", "ENSMUSG00000000002", "ENSMUSG00000000003",
                             "ENSMUSG00000000004"],
                      "symbol": ["Aaa", "Bbb2", "Ccc", "Ddd"]})
ORTHOLOGS = pd.DataFrame({"human": ["AAA", "BBB", "DDD"], "mouse": ["Aaa", "Bbb2", "Ddd"]})


@pytest.fixture
def tables(monkeypatch):
    """Replace the shipped tables by the small ones above (caches cleared before and after)."""
    files = {"genes_human.csv.gz": HUMAN, "genes_mouse.csv.gz": MOUSE, "orthologs_human_mouse.csv.gz": ORTHOLOGS}
    monkeypatch.setattr(genes, "_read_table", lambda name: files[name].copy())
    _clear()
    yield
    _clear()


def _clear():
    for f in (genes.gene_table, genes.ortholog_table, genes._id_to_symbol, genes._symbols):
        f.cache_clear()


def _pairs(vocab, names, **kw):
    al = GeneVocabulary(vocab).align(names, min_overlap=0.0, **kw)
    return {n: (vocab[c] if c >= 0 else None) for n, c in zip(names, al.column_to_vocab)}, al


def test_exact_names_need_no_table(monkeypatch):
    def refuse(name):
        raise AssertionError("a table was read for names that match exactly")

    monkeypatch.setattr(genes, "_read_table", refuse)
    _clear()
    pairs, al = _pairs(["A", "B", "C"], ["C", "X", "A"])
    assert pairs == {"C": "C", "X": None, "A": "A"} and al.matched_by == {"exact": 2}
    assert al.summary() == {"n_shared": 2, "n_vocab": 3, "n_dataset": 3, "overlap": 0.6667}


def test_version_suffixes_are_stripped_on_either_side(tables):
    pairs, al = _pairs(["ENSG00000000001", "ENSG00000000004.2", "ENSG00000000099"],
                       ["ENSG00000000001.7", "ENSG00000000004", "ENSG00000000099_PAR_Y"])
    assert pairs == {"ENSG00000000001.7": "ENSG00000000001", "ENSG00000000004": "ENSG00000000004.2",
                     "ENSG00000000099_PAR_Y": "ENSG00000000099"}
    assert al.matched_by == {"version": 3}


def test_two_versions_of_one_id_are_not_merged(tables):
    pairs, al = _pairs(["ENSG00000000001", "ENSG00000000004"], ["ENSG00000000001.1", "ENSG00000000001.2",
                                                                 "ENSG00000000004.3"])
    assert pairs == {"ENSG00000000001.1": None, "ENSG00000000001.2": None, "ENSG00000000004.3": "ENSG00000000004"}
    assert sorted(al.ambiguous) == ["ENSG00000000001.1", "ENSG00000000001.2"]
    assert al.summary()["dropped"] == {"unmatched": 0, "ambiguous": 2, "missing_from_data": 1}


def test_ids_meet_symbols_through_the_table_and_shared_symbols_are_not_merged(tables):
    # ENSG...2 and ENSG...3 are both BBB: neither may take the vocabulary's BBB
    pairs, al = _pairs(["AAA", "BBB", "CCC", "ZZZ"],
                       ["ENSG00000000001.4", "ENSG00000000002", "ENSG00000000003", "CCC", "ENSG00000000077"])
    assert pairs == {"ENSG00000000001.4": "AAA", "ENSG00000000002": None, "ENSG00000000003": None, "CCC": "CCC",
                     "ENSG00000000077": None}
    assert al.matched_by == {"exact": 1, "id_symbol": 1}
    assert sorted(al.ambiguous) == ["ENSG00000000002", "ENSG00000000003"]
    # the other way round: a model in Ensembl ids, data in symbols (mouse ids too)
    pairs, al = _pairs(["ENSG00000000001.2", "ENSG00000000004", "ENSMUSG00000000003"], ["CCC", "AAA", "Ccc"])
    assert pairs == {"CCC": "ENSG00000000004", "AAA": "ENSG00000000001.2", "Ccc": "ENSMUSG00000000003"}
    assert al.matched_by == {"id_symbol": 3}


def test_letter_case_matches_only_when_one_to_one(tables):
    pairs, al = _pairs(["Abc", "DEF", "GHI", "XY", "xy"], ["ABC", "def", "GHI", "ghi", "Xy"])
    # GHI is exact, so ghi has no free partner; Xy could be XY or xy: left out
    assert pairs == {"ABC": "Abc", "def": "DEF", "GHI": "GHI", "ghi": None, "Xy": None}
    assert al.matched_by == {"exact": 1, "case": 2} and al.ambiguous == ["Xy"]
    pairs, al = _pairs(["ABC"], ["abc", "Abc"])
    assert pairs == {"abc": None, "Abc": None} and sorted(al.ambiguous) == ["Abc", "abc"]


def test_orthologs_replace_case_matching_across_species(tables):
    vocab = ["AAA", "BBB", "CCC", "DDD", "EEE"]
    names = ["Aaa", "Bbb2", "Ccc", "ENSMUSG00000000004.1"]
    pairs, al = _pairs(vocab, names, query_species="mouse")
    # Ccc has no 1:1 ortholog: dropped, not matched to CCC by case; the mouse id goes through its symbol Ddd
    assert pairs == {"Aaa": "AAA", "Bbb2": "BBB", "Ccc": None, "ENSMUSG00000000004.1": "DDD"}
    assert al.matched_by == {"ortholog": 3}
    assert (al.query_species, al.reference_species) == ("mouse", "human")
    assert al.summary()["query_species"] == "mouse"
    # without the species, letter case joins what it can, and says the data look like mouse genes
    pairs, al = _pairs(vocab, names)
    assert pairs == {"Aaa": "AAA", "Bbb2": None, "Ccc": "CCC", "ENSMUSG00000000004.1": "DDD"}
    assert any("query_species='mouse'" in w for w in al.warnings)
    # the same species as the model: no orthologs
    _, al = _pairs(vocab, ["AAA", "BBB"], query_species="human")
    assert al.matched_by == {"exact": 2} and al.query_species is None


def test_a_human_query_on_a_mouse_model(tables):
    pairs, al = _pairs(["Aaa", "Bbb2", "Ddd", "Ccc"], ["ENSG00000000001", "BBB", "DDD", "CCC"],
                       query_species="human")
    assert pairs == {"ENSG00000000001": "Aaa", "BBB": "Bbb2", "DDD": "Ddd", "CCC": None}


def test_bad_species_are_clear_errors(tables):
    with pytest.raises(InputError, match="query_species must be one of"):
        GeneVocabulary(["AAA"]).align(["AAA"], query_species="rat")
    with pytest.raises(InputError, match="look neither like human nor like mouse"):
        GeneVocabulary(["gene_0", "gene_1"]).align(["gene_0"], query_species="mouse", min_overlap=0.0)


def test_low_overlap_error_suggests_the_species(tables):
    with pytest.raises(InputError, match="query_species='mouse'"):
        GeneVocabulary(["AAA", "BBB", "DDD", "EEE"]).align(["Bbb2", "Ccc", "Zzz"])


def test_matching_is_one_to_one_on_random_names(tables):
    rng = np.random.default_rng(0)
    pool = ["AAA", "aaa", "Aaa", "BBB", "Bbb2", "CCC", "ccc", "ENSG00000000001", "ENSG00000000001.3",
            "ENSG00000000002.1", "ENSG00000000003", "ENSMUSG00000000001", "DDD", "Ddd", "EEE", "x1", "X1"]
    for _ in range(200):
        vocab = list(rng.choice(pool, rng.integers(1, 10), replace=False))
        names = list(rng.choice(pool, rng.integers(1, 10), replace=False))
        species = rng.choice([None, "mouse"])
        try:
            al = GeneVocabulary(vocab).align(names, min_overlap=0.0, query_species=species)
        except InputError:  # a vocabulary of no detectable species with query_species
            continue
        col = al.column_to_vocab[al.column_to_vocab >= 0]
        assert len(set(col.tolist())) == col.size == al.n_shared
        exact = [n for n in names if n in vocab]
        assert all(vocab[c] == n for n, c in zip(names, al.column_to_vocab) if n in exact)
        assert sum(al.matched_by.values()) == al.n_shared


def test_summary_is_writable_to_h5ad(tables, tmp_path):
    _, al = _pairs(["AAA", "BBB", "CCC"], ["ENSG00000000001.1", "ENSG00000000002", "ENSG00000000003", "ccc"])
    adata = ad.AnnData(np.zeros((2, 1), dtype=np.float32))
    adata.uns["gene_overlap"] = al.summary()
    adata.write_h5ad(tmp_path / "x.h5ad")
    back = ad.read_h5ad(tmp_path / "x.h5ad").uns["gene_overlap"]
    assert dict(back["matched_by"]) == {"id_symbol": 1, "case": 1}
    assert int(back["dropped"]["ambiguous"]) == 2


def test_shipped_tables_are_one_to_one_and_detect_their_species():
    _clear()
    orth = genes.ortholog_table()
    assert len(orth) > 15_000 and orth["human"].is_unique and orth["mouse"].is_unique
    human, mouse = genes.gene_table("human"), genes.gene_table("mouse")
    assert human["id"].is_unique and human["id"].str.startswith("ENSG").all()
    assert mouse["id"].is_unique and mouse["id"].str.startswith("ENSMUSG").all()
    assert genes.detect_species(["CD3E", "MS4A1", "LYZ", "NKG7"]) == "human"
    assert genes.detect_species(["Cd3e", "Ms4a1", "Lyz2", "Nkg7"]) == "mouse"
    assert genes.detect_species(["gene_0", "gene_1"]) is None


def test_the_genes_another_species_can_have_are_those_with_a_1_to_1_ortholog(tables):
    vocab = ["AAA", "BBB", "CCC", "DDD", "ENSG00000000006.3"]  # the id is EEE's, which has no ortholog
    mask = genes.matchable_in(vocab, "mouse")
    np.testing.assert_array_equal(mask, [True, True, False, True, False])
    # exactly the genes a mouse dataset holding every mouse gene of the table is matched to
    _, al = _pairs(vocab, list(MOUSE["symbol"]), query_species="mouse")
    matched = np.zeros(len(vocab), dtype=bool)
    matched[al.column_to_vocab[al.column_to_vocab >= 0]] = True
    np.testing.assert_array_equal(mask, matched)
    assert genes.matchable_in(vocab, "human").all()
