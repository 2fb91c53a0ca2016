"""The user-facing Concerto model: set up on a reference AnnData, train, embed, save, load.

The work lives below it: pre-training in :func:`scconcerto.train.pretrain.pretrain_reference`, mapping in
:class:`~scconcerto.model.mapper.ReferenceMapper`, the classifier in :class:`~scconcerto.CellTypeClassifier`,
attention in :func:`scconcerto.tools.attention.teacher_attention`, the folder format in :mod:`.storage`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import torch

from .._errors import InputError
from ..data import DataSetup, prepare_cells, setup_reference
from ..data.readers import PROTEIN_KEY, from_mudata, is_mudata
from ..data.setup import PreparedCells
from ..data.vocabulary import DEFAULT_MIN_OVERLAP
from ..nn import ConcertoNetwork
from ..tools.attention import AttentionWeights, teacher_attention
from ..train import TrainConfig, embed_cells
from ..train.config import TrainingRecord, check_seed, default_epochs  # noqa: F401 - default_epochs: model's API
from ..train.pretrain import pretrain_reference
from ._persistence import model_config, read_saved_model
from ._provenance import weights_fingerprint
from .classifier import AnnotationPrediction, CellTypeClassifier, cross_validate
from .mapper import MappingResult, MappingState, ReferenceMapper
from .storage import ReferenceStore, save_model_dir

if TYPE_CHECKING:
    import pandas as pd

UMAP_AT_TRAIN_MAX_CELLS = 50_000  # larger references get their UMAP on first mapping or plot


class Concerto:
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
        Highly variable genes of the reference to keep (scanpy's ``seurat`` flavour, per batch): a number,
        ``None`` for every gene, or ``"auto"``: 2,000 of a whole transcriptome (more than 5,000 genes), every
        gene of a smaller, already chosen set (:func:`~scconcerto.data.setup.resolve_hvg`).
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
                 protein_key: str | None = None, layer: str | None = None, hvg: int | str | None = "auto",
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
        return weights_fingerprint(self.network)

    def train(self, epochs: int | None = None, batch_size: int = 256, lr: float = 1e-3,
              max_genes: int | None = 512, gene_dropout: float = 0.2, modality_dropout: float = 0.5,
              positive_neighbors: int = 10, label_positives: bool = True, label_weight: float = 1.0,
              positive_space: str = "centred", positive_rank: str = "nearest", positive_sources: str = "any",
              balance: str = "auto", source_norm: str = "auto", seed: int | None = None, device: str = "auto",
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
        label_weight
            With label-aware training (``label_positives``), the weight of a supervised term added to
            NT-Xent: the cross-entropy of each labeled cell (the held-out ones excepted) against one learned
            direction per label, so that types told apart by a few genes are told apart in the embedding
            (:class:`~scconcerto.train.TrainConfig`); ``0``: contrastive training only.
        positive_space
            Where the neighbour positives are searched: ``"centred"`` (default), the mean cosine similarity
            in the centred expression space (PCA of the normalized values, scanpy's default space) and in
            the scaled one (PCA of z-scored genes, :mod:`scconcerto.data.scaled_space`, which then serves
            mapping too); ``"joint"``: the uncentred SVD of the normalized values instead of the centred PCA
            (as models trained before 2026-12-08); ``"svd"``: that uncentred SVD alone (as models trained
            before the option). How the default was chosen: ``docs/design.md``.
        positive_rank
            ``"nearest"`` (default): a cell's positives are its ``positive_neighbors`` nearest cells;
            ``"shared"``: the ``positive_neighbors`` of its 30 nearest cells
            (:data:`~scconcerto.data.positives.SHARED_CANDIDATES`) that share most of its 30 nearest cells, so
            that a cell on the edge of its type draws fewer positives of the next type. Why the default is the
            nearest cells (the shared ranking raises k-NN accuracy but lowers bio-conservation scores):
            ``docs/design.md``.
        positive_sources
            ``"any"`` (default): a cell's positives are its nearest cells of every source, so that cells
            of different sources that already agree in expression are pulled together; ``"same"``: of its
            own source only (as models trained before 2026-12-07).
        balance
            Take each source's batch-normalization statistics with weights that give every cell group
            the same share in every source (:mod:`scconcerto.data.composition`), so that a source's
            cell-type composition does not move its types: ``"labels"`` (groups of the label keys),
            ``"clusters"`` (clusters found across sources; in-memory references), ``"auto"`` (labels
            when given, else clusters) or ``"none"`` (plain per-source statistics). Only with several
            sources; the groups are kept to balance query sources alike (AdaBN, fine-tuning).
        source_norm
            ``"source"``: each source of the reference is batch-normalized with its own statistics (the
            paper's source-aware BN); ``"shared"``: all sources with one set, as one source; ``"auto"``
            (default): shared when matched cells of different sources (mutual nearest neighbours in expression
            space) differ by little common shift (:mod:`scconcerto.data.source_effect`), as donors or samples of
            one technology, whose per-source statistics would mostly remove biology. The measured shift is kept
            in ``training_record.source_shift``, the decision in ``train_config.source_norm``.
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
        out = pretrain_reference(self.network, self.adata, self.setup, seed=self.seed if seed is None else seed,
                                 epochs=epochs, batch_size=batch_size, lr=lr, max_genes=max_genes,
                                 gene_dropout=gene_dropout, modality_dropout=modality_dropout,
                                 positive_neighbors=positive_neighbors, label_positives=label_positives,
                                 label_weight=label_weight,
                                 positive_space=positive_space, positive_rank=positive_rank,
                                 positive_sources=positive_sources,
                                 balance=balance, source_norm=source_norm, device=device, progress=progress,
                                 checkpoint_dir=checkpoint_dir, resume=resume, **kwargs)
        self.train_config, self.history, self.training_record = out.config, out.history, out.record
        if out.reference is None:  # data-parallel: only rank 0 embeds the reference and prepares mapping
            return self
        self.reference = ReferenceStore(**out.reference)
        if prepare_mapping:
            options = {"umap": out.n_cells <= UMAP_AT_TRAIN_MAX_CELLS, "device": device}
            options.update(prepare_mapping if isinstance(prepare_mapping, dict) else {})
            self.prepare_mapping(**options)
        return self

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

    def attention(self, adata: ad.AnnData, batch_size: int = 1024, device: str = "auto",
                  min_overlap: float = DEFAULT_MIN_OVERLAP, use_protein: bool = True) -> AttentionWeights:
        """The teacher's attention weights of every cell over its expressed genes (and proteins).

        They come from the call the embedding makes, before the source-specific batch normalization, so cells
        of any source need no adaptation (:func:`scconcerto.tools.attention.teacher_attention`). The model is not
        changed.

        Parameters
        ----------
        adata
            Cells to explain; genes are aligned to the model's vocabulary by name.
        batch_size
            Cells per chunk.
        device
            ``"auto"``, ``"cpu"`` or ``"cuda"``.
        min_overlap
            Smallest fraction of the model's genes the data must have.
        use_protein
            Also return protein attention when the model and the data have proteins.

        Returns
        -------
        AttentionWeights
            ``.rna``: cells x ``adata.var_names`` CSR (rows sum to one over the expressed genes the model knows;
            zero elsewhere); ``.protein``: cells x model proteins CSR (rows sum to one over the proteins above
            background), or ``None``.

        Examples
        --------
        >>> att = model.attention(adata)  # doctest: +SKIP
        >>> att.rna.sum(axis=1)  # ones (zeros for cells with no known gene)  # doctest: +SKIP
        """
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise InputError(f"batch_size must be a positive number of cells, got {batch_size!r}.")
        prepared = self._prepare(adata, None, min_overlap, what="the data", use_protein=use_protein)
        self.last_alignment = prepared.alignment
        return teacher_attention(self.network, prepared, adata.var_names, self.setup.proteins, batch_size, device)

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
        """:meth:`ReferenceMapper.known_probability <scconcerto.model.mapper.ReferenceMapper.known_probability>`."""
        return self.mapper.known_probability(adata, label_key, **options)

    def label_model(self, key: str, space: str = "full") -> Any:
        """:meth:`ReferenceMapper.label_model <scconcerto.model.mapper.ReferenceMapper.label_model>`."""
        return self.mapper.label_model(key, space)

    def reference_umap(self) -> np.ndarray | None:
        """The stored reference UMAP coordinates ``(n_ref, 2)``, or ``None`` when the model was prepared without
        one (``prepare_mapping(umap=True)`` computes it)."""
        return self.mapper.reference_umap()

    # ------------------------------------------------------------------ the classifier
    def fit_classifier(self, adata: ad.AnnData | None = None, label_key: str | None = None,
                       **options: Any) -> "Concerto":
        """Fine-tune a cell-type classifier on the teacher and keep it as ``model.classifier`` (saved with the model):
        :meth:`CellTypeClassifier.fit <scconcerto.CellTypeClassifier.fit>` (same arguments: ``target``,
        ``pretrain``, ``epochs``, ``validation_fraction``, ``unknown_score``...). Returns the model; its own
        network and reference are not changed."""
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
    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Save to a directory (safetensors + JSON with a format version); atomic."""
        if not self.is_trained:
            raise InputError("The model is not trained yet: call `model.train()` before saving.")
        return save_model_dir(path, model_config(self), self.network.state_dict(), self.reference, overwrite,
                              parts={"classifier": self.classifier.to_tensors() if self.classifier else {}})

    @classmethod
    def load(cls, path: str | Path) -> "Concerto":
        """Load a model directory written by :meth:`save` (verifies version, checksums, the config's types and
        ranges, and every array's name, shape and type before building anything)."""
        saved = read_saved_model(path, cls._network_cls)
        model = cls.__new__(cls)
        model._init(saved.setup, saved.network_args, saved.seed)
        model.network.load_state_dict(saved.weights, strict=True)
        model.reference, model.train_config, model.history = saved.reference, saved.train_config, saved.history
        model.training_record, model.mapper.state = saved.training_record, saved.mapping
        if saved.classifier is not None:
            model.classifier = CellTypeClassifier.from_tensors(model, *saved.classifier)
        return model

    def __repr__(self) -> str:
        s = self.setup
        return (f"Concerto({len(s.genes)} genes{f', {len(s.proteins)} proteins' if s.proteins else ''}, "
                f"{len(s.sources)} sources, labels {list(s.labels)}, trained={self.is_trained})")
