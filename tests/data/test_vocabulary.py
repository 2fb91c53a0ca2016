import numpy as np
import pytest

from scconcerto import InputError
from scconcerto.data import GeneVocabulary


def test_alignment_maps_by_name_and_drops_extra_genes():
    vocab = GeneVocabulary(["A", "B", "C", "D"])
    al = vocab.align(["C", "X", "A", "B"], min_overlap=0.5)
    np.testing.assert_array_equal(al.column_to_vocab, [2, -1, 0, 1])
    assert al.n_shared == 3 and al.overlap == 0.75 and not al.is_identity
    assert vocab.align(["A", "B", "C", "D"]).is_identity


def test_too_small_overlap_is_a_clear_error_naming_the_cause():
    vocab = GeneVocabulary([f"GENE{i}" for i in range(100)])
    with pytest.raises(InputError, match=r"Only 0 of the model's 100 genes.*Ensembl"):
        vocab.align([f"ENSG{i:011d}" for i in range(100)])


def test_duplicated_names_are_refused():
    with pytest.raises(InputError, match="var_names_make_unique"):
        GeneVocabulary(["A", "A", "B"])
    with pytest.raises(InputError, match="duplicated"):
        GeneVocabulary(["A", "B"]).align(["A", "A"])
