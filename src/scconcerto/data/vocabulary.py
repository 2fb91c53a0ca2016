"""The model's gene vocabulary and the alignment of a dataset's genes to it, by name."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._errors import InputError

DEFAULT_MIN_OVERLAP = 0.5


@dataclass(frozen=True)
class GeneAlignment:
    """Where each column of a dataset goes in the vocabulary.

    Attributes
    ----------
    column_to_vocab
        For each dataset column, its vocabulary index or ``-1`` (dropped).
    n_shared
        Vocabulary genes present in the dataset.
    n_vocab
        Size of the vocabulary.
    n_dataset
        Genes in the dataset.
    """

    column_to_vocab: np.ndarray
    n_shared: int
    n_vocab: int
    n_dataset: int

    @property
    def overlap(self) -> float:
        """Fraction of the vocabulary found in the dataset."""
        return self.n_shared / max(self.n_vocab, 1)

    @property
    def is_identity(self) -> bool:
        return self.n_dataset == self.n_vocab and bool(
            np.array_equal(self.column_to_vocab, np.arange(self.n_vocab)))

    def summary(self) -> dict:
        return {"n_shared": self.n_shared, "n_vocab": self.n_vocab, "n_dataset": self.n_dataset,
                "overlap": round(self.overlap, 4)}


def _name_style(names: pd.Index) -> str:
    sample = [str(n) for n in names[:2000]]
    if not sample:
        return "empty"
    if sum(bool(re.match(r"^ENS[A-Z]*G\d+", n)) for n in sample) > 0.5 * len(sample):
        return "Ensembl ids"
    if sum(n.isdigit() for n in sample) > 0.5 * len(sample):
        return "numbers"
    upper = sum(n.isupper() for n in sample if any(c.isalpha() for c in n))
    lower_cap = sum(n[:1].isupper() and n[1:].islower() for n in sample if len(n) > 1)
    return "human-style symbols (upper case)" if upper >= lower_cap else "mouse-style symbols (Capitalized)"


class GeneVocabulary:
    """An ordered list of unique gene names: the model's input space."""

    def __init__(self, names: list[str] | pd.Index):
        index = pd.Index([str(n) for n in names])
        if index.has_duplicates:
            dup = index[index.duplicated()].unique()[:5].tolist()
            raise InputError(
                f"Gene names must be unique, but {len(index[index.duplicated()])} are repeated "
                f"(e.g. {dup}). Run `adata.var_names_make_unique()` first."
            )
        self._index = index

    @property
    def names(self) -> list[str]:
        return self._index.tolist()

    def __len__(self) -> int:
        return len(self._index)

    def align(self, var_names: pd.Index | list[str], min_overlap: float = DEFAULT_MIN_OVERLAP,
              what: str = "the query") -> GeneAlignment:
        """Align dataset genes to the vocabulary by exact name.

        Genes missing from the dataset are absent (zero) for its cells, extra
        dataset genes are dropped. An overlap below ``min_overlap`` (fraction of
        the vocabulary) is an error that names the likely cause.
        """
        names = pd.Index([str(n) for n in var_names])
        if names.has_duplicates:
            dup = names[names.duplicated()].unique()[:5].tolist()
            raise InputError(
                f"{what} has duplicated gene names (e.g. {dup}); names must be unique to be aligned. "
                "Run `adata.var_names_make_unique()` (or aggregate duplicated genes) first."
            )
        col = self._index.get_indexer(names).astype(np.int64)
        n_shared = int((col >= 0).sum())
        alignment = GeneAlignment(col, n_shared, len(self), len(names))
        if alignment.overlap < min_overlap:
            hint = ""
            ref_style, q_style = _name_style(self._index), _name_style(names)
            if ref_style != q_style:
                hint = (f" The model's genes look like {ref_style} while {what}'s look like {q_style}: "
                        "convert the names (e.g. map Ensembl ids to symbols, or use the `var` column that "
                        "holds symbols: `adata.var_names = adata.var['gene_symbols']`), or map orthologues "
                        "if it is another species.")
            else:
                hint = (" Check that `var_names` hold the same kind of gene names as the reference "
                        "(symbols vs Ensembl ids, species, or another `var` column).")
            raise InputError(
                f"Only {n_shared} of the model's {len(self)} genes ({alignment.overlap:.1%}) are found "
                f"in {what} (minimum {min_overlap:.0%}).{hint}"
            )
        return alignment
