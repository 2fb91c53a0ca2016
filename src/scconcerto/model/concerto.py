"""The user-facing Concerto model: set up on a reference AnnData, train, embed, save, load."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import torch

from .. import __version__
from .._errors import InputError, ModelFileError
from ..data import DataSetup, label_codes, prepare_cells, setup_reference
from ..data.readers import PROTEIN_KEY, from_mudata, is_mudata
from ..data.setup import PreparedCells
from ..data.vocabulary import DEFAULT_MIN_OVERLAP
from ..nn import ConcertoNetwork
from ..search.neighbors import searches_on_its_device
from ..train import TrainConfig, embed_cells, fit
from ..train.config import TrainingRecord, check_seed, check_settings
from ._attention import AttentionMixin
from .classifier import AnnotationPrediction, CellTypeClassifier, ClassifierState, cross_validate
from ._mapping import MappingResult
from ._reference import MappingState, fit_scaled_expression
from .mapper import ReferenceMapper
from ._schema import check_config, check_reference, check_weights
from .storage import CALIBRATION_ROWS, ReferenceStore, read_model_dir, save_model_dir

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("scconcerto")

UMAP_AT_TRAIN_MAX_CELLS = 50_000  # larger references get their UMAP on first mapping or plot
#: Labeled cells whose labels do not shape the positives: the confidence is calibrated on them.
CALIBRATION_FRACTION = 0.25
CALIBRATION_MAX_CELLS = 5_000
POSITIVE_SPACES = ("joint", "svd")
BALANCE_CHOICES = ("auto", "labels", "clusters", "none")


def default_epochs(n_cells: int) -> int:
    """Passes over a reference of ``n_cells``: about 60k cell visits for small references (at most 100
    epochs), 8 epochs up to 100k cells, then about 800k visits (at least 2 epochs) for larger ones.

    On a 100k-cell simulated reference the held-out kNN accuracy plateaued after 4 of 8 epochs (400k
    cell visits; ``benchmarks/SCALE.md``), so a million cells need no more than two passes.
    """
    n = max(n_cells, 1)
    return int(min(100, max(math.ceil(60_000 / n), min(8, max(2, math.ceil(800_000 / n))))))


class Concerto(AttentionMixin):
    """Contrastive teacher-student embedding of single cells (Yang et al., 2022).

    Parameters
    ----------
    adata
        Reference cells: raw counts (or log-normalized values) in ``X`` or ``layer``. A MuData is read
        as its RNA modality with the protein modality in ``obsm['protein']`` (the default ``protein_key``
        then; see :func:`scconcerto.data.readers.from_mudata`).
    batch_key
        ``obs`` column of the source of each cell (domain-specific BN per source).
    label_key
        ``obs`` column(s) of labels stored for later transfer (training is self-supervised).
    protein_key
        ``obsm`` key of protein counts (names in ``uns['protein_names']``) for RNA + protein.
    layer
        Layer holding the values (``None``: ``X``).
    hvg
        Number of highly variable genes chosen on this reference; ``None``: all genes.
    dim, out_dim
        Hidden and embedding widths.
    dropout
        Dropout rate before the output layers (the augmentation that makes the views).
    protein_norm
        ``"clr"`` or ``"log1p"``.
    protein_background
        Fit each protein's background on this reference (:mod:`scconcerto.data.protein`) and show the
        network a protein only where a cell is above it, as a gene only where it is detected. ``False``:
        every antibody count is seen (each antibody is then present in nearly every cell).
    seed
        Seed of the initial weights (and default training seed).

    Examples
    --------
    >>> model = Concerto(adata, batch_key="batch", label_key="cell_type")  # doctest: +SKIP
    >>> model.train()  # doctest: +SKIP
    >>> adata.obsm["X_concerto"] = model.embed(adata)  # doctest: +SKIP
    """

    _network_cls = ConcertoNetwork

    def __init__(self, adata: ad.AnnData, batch_key: str | None = None, label_key: str | list[str] | None = None,
                 protein_key: str | None = None, layer: str | None = None, hvg: int | None = None,
                 dim: int = 128, out_dim: int = 128, dropout: float = 0.1, protein_norm: str = "clr",
                 protein_background: bool = True, seed: int = 0):
        if is_mudata(adata):  # RNA + protein modalities: one AnnData with the proteins in obsm['protein']
            adata = from_mudata(adata)
            if protein_key is None and PROTEIN_KEY in adata.obsm:
                protein_key = PROTEIN_KEY
        if not isinstance(adata, ad.AnnData):
            raise InputError(f"Concerto needs an AnnData (or a MuData), got {type(adata).__name__}. Read files "
                             "with `scconcerto.read` (.h5ad, .h5mu) or `anndata.read_h5ad`.")
        check_seed(seed)
        setup = setup_reference(adata, batch_key=batch_key, label_key=label_key, protein_key=protein_key,
                                layer=layer, hvg=hvg, protein_norm=protein_norm,
                                protein_background=protein_background)
        self._init(setup, {"dim": dim, "out_dim": out_dim, "dropout": dropout}, seed)
        self.adata = adata

    def _init(self, setup: DataSetup, net_args: dict, seed: int) -> None:
        self.setup = setup
        self.network_args = dict(net_args)
        self.seed = seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.network = self._network_cls(setup.n_features, len(setup.sources), **net_args)
        self.train_config: TrainConfig | None = None
        self.history: list[dict] = []
        self.reference: ReferenceStore | None = None
        self.adata: ad.AnnData | None = None
        self.training_record = TrainingRecord()
        self._mapper = ReferenceMapper(self)
        self.classifier: CellTypeClassifier | None = None

    # ------------------------------------------------------------------ training
    @property
    def is_trained(self) -> bool:
        return self.train_config is not None

    @property
    def model_id(self) -> str:
        """A fingerprint of the network's weights (16 hex digits of their SHA-256), the same after save and load.

        Mapping and annotation record it in the query (``uns['scconcerto_mapping']['model_id']``), so that
        plots and reports can check that a query is drawn on the reference it was mapped onto.
        """
        digest = hashlib.sha256()
        for name, tensor in sorted(self.network.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]

    @searches_on_its_device  # neighbour positives, calibration: exact searches on the training GPU
    def train(self, epochs: int | None = None, batch_size: int = 256, lr: float = 1e-3,
              max_genes: int | None = 512, gene_dropout: float = 0.2, modality_dropout: float = 0.5,
              positive_neighbors: int = 10, label_positives: bool = True, positive_space: str = "joint",
              balance: str = "auto", seed: int | None = None, device: str = "auto",
              progress: bool | None = None, checkpoint_dir: str | Path | None = None, resume: bool = False,
              prepare_mapping: bool | dict = True, **kwargs: Any) -> "Concerto":
        """Contrastive pre-training on the reference, then embed and store it for mapping.

        Parameters
        ----------
        epochs
            Passes over the reference; ``None`` picks by size (see :func:`default_epochs`).
        batch_size
            Cells per (single-source) mini-batch.
        lr
            Initial Adam learning rate (linear decay to 1 %).
        max_genes
            At most this many expressed genes per cell in the teacher's training view.
        gene_dropout
            Fraction of expressed genes dropped in each training view (augmentation).
        modality_dropout
            RNA + protein models: probability that a training batch's teacher view is RNA-only, so
            that RNA-only cells embed where RNA + protein cells do (RNA-only queries, protein imputation).
        positive_neighbors
            Draw each cell's student view from one of its this many nearest cells of the same
            source (:mod:`scconcerto.data.positives`); ``0``: the paper's views of the cell itself.
            A backed reference searches them among the cells of each streamed window (all its cells up
            to 32,768), in the same expression sketch as an in-memory one.
        label_positives
            With label keys, neighbour positives share the cell's labels (the labels shape the
            embedding, as in scANVI); 25 % of the labeled cells (at most 5,000) are kept out of
            this and calibrate the mapping confidence.
        positive_space
            Where the neighbour positives are searched: ``"joint"`` (default), the mean cosine
            similarity in the plain expression space (truncated SVD of the normalized values) and in
            the scaled one (PCA of z-scored genes, :mod:`scconcerto.data.scaled_space`, which then serves
            mapping too); ``"svd"``: the plain space alone (as models trained before the option).
        balance
            Take each source's batch-normalization statistics with weights that give every cell group
            the same share in every source (:mod:`scconcerto.data.composition`), so that a source's
            cell-type composition does not move its types: ``"labels"`` (groups of the label keys),
            ``"clusters"`` (clusters found across sources; in-memory references), ``"auto"`` (labels
            when given, else clusters) or ``"none"`` (plain per-source statistics). Only with several
            sources; the groups are kept to balance query sources alike (AdaBN, fine-tuning).
        seed
            Training seed (default: the model's seed).
        device
            ``"auto"``, ``"cpu"`` or ``"cuda"``.
        progress
            Draw a progress bar (standard error); ``None``: as ``scconcerto.settings.progress`` (a terminal or a
            notebook; elsewhere one ``info`` log line per epoch).
        checkpoint_dir
            Write ``last.ckpt`` there every epoch; with ``resume=True`` continue from it.
        prepare_mapping
            After training, calibrate the mapping confidence and unknown thresholds on the reference
            (and, up to ``UMAP_AT_TRAIN_MAX_CELLS`` cells, compute the reference UMAP); a dict is passed
            to :meth:`prepare_mapping` as options; ``False`` skips it (it then runs on first mapping).
        **kwargs
            Other :class:`~scconcerto.train.TrainConfig` fields (``temperature``, ``devices``, ``strategy``...).
        """
        if self.adata is None:
            raise InputError("This model has no reference AnnData attached (it was loaded); it is already trained.")
        check_settings({"epochs": epochs, "batch_size": batch_size, "lr": lr, "device": device,
                        "seed": self.seed if seed is None else seed, **kwargs},
                       checkpoint_dir=checkpoint_dir, resume=resume)  # before any work
        prepared = self._prepare(self.adata, what="the reference")
        if not 0.0 <= modality_dropout <= 1.0:
            raise InputError(f"modality_dropout must be between 0 and 1, got {modality_dropout}.")
        if positive_neighbors < 0:
            raise InputError(f"positive_neighbors must be 0 (the paper's views) or more, got {positive_neighbors}.")
        if positive_space not in POSITIVE_SPACES:
            raise InputError(f"positive_space must be one of {', '.join(POSITIVE_SPACES)}, got {positive_space!r}.")
        if balance not in BALANCE_CHOICES:
            raise InputError(f"balance must be one of {', '.join(BALANCE_CHOICES)}, got {balance!r}.")
        seed = self.seed if seed is None else seed
        labels = label_codes(self.adata, self.setup)
        self._fit_expression_space(prepared, labels, seed,
                                   scaled=positive_neighbors > 0 and positive_space == "joint")
        label_positives, calibration_rows = self._attach_positives(prepared, labels, positive_neighbors,
                                                                   label_positives, seed)
        self.training_record.positive_pool_cells = _positive_pool(prepared.cells)
        balance_groups, balance = self._attach_balance(prepared, labels, balance, seed)
        config = TrainConfig(epochs=epochs or default_epochs(prepared.cells.n_cells), batch_size=batch_size, lr=lr,
                             max_genes=max_genes, gene_dropout=gene_dropout,
                             modality_dropout=modality_dropout if self.setup.proteins else 0.0,
                             positive_neighbors=positive_neighbors if _has_positives(prepared.cells) else 0,
                             label_positives=label_positives,
                             positive_space=positive_space if self._scaled_cache is not None else "svd",
                             balance=balance, seed=seed, device=device, progress=progress, **kwargs)
        start = time.perf_counter()
        self.network.train()  # Lightning keeps submodule modes; an earlier embed left them in eval (no dropout)
        from ..train.runner import is_global_zero, seeded_rng

        callbacks = []
        if balance == "clusters" and config.epochs >= 2:  # clusters found again in the embedding half-way
            from ..train.balance import RefreshBalance

            def keep(groups: np.ndarray) -> None:
                nonlocal balance_groups
                balance_groups = groups.astype(np.int64)

            callbacks.append(RefreshBalance(prepared.cells, config.epochs // 2 - 1, seed, keep))
        with seeded_rng(config.seed, device):  # forks (and seeds) the CPU and, when used, the CUDA generator
            history = fit(self.network, prepared.cells, config, checkpoint_dir=checkpoint_dir, resume=resume,
                          callbacks=callbacks)
        self.train_config = config
        self.history = history
        self.training_record.seconds = time.perf_counter() - start
        if not is_global_zero():  # data-parallel: only rank 0 embeds the reference and prepares mapping
            return self
        self._store_reference(prepared, labels, calibration_rows)
        self.reference.balance_groups = balance_groups
        if prepare_mapping:
            options = {"umap": prepared.cells.n_cells <= UMAP_AT_TRAIN_MAX_CELLS, "device": device}
            options.update(prepare_mapping if isinstance(prepare_mapping, dict) else {})
            self.prepare_mapping(**options)
        return self

    def _fit_expression_space(self, prepared: PreparedCells, labels: dict[str, np.ndarray], seed: int,
                              scaled: bool = False) -> None:
        """The reference in a truncated-SVD space of its expression, and with ``scaled`` in its scaled
        expression space too (fitted on a sample, projected block by block: in memory or on disk alike).

        The neighbour positives are searched there. The scaled space and the reference cells' coordinates
        in it are saved with the model (``reference.scaled_expression`` and ``reference.scaled_space``): mapping's
        label decision reads it (:mod:`scconcerto.mapping.label_model`).
        """
        from ..data.positives import expression_space

        self._expression_cache = self._expression_loadings = self._scaled_cache = None
        if prepared.cells.n_cells < 3:
            return
        try:
            self._expression_cache, self._expression_loadings = expression_space(prepared.cells, seed=seed)
        except ValueError as exc:  # e.g. a single expressed gene: nothing to decompose
            log.info("No expression space for the reference (%s).", exc)
            return
        if scaled:
            self._scaled_cache = fit_scaled_expression(prepared.cells, seed)

    def _attach_positives(self, prepared: PreparedCells, labels: dict[str, np.ndarray], k: int,
                          label_positives: bool, seed: int) -> tuple[bool, np.ndarray | None]:
        """Set how the cells' neighbour positives are found: ``prepared.cells.positives`` searched among
        all cells in memory, or ``prepared.cells.positive_search`` for the streamed windows of a backed
        reference (:class:`~scconcerto.data.positives.PositiveSearch`, one search for both).

        Returns whether labels shaped them, and the labeled rows kept out of that (the calibration hold-out).
        """
        from ..data.positives import PositiveSearch, joint_components, neighbor_positives, positive_codes

        if k == 0:
            return False, None
        groups = calibration_rows = None
        if label_positives and self.setup.label_keys:
            groups = _label_groups([labels[key] for key in self.setup.label_keys])
            labeled = np.flatnonzero(groups >= 0)
            rng = np.random.default_rng(seed)
            n_open = int(min(CALIBRATION_MAX_CELLS, round(CALIBRATION_FRACTION * labeled.size)))
            calibration_rows = np.sort(rng.choice(labeled, n_open, replace=False)) if n_open else None
        components = self._expression_cache
        if components is not None and self._scaled_cache is not None:
            components = joint_components(components, self._scaled_cache[0])
        cells = prepared.cells
        if components is None:  # e.g. a single expressed gene: nothing to search in
            log.info("No expression sketch of the reference: training with the paper's views.")
            return False, None
        if cells.on_disk:  # searched window by window as the cells are streamed
            cells.positive_search = PositiveSearch(k, components, positive_codes(cells.n_cells, groups,
                                                                                 calibration_rows))
        else:  # the same search, once, among all cells
            cells.positives = neighbor_positives(cells, k, labels=groups, open_rows=calibration_rows, seed=seed,
                                                 components=components)
        return groups is not None, calibration_rows

    def _attach_balance(self, prepared: PreparedCells, labels: dict[str, np.ndarray], balance: str, seed: int
                        ) -> tuple[np.ndarray | None, str]:
        """Set ``prepared.cells.balance_weights`` for ``balance``; return the groups and what was balanced.

        ``"auto"`` means labels when the model has label keys, else clusters: first those of the expression
        space, then (from half-way through training) those of the embedding. A single source has nothing to
        balance.
        """
        from ..data.composition import balance_groups, source_balance_weights

        domains = prepared.cells.domains
        if balance == "none" or len(np.unique(domains)) < 2:
            return None, "none"
        if balance == "auto":
            balance = "labels" if self.setup.label_keys else "clusters"
        if balance == "labels":
            if not self.setup.label_keys:
                raise InputError("balance='labels' needs label keys: pass label_key= to Concerto, or use "
                                 "balance='clusters' (or 'auto').")
            groups = _label_groups([labels[key] for key in self.setup.label_keys])
        else:
            if self._expression_cache is None:  # no expression space: plain statistics until the embedding's clusters
                return None, "clusters"
            groups = balance_groups(self._expression_cache, domains, seed=seed)
        prepared.cells.balance_weights = source_balance_weights(groups, domains)
        return groups.astype(np.int64), balance

    def _store_reference(self, prepared: PreparedCells, labels: dict[str, np.ndarray],
                         calibration_rows: np.ndarray | None = None) -> None:
        emb = embed_cells(self.network, prepared.cells, device=self.train_config.device)
        self.reference = ReferenceStore(embedding=emb, domains=prepared.cells.domains, labels=labels,
                                        protein=prepared.cells.protein)
        if calibration_rows is not None:
            self.reference.calibration_rows = calibration_rows.astype(np.int64)
        if getattr(self, "_scaled_cache", None) is not None:
            self.reference.scaled_expression, self.reference.scaled_space = self._scaled_cache
        self._expression_cache = self._expression_loadings = self._scaled_cache = None

    # ------------------------------------------------------------------ inference
    def _prepare(self, adata: ad.AnnData, batch_key: str | None = "__setup__", min_overlap: float = DEFAULT_MIN_OVERLAP,
                 what: str = "the data", use_protein: bool = True, query_species: str | None = None
                 ) -> PreparedCells:
        if not isinstance(adata, ad.AnnData):
            raise InputError(f"Expected an AnnData, got {type(adata).__name__}.")
        return prepare_cells(adata, self.setup, batch_key=batch_key, min_overlap=min_overlap, what=what,
                             use_protein=use_protein, query_species=query_species)

    def embed(self, adata: ad.AnnData, batch_key: str | None = "__setup__", batch_size: int = 1024,
              device: str = "auto", min_overlap: float = DEFAULT_MIN_OVERLAP, use_protein: bool = True,
              query_species: str | None = None) -> np.ndarray:
        """Embed cells with the teacher (eval mode, L2-normalized): ``(n_cells, out_dim)`` float32.

        Genes are aligned by name to the model's vocabulary. Cells of a source
        seen in training use its BN statistics; cells of other sources (or all
        cells, when ``adata`` lacks ``batch_key``) get AdaBN statistics estimated
        on themselves, per source. The model itself is not changed. ``query_species``: the data's
        species (``"human"`` / ``"mouse"``) when it is not the model's (genes matched by 1:1 orthologs).
        """
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise InputError(f"batch_size must be a positive number of cells, got {batch_size!r}.")
        prepared = self._prepare(adata, batch_key, min_overlap, what="the data", use_protein=use_protein,
                                 query_species=query_species)
        adapt = sorted(set(prepared.cells.domains[prepared.cells.domains >= len(self.setup.sources)].tolist()))
        self.last_alignment = prepared.alignment
        return embed_cells(self.network, prepared.cells, batch_size=batch_size, device=device,
                           adapt_domains=adapt or None)

    # ------------------------------------------------------------------ mapping
    @property
    def mapper(self) -> ReferenceMapper:
        """The model's :class:`~scconcerto.model.mapper.ReferenceMapper` (its state is saved with the model)."""
        if self._mapper.model is not self:  # a shallow copy of the model: a mapper of its own, the same state
            self._mapper = self._mapper.bound_to(self)
        return self._mapper

    def map_query(self, adata: ad.AnnData, *, copy: bool = False, **options: Any) -> "MappingResult | ad.AnnData":
        """Map query cells onto the reference and annotate ``adata``: :meth:`ReferenceMapper.map
        <scconcerto.model.mapper.ReferenceMapper.map>` (same arguments, ``copy=`` included). The model is not
        changed."""
        return self.mapper.map(adata, copy=copy, **options)

    def prepare_mapping(self, adata: ad.AnnData | None = None, **options: Any) -> MappingState:
        """Compute and store what query mapping needs of the reference (runs at the end of training):
        :meth:`ReferenceMapper.prepare <scconcerto.model.mapper.ReferenceMapper.prepare>`."""
        return self.mapper.prepare(adata, **options)

    def known_probability(self, adata: ad.AnnData, label_key: str, **options: Any) -> tuple[np.ndarray, float]:
        """The probability that each cell is of a type the reference has under ``label_key``, and the default
        unknown threshold (:meth:`ReferenceMapper.known_probability
        <scconcerto.model.mapper.ReferenceMapper.known_probability>`)."""
        return self.mapper.known_probability(adata, label_key, **options)

    def label_model(self, key: str, space: str = "full") -> Any:
        """The calibrated label decision of ``key`` (:meth:`ReferenceMapper.label_model
        <scconcerto.model.mapper.ReferenceMapper.label_model>`)."""
        return self.mapper.label_model(key, space)

    def reference_umap(self) -> np.ndarray | None:
        """The stored reference UMAP coordinates ``(n_ref, 2)``, or ``None`` when the model was prepared without
        one (``prepare_mapping(umap=True)`` computes it)."""
        return self.mapper.reference_umap()

    # ------------------------------------------------------------------ the classifier
    def fit_classifier(self, adata: ad.AnnData | None = None, label_key: str | None = None,
                       **options: Any) -> "Concerto":
        """Fine-tune a cell-type classifier on the teacher and keep it as ``model.classifier`` (saved with the model).

        The arguments are those of :meth:`CellTypeClassifier.fit <scconcerto.CellTypeClassifier.fit>`
        (``target``, ``pretrain``, ``epochs``, ``validation_fraction``, ``unknown_score``...); the model's own
        network and reference are not changed.

        Returns
        -------
        Concerto
            The model, with ``model.classifier`` set (see :attr:`annotation_summary`).
        """
        self.classifier = CellTypeClassifier.fit(self, adata, label_key, **options)
        return self

    def predict(self, adata: ad.AnnData, *, copy: bool = False, **options: Any) -> "AnnotationPrediction | ad.AnnData":
        """Predict cell types with ``model.classifier``: :meth:`CellTypeClassifier.predict
        <scconcerto.CellTypeClassifier.predict>` (same arguments, ``copy=`` included)."""
        return self._require_classifier().predict(adata, copy=copy, **options)

    def predict_logits(self, adata: ad.AnnData, **options: Any) -> np.ndarray:
        """Uncalibrated logits of ``model.classifier`` (:meth:`CellTypeClassifier.predict_logits`)."""
        return self._require_classifier().predict_logits(adata, **options)

    @property
    def annotation_summary(self) -> dict:
        """Settings, calibration (temperature, ECE, held-out accuracy) and history of ``model.classifier``."""
        return self._require_classifier().summary

    def _require_classifier(self) -> CellTypeClassifier:
        if self.classifier is None:
            raise InputError("The model has no classifier: call `model.fit_classifier(label_key=...)` first.")
        return self.classifier

    @classmethod
    def cross_validate(cls, adata: ad.AnnData, label_key: str, **options: Any) -> "pd.DataFrame":
        """Stratified k-fold cross-validation of the classifier on one labeled dataset
        (:func:`scconcerto.model.classifier.cross_validate`: ``folds``, ``batch_key``, ``pretrain``, ``seed``,
        ``model_kwargs``, ``pretrain_kwargs``, and the classifier's arguments).

        Returns
        -------
        pandas.DataFrame
            One row per fold: ``fold``, ``n_train``, ``n_test``, ``accuracy``, ``macro_f1``, ``median_f1``,
            ``seconds``.
        """
        return cross_validate(cls, adata, label_key, **options)

    # ------------------------------------------------------------------ persistence
    def _config_dict(self) -> dict:
        return {"scconcerto_version": __version__, "seed": self.seed, "setup": self.setup.to_dict(),
                "network": {**self.network_args, "n_features": self.setup.n_features,
                            "n_domains": len(self.setup.sources)},
                "train": self.train_config.to_dict() if self.train_config else None,
                "history": self.history, "training": asdict(self.training_record),
                "mapping": None if self.mapper.state is None else self.mapper.state.to_dict(),
                "classifier": None if self.classifier is None else self.classifier.state.to_dict()}

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Save to a directory (safetensors + JSON with a format version); atomic."""
        if not self.is_trained:
            raise InputError("The model is not trained yet: call `model.train()` before saving.")
        return save_model_dir(path, self._config_dict(), self.network.state_dict(), self.reference, overwrite,
                              parts={"classifier": self.classifier.to_tensors() if self.classifier else {}})

    @classmethod
    def load(cls, path: str | Path) -> "Concerto":
        """Load a model directory written by :meth:`save` (verifies version, checksums, the config's types and
        ranges, and every array's name, shape and type before building anything)."""
        config, weights, reference, parts = read_model_dir(path)
        unknown_parts = sorted(set(parts) - {"classifier"})
        if unknown_parts:
            raise ModelFileError(f"config.json of {str(path)!r} lists files of unknown roles {unknown_parts[:5]}; a "
                                 "newer scConcerto may have written it (upgrade), or it was edited.")
        check_config(config, cls._network_cls)
        setup = DataSetup.from_dict(config["setup"])
        net = dict(config["network"])
        n_features, n_domains = net.pop("n_features"), net.pop("n_domains")
        check_weights(cls._network_cls, n_features, n_domains, net, weights)
        if reference is not None:
            check_reference(reference, setup, net.get("out_dim", 128), index_extras=(CALIBRATION_ROWS,))
        model = cls.__new__(cls)
        model._init(setup, net, int(config["seed"]))
        model.network.load_state_dict(weights, strict=True)
        model.reference = ReferenceStore.from_tensors(reference) if reference is not None else None
        model.train_config = TrainConfig(**config["train"]) if config["train"] is not None else None
        model.history = list(config["history"])
        model.training_record = TrainingRecord(**config["training"])
        if config["mapping"] is not None:
            if model.reference is None:
                raise ModelFileError(f"config.json of {str(path)!r} records a prepared mapping but the model has no "
                                     "reference; the directory is damaged. Train and save the model again.")
            model.mapper.state = MappingState.from_dict(config["mapping"])
        if ("classifier" in parts) != (config["classifier"] is not None):
            raise ModelFileError(f"The model directory {str(path)!r} holds classifier weights without settings, or "
                                 "settings without weights (the classifier entry of config.json); it is damaged. "
                                 "Fine-tune and save the classifier again.")
        if config["classifier"] is not None:
            model.classifier = CellTypeClassifier.from_tensors(model, parts["classifier"],
                                                               ClassifierState.from_dict(config["classifier"]))
        return model

    def __repr__(self) -> str:
        s = self.setup
        return (f"Concerto({len(s.genes)} genes{f', {len(s.proteins)} proteins' if s.proteins else ''}, "
                f"{len(s.sources)} sources, labels {list(s.labels)}, trained={self.is_trained})")


def _has_positives(cells: Any) -> bool:
    """Whether the training cells draw their student views from neighbour positives."""
    return cells.positives is not None or cells.positive_search is not None


def _positive_pool(cells: Any) -> int:
    """How many cells a cell's neighbour positives are searched among: all cells in memory, a streamed
    window's (at most) on disk; 0 without neighbour positives."""
    from ..data.streaming import DEFAULT_CHUNK_SIZE, DEFAULT_WINDOW_CHUNKS

    if not _has_positives(cells):
        return 0
    return cells.n_cells if not cells.on_disk else min(cells.n_cells, DEFAULT_CHUNK_SIZE * DEFAULT_WINDOW_CHUNKS)


def _label_groups(codes: list[np.ndarray]) -> np.ndarray:
    """One group code per cell from its codes under every label key; ``-1`` when any is missing."""
    stacked = np.stack([np.asarray(c, dtype=np.int64) for c in codes], axis=1)
    missing = (stacked < 0).any(axis=1)
    _, groups = np.unique(stacked, axis=0, return_inverse=True)
    groups = groups.astype(np.int64).ravel()
    groups[missing] = -1
    return groups
