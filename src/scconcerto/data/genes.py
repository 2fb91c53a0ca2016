"""Gene-name harmonisation: a dataset's gene names matched to a vocabulary's, rule by rule.

Each dataset gene is matched to at most one vocabulary gene, and each vocabulary
gene to at most one dataset gene, by the first rule that pairs them one to one:

``exact``
    the same name;
``version``
    the same Ensembl id once version suffixes are stripped (``ENSG00000141510.18``);
``id_symbol``
    the same symbol once Ensembl ids are converted with the shipped GENCODE tables
    (ids to symbols on either side, so ids meet symbols and ids meet ids);
``case``
    the same name up to letter case;
``ortholog``
    (only when the dataset's species differs from the vocabulary's) the 1:1 human-mouse
    ortholog of the dataset gene, compared up to letter case.

A name that several genes share under a rule (two ids with one symbol, ``Cd3e`` and
``CD3E`` against ``CD3E``...) is not merged: those genes are left out and reported as
ambiguous. The tables (``tables/``; provenance in ``tables/PROVENANCE.md``) are read only
when a rule needs them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

import numpy as np
import pandas as pd

from .._errors import InputError

SPECIES = ("human", "mouse")
RULES = ("exact", "version", "id_symbol", "case", "ortholog")
_ENSEMBL = re.compile(r"^(ENS[A-Z]*G\d{6,})(\.\d+)?(_PAR_Y)?$")
#: The fraction of names found in a species' table for the names to be said to be of that species.
SPECIES_MIN_FRACTION = 0.2
#: Case-only matches above this fraction of the matched genes suggest another species.
CASE_SHARE_WARNING = 0.2


def ensembl_stem(names: np.ndarray) -> np.ndarray:
    """The Ensembl gene id of each name without version or ``_PAR_Y`` suffix; ``None`` for other names."""
    s = pd.Series(np.asarray(names, dtype=object), dtype=object)
    stem = s.str.extract(_ENSEMBL, expand=True)[0]
    return stem.where(stem.notna(), None).to_numpy(dtype=object)


def _read_table(name: str) -> pd.DataFrame:
    with resources.files("scconcerto.data").joinpath("tables", name).open("rb") as fh:
        return pd.read_csv(fh, compression="gzip", dtype=str, keep_default_na=False)


@lru_cache(maxsize=None)
def gene_table(species: str) -> pd.DataFrame:
    """The shipped GENCODE table of ``species``: columns ``id`` (Ensembl gene id, no version) and ``symbol``."""
    if species not in SPECIES:
        raise InputError(f"Unknown species {species!r}; the gene tables cover {list(SPECIES)}.")
    return _read_table(f"genes_{species}.csv.gz")


@lru_cache(maxsize=None)
def ortholog_table() -> pd.DataFrame:
    """The shipped human-mouse 1:1 orthologs: columns ``human`` and ``mouse`` (symbols, each unique)."""
    return _read_table("orthologs_human_mouse.csv.gz")


@lru_cache(maxsize=None)
def _id_to_symbol() -> pd.Series:
    tables = [gene_table(s) for s in SPECIES]
    both = pd.concat(tables, ignore_index=True)
    return pd.Series(both["symbol"].to_numpy(), index=both["id"].to_numpy())


@lru_cache(maxsize=None)
def _symbols(species: str) -> frozenset:
    return frozenset(gene_table(species)["symbol"])


def to_symbols(names: np.ndarray) -> np.ndarray:
    """Ensembl ids (any version) replaced by their GENCODE symbol; other names kept; unknown ids kept."""
    names = np.asarray(names, dtype=object)
    stem = ensembl_stem(names)
    is_id = pd.notna(stem)
    if not is_id.any():
        return names
    symbol = pd.Series(stem[is_id]).map(_id_to_symbol()).to_numpy(dtype=object)
    out = names.copy()
    found = pd.notna(symbol)
    out[np.flatnonzero(is_id)[found]] = symbol[found]
    return out


def detect_species(names: pd.Index | np.ndarray | list[str]) -> str | None:
    """``"human"`` or ``"mouse"`` when most of the names are that species' symbols or ids, else ``None``."""
    names = np.asarray(names, dtype=object).astype(str)
    if names.size == 0:
        return None
    stem = ensembl_stem(names)
    ids = pd.Series(stem[pd.notna(stem)], dtype=object)
    mouse_ids = int(ids.str.startswith("ENSMUSG").sum()) if len(ids) else 0
    human_ids = int(ids.str.match(r"^ENSG\d").sum()) if len(ids) else 0
    symbols = set(names[pd.isna(stem)].tolist())
    hits = {"human": human_ids + len(symbols & _symbols("human")),
            "mouse": mouse_ids + len(symbols & _symbols("mouse"))}
    best, other = sorted(hits, key=hits.get, reverse=True)
    if hits[best] >= SPECIES_MIN_FRACTION * names.size and hits[best] >= 2 * hits[other]:
        return best
    return None


