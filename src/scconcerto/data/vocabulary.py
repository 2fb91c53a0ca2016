"""The model's gene vocabulary and the alignment of a dataset's genes to it, by name
(harmonised: Ensembl ids and symbols, versions, letter case, human-mouse orthologs; see
:mod:`scconcerto.data.genes`)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .._errors import InputError
from .genes import harmonize, vocabulary_found

log = logging.getLogger("scconcerto")

DEFAULT_MIN_OVERLAP = 0.5
#: Gene names listed as examples in an alignment's summary.
N_EXAMPLES = 5


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
    matched_by
        Genes matched by each rule of :mod:`scconcerto.data.genes` (``exact``, ``version``,
        ``id_symbol``, ``case``, ``ortholog``).
    ambiguous
        Dataset genes left out because their name was shared under a rule.
    unmatched
        Examples of dataset genes matched to no vocabulary gene.
    missing
        Examples of vocabulary genes the dataset lacks.
    query_species, reference_species
        Species of the dataset and of the vocabulary when orthologs were used.
    warnings
        Sentences for the user.
    """

    column_to_vocab: np.ndarray
    n_shared: int
    n_vocab: int
    n_dataset: int
    matched_by: dict = field(default_factory=dict)
    ambiguous: list = field(default_factory=list)
    unmatched: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    query_species: str | None = None
    reference_species: str | None = None
    warnings: list = field(default_factory=list)

    @property
    def overlap(self) -> float:
        """Fraction of the vocabulary found in the dataset."""
        return self.n_shared / max(self.n_vocab, 1)

    @property
    def is_identity(self) -> bool:
        return self.n_dataset == self.n_vocab and bool(
            np.array_equal(self.column_to_vocab, np.arange(self.n_vocab)))

    @property
    def harmonized(self) -> bool:
        """Whether a rule other than the exact name matched genes, or genes were left out as ambiguous."""
        return bool(set(self.matched_by) - {"exact"} or self.ambiguous or self.query_species)

    def summary(self) -> dict:
        """The overlap; when names were harmonised, also the genes matched by each rule, what was dropped
        (with examples) and the species (plain types, writable to ``uns``)."""
        out = {"n_shared": self.n_shared, "n_vocab": self.n_vocab, "n_dataset": self.n_dataset,
               "overlap": round(self.overlap, 4)}
        if not self.harmonized:
            return out
        out["matched_by"] = {k: int(v) for k, v in self.matched_by.items()}
        out["dropped"] = {"unmatched": int(self.n_dataset - self.n_shared - len(self.ambiguous)),
                          "ambiguous": len(self.ambiguous), "missing_from_data": int(self.n_vocab - self.n_shared)}
        examples = {"unmatched": self.unmatched, "ambiguous": self.ambiguous[:N_EXAMPLES], "missing": self.missing}
        out["examples"] = {k: [str(g) for g in v] for k, v in examples.items() if len(v)}
        if self.query_species:
            out["query_species"], out["reference_species"] = self.query_species, self.reference_species
        if self.warnings:
            out["warnings"] = [str(w) for w in self.warnings]
        return out

    def describe(self) -> str:
        """One sentence: genes found, by which rule, and what was dropped."""
        rules = ", ".join(f"{k} {v:,}" for k, v in self.matched_by.items())
        text = f"{self.n_shared:,} of the model's {self.n_vocab:,} genes found ({self.overlap:.1%}; {rules})"
        dropped = self.n_dataset - self.n_shared
        if dropped:
            text += f"; {dropped:,} of the data's {self.n_dataset:,} genes unused"
            if self.ambiguous:
                text += f" ({len(self.ambiguous):,} ambiguous, e.g. {self.ambiguous[:3]})"
        if self.query_species:
            text += f"; {self.query_species} genes matched to {self.reference_species} by 1:1 orthologs"
        return text + "."


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


def _low_overlap_hint(vocab: pd.Index, names: pd.Index, what: str, query_species: str | None) -> str:
    """Why a dataset's genes may not match the model's, and what to do."""
    from .genes import detect_species

    ref_style, q_style = _name_style(vocab), _name_style(names)
    ref_species, q_species = detect_species(vocab), detect_species(names)
    if query_species is None and ref_species and q_species and ref_species != q_species:
        return (f" {what[:1].upper() + what[1:]} looks like {q_species} genes and the model like {ref_species} genes: pass "
                f"query_species={q_species!r} (`--query-species {q_species}`) to match them by 1:1 orthologs.")
    converted = (" Human and mouse Ensembl ids (with or without version) were converted to symbols with the "
                 "shipped GENCODE tables.")
    if ref_style != q_style:
        return (f" The model's genes look like {ref_style} while {what}'s look like {q_style}.{converted} "
                "Use the `var` column that holds names of the model's kind (e.g. "
                "`adata.var_names = adata.var['gene_symbols']`), or, for another species, pass query_species.")
    return (" Check that `var_names` hold the same kind of gene names as the reference (symbols vs Ensembl "
            f"ids, species, or another `var` column).{converted}")


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
              what: str = "the query", query_species: str | None = None) -> GeneAlignment:
        """Align dataset genes to the vocabulary by name, harmonised (:func:`~scconcerto.data.genes.harmonize`).

        Names match exactly, else as Ensembl ids without version, else through the
        shipped id-symbol tables, else up to letter case, each only when one to one;
        with ``query_species`` (``"human"`` / ``"mouse"``) differing from the
        vocabulary's, through 1:1 orthologs. Genes missing from the dataset are absent
        (zero) for its cells, extra dataset genes are dropped. An overlap below
        ``min_overlap`` (fraction of the vocabulary) is an error that names the likely cause.
        """
        names = pd.Index([str(n) for n in var_names])
        if names.has_duplicates:
            dup = names[names.duplicated()].unique()[:5].tolist()
            raise InputError(
                f"{what} has duplicated gene names (e.g. {dup}); names must be unique to be aligned. "
                "Run `adata.var_names_make_unique()` (or aggregate duplicated genes) first."
            )
        matched = harmonize(self._index, names, query_species)
        col = matched.column_to_vocab
        n_shared = int((col >= 0).sum())
        found = vocabulary_found(col, len(self))
        unmatched = names[(col < 0) & ~names.isin(matched.ambiguous)][:N_EXAMPLES].tolist()
        alignment = GeneAlignment(col, n_shared, len(self), len(names), matched.counts(), matched.ambiguous,
                                  unmatched, self._index[~found][:N_EXAMPLES].tolist(),
                                  matched.query_species, matched.reference_species, matched.warnings)
        for warning in matched.warnings:
            log.warning("%s: %s", what, warning)
        if alignment.harmonized:
            log.info("Genes of %s: %s", what, alignment.describe())
        if alignment.overlap < min_overlap:
            hint = _low_overlap_hint(self._index, names, what, query_species)
            raise InputError(
                f"Only {n_shared} of the model's {len(self)} genes ({alignment.overlap:.1%}) are found "
                f"in {what} (minimum {min_overlap:.0%}).{hint}"
            )
        return alignment
