"""The model folder as the parts of a model: the config :meth:`Concerto.save <scconcerto.Concerto.save>` writes
(:func:`model_config`), and what :meth:`Concerto.load <scconcerto.Concerto.load>` reads and checks before it
builds anything (:func:`read_saved_model`). The folder's layout and checksums are :mod:`.storage`'s."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from .._errors import ModelFileError
from ..data import DataSetup
from ..train import TrainConfig
from ..train.config import TrainingRecord
from ._reference import MappingState
from ._schema import check_config, check_reference, check_weights
from .classifier import ClassifierState
from .storage import CALIBRATION_ROWS, ReferenceStore, read_model_dir


def model_config(model: Any) -> dict:
    """The ``config.json`` of a trained model (everything but its tensors)."""
    return {"scconcerto_version": __version__, "seed": model.seed, "setup": model.setup.to_dict(),
            "network": {**model.network_args, "n_features": model.setup.n_features,
                        "n_domains": len(model.setup.sources)},
            "train": model.train_config.to_dict() if model.train_config else None,
            "history": model.history, "training": asdict(model.training_record),
            "mapping": None if model.mapper.state is None else model.mapper.state.to_dict(),
            "classifier": None if model.classifier is None else model.classifier.state.to_dict()}


@dataclass
class SavedModel:
    """A model folder, read and checked: what :meth:`Concerto.load <scconcerto.Concerto.load>` builds a model of."""

    seed: int
    setup: DataSetup
    network_args: dict
    weights: dict[str, torch.Tensor]
    reference: ReferenceStore | None
    train_config: TrainConfig | None
    history: list[dict]
    training_record: TrainingRecord
    mapping: MappingState | None
    classifier: tuple[dict[str, torch.Tensor], ClassifierState] | None


def read_saved_model(path: str | Path, network_cls: type) -> SavedModel:
    """Read the model folder ``path`` (verifies version, checksums, the config's types and ranges, and every
    array's name, shape and type); :class:`~scconcerto.ModelFileError` for a folder that does not fit."""
    config, weights, reference, parts = read_model_dir(path)
    unknown_parts = sorted(set(parts) - {"classifier"})
    if unknown_parts:
        raise ModelFileError(f"config.json of {str(path)!r} lists files of unknown roles {unknown_parts[:5]}; a "
                             "newer scConcerto may have written it (upgrade), or it was edited.")
    check_config(config, network_cls)
    setup = DataSetup.from_dict(config["setup"])
    net = dict(config["network"])
    n_features, n_domains = net.pop("n_features"), net.pop("n_domains")
    check_weights(network_cls, n_features, n_domains, net, weights)
    if reference is not None:
        check_reference(reference, setup, net.get("out_dim", 128), index_extras=(CALIBRATION_ROWS,))
    if config["mapping"] is not None and reference is None:
        raise ModelFileError(f"config.json of {str(path)!r} records a prepared mapping but the model has no "
                             "reference; the directory is damaged. Train and save the model again.")
    if ("classifier" in parts) != (config["classifier"] is not None):
        raise ModelFileError(f"The model directory {str(path)!r} holds classifier weights without settings, or "
                             "settings without weights (the classifier entry of config.json); it is damaged. "
                             "Fine-tune and save the classifier again.")
    return SavedModel(
        seed=int(config["seed"]), setup=setup, network_args=net, weights=weights,
        reference=ReferenceStore.from_tensors(reference) if reference is not None else None,
        train_config=TrainConfig(**config["train"]) if config["train"] is not None else None,
        history=list(config["history"]), training_record=TrainingRecord(**config["training"]),
        mapping=None if config["mapping"] is None else MappingState.from_dict(config["mapping"]),
        classifier=None if config["classifier"] is None
        else (parts["classifier"], ClassifierState.from_dict(config["classifier"])))