@dataclass
class Harmonized:
    """The result of :func:`harmonize`.

    Attributes
    ----------
    column_to_vocab
        For each dataset gene, its vocabulary index or ``-1``.
    rule
        For each dataset gene, the index in :data:`RULES` of the rule that matched it, or ``-1``.
    ambiguous
        Dataset genes left out because their name was shared under a rule.
    query_species, reference_species
        The species used for orthologs (``None`` when not used).
    warnings
        Sentences for the user (e.g. the dataset looks like another species).
    """

    column_to_vocab: np.ndarray
    rule: np.ndarray
    ambiguous: list[str] = field(default_factory=list)
    query_species: str | None = None
    reference_species: str | None = None
    warnings: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Genes matched by each rule (rules that matched none are left out)."""
        n = np.bincount(self.rule[self.rule >= 0], minlength=len(RULES))
        return {r: int(c) for r, c in zip(RULES, n) if c}


def _pair(col: np.ndarray, rule: np.ndarray, free: np.ndarray, q_keys: np.ndarray, v_keys: np.ndarray,
          r: int, ambiguous: set[int]) -> None:
    """Match still-unmatched dataset genes to still-free vocabulary genes whose keys are equal and unique (in place)."""
    qi = np.flatnonzero((col < 0) & pd.notna(q_keys))
    vi = np.flatnonzero(free & pd.notna(v_keys))
    if qi.size == 0 or vi.size == 0:
        return
    q = pd.DataFrame({"key": q_keys[qi], "q": qi})
    v = pd.DataFrame({"key": v_keys[vi], "v": vi})
    m = q.merge(v, on="key")
    if m.empty:
        return
    nq, nv = q["key"].value_counts(), v["key"].value_counts()
    ok = (m["key"].map(nq).to_numpy() == 1) & (m["key"].map(nv).to_numpy() == 1)
    qs, vs = m["q"].to_numpy()[ok], m["v"].to_numpy()[ok]
    col[qs], rule[qs], free[vs] = vs, r, False
    ambiguous.update(m["q"].to_numpy()[~ok].tolist())


def _upper(keys: np.ndarray) -> np.ndarray:
    return pd.Series(keys, dtype=object).str.upper().to_numpy(dtype=object)


def _orthologs(keys: np.ndarray, source: str, target: str) -> np.ndarray:
    """The 1:1 ortholog (a ``target`` symbol) of each ``source`` symbol, by case-insensitive name; else ``None``."""
    table = ortholog_table()
    lookup = pd.Series(table[target].to_numpy(), index=table[source].str.upper().to_numpy())
    lookup = lookup[~lookup.index.duplicated(keep=False)]
    return pd.Series(_upper(keys)).map(lookup).to_numpy(dtype=object)


def harmonize(vocab: pd.Index | list[str], names: pd.Index | list[str], query_species: str | None = None
              ) -> Harmonized:
    """Match dataset gene ``names`` to ``vocab`` by the rules of this module, in their order.

    Parameters
    ----------
    vocab
        The vocabulary (unique names).
    names
        The dataset's gene names (unique).
    query_species
        ``"human"`` or ``"mouse"``: the dataset's species. When it differs from the vocabulary's
        (detected from its names), genes are matched through 1:1 orthologs and not by case.
        ``None``: the vocabulary's species.
    """
    if query_species is not None and query_species not in SPECIES:
        raise InputError(f"query_species must be one of {list(SPECIES)} or None, got {query_species!r}.")
    v = np.asarray([str(x) for x in vocab], dtype=object)
    q = np.asarray([str(x) for x in names], dtype=object)
    col = np.full(q.size, -1, dtype=np.int64)
    rule = np.full(q.size, -1, dtype=np.int64)
    free = np.ones(v.size, dtype=bool)
    ambiguous: set[int] = set()
    _pair(col, rule, free, q, v, 0, ambiguous)
    reference_species = None
    cross = False
    if query_species is not None:
        reference_species = detect_species(v)
        if reference_species is None:
            raise InputError(
                f"query_species={query_species!r} was given, but the model's genes look neither like human nor "
                "like mouse genes (symbols or Ensembl ids of the shipped GENCODE tables), so orthologs cannot be "
                "used. Rename the genes to the model's names yourself, or leave query_species unset.")
        cross = reference_species != query_species
    warnings: list[str] = []
    if (col < 0).any() and free.any():
        q_stem, v_stem = ensembl_stem(q), ensembl_stem(v)
        _pair(col, rule, free, q_stem, v_stem, 1, ambiguous)
        has_ids = pd.notna(q_stem[col < 0]).any() or pd.notna(v_stem[free]).any()
        q_sym = to_symbols(q) if has_ids else q
        v_sym = to_symbols(v) if has_ids else v
        if not cross:
            if has_ids:
                _pair(col, rule, free, q_sym, v_sym, 2, ambiguous)
            _pair(col, rule, free, _upper(q_sym), _upper(v_sym), 3, ambiguous)
        else:
            _pair(col, rule, free, _upper(_orthologs(q_sym, query_species, reference_species)), _upper(v_sym), 4,
                  ambiguous)
    n_case = int((rule == 3).sum())
    if query_species is None and n_case > CASE_SHARE_WARNING * max(int((col >= 0).sum()), 1):
        q_sp, v_sp = detect_species(q), detect_species(v)
        if q_sp is not None and v_sp is not None and q_sp != v_sp:
            warnings.append(f"{n_case} genes matched only by letter case, and the data's genes look like {q_sp} "
                            f"genes while the model's look like {v_sp} genes: pass query_species={q_sp!r} "
                            "(`--query-species` in the command line) to match them by 1:1 orthologs instead.")
    left = sorted(i for i in ambiguous if col[i] < 0)
    return Harmonized(col, rule, [str(q[i]) for i in left], query_species if cross else None,
                      reference_species if cross else None, warnings)


def vocabulary_found(column_to_vocab: np.ndarray, n_vocab: int) -> np.ndarray:
    """Boolean mask over a vocabulary of ``n_vocab`` genes: those a dataset's ``column_to_vocab`` matched."""
    col = np.asarray(column_to_vocab)
    found = np.zeros(n_vocab, dtype=bool)
    found[col[col >= 0]] = True
    return found


def matchable_in(vocab: pd.Index | list[str], species: str) -> np.ndarray:
    """Boolean mask over ``vocab``: the genes a dataset of ``species`` can have under :func:`harmonize` (all of
    them for the vocabulary's own species; else those with a 1:1 ortholog in ``species``)."""
    v = np.asarray([str(x) for x in vocab], dtype=object)
    reference = detect_species(v)
    if reference == species:
        return np.ones(v.size, dtype=bool)
    names = _orthologs(to_symbols(v), reference, species) if reference is not None else np.full(v.size, None)
    names = pd.unique(pd.Series(names[pd.notna(names)], dtype=object))
    col = harmonize(v, list(names), query_species=species).column_to_vocab  # refuses a vocabulary of no species
    return vocabulary_found(col, v.size)
