"""What a model directory's ``config.json`` and arrays must hold, checked before anything is built from them.

The allowed keys and their types come from the classes the config is turned into
(:class:`~scconcerto.data.DataSetup`, :class:`~scconcerto.train.TrainConfig`, the
network's ``__init__``), so a field added there is accepted here without a second
list to keep. Sizes are checked against the weights on disk with the network built
on the ``meta`` device (no memory), so a tampered ``dim`` can neither allocate nor
load into the wrong shapes.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from typing import Any, Literal, Union

import numpy as np
import torch

from .._errors import ModelFileError
from ..data import DataSetup
from ..data.value_scale import check_profile
from ..train import TrainConfig

from ..train.config import MAX_SEED, TrainingRecord
#: Top-level keys: storage's, then the model's (:func:`._persistence.model_config`).
STORAGE_KEYS = {"format", "format_version", "files", "checksums", "config_checksum"}
MODEL_KEYS = {"scconcerto_version", "seed", "setup", "network", "train", "history", "training", "mapping",
              "classifier"}
OPTIONAL_KEYS = {"config_checksum"}
PROTEIN_NORMS = ("clr", "log1p")


def _fail(where: str, problem: str) -> ModelFileError:
    return ModelFileError(f"config.json of the model: {where} {problem}. The file was edited or damaged; restore the "
                          "model directory from its original copy, or train and save the model again.")


def _conforms(value: Any, hint: Any) -> bool:
    """Whether a JSON value matches a type hint (unsupported hints accept anything)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is None or hint is type(None):
        return value is None
    if origin in (Union, types.UnionType):
        return any(_conforms(value, a) for a in args)
    if origin is Literal:
        return any(type(value) is type(a) and value == a for a in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin is list or hint is list:
        return isinstance(value, list) and (not args or all(_conforms(v, args[0]) for v in value))
    if origin is dict or hint is dict:
        return isinstance(value, dict) and (not args or all(_conforms(k, args[0]) and _conforms(v, args[1])
                                                             for k, v in value.items()))
    return True


def _check_fields(section: Any, where: str, hints: dict[str, Any], required: set[str]) -> None:
    if not isinstance(section, dict):
        raise _fail(where, f"is a {type(section).__name__}, not a mapping")
    unknown = sorted(set(section) - set(hints))
    if unknown:
        raise _fail(where, f"has unknown entries {unknown[:5]} (a newer scConcerto may have written it: upgrade)")
    missing = sorted(required - set(section))
    if missing:
        raise _fail(where, f"lacks the entries {missing[:5]}")
    for key, value in section.items():
        if not _conforms(value, hints[key]):
            raise _fail(f"{where}.{key}", f"is {value!r:.80}, not a valid {_name(hints[key])}")
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            raise _fail(f"{where}.{key}", f"is negative ({value})")


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _dataclass_hints(cls: type) -> tuple[dict[str, Any], set[str]]:
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    required = {f.name for f in fields if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING}
    return {f.name: hints[f.name] for f in fields}, required


def check_dataclass(section: Any, cls: type, where: str) -> None:
    """Check a JSON mapping against the fields of dataclass ``cls``: no unknown entries, the required ones
    present, each of its field's type (:class:`ModelFileError` naming ``where`` otherwise)."""
    hints, required = _dataclass_hints(cls)
    _check_fields(section, where, hints, required)


def _network_hints(network_cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(network_cls.__init__)
    params = list(inspect.signature(network_cls.__init__).parameters.values())[1:]
    return {p.name: hints.get(p.name, Any) for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _unique_strings(values: list[str], where: str, allow_empty: bool = True) -> None:
    if not allow_empty and not values:
        raise _fail(where, "is empty")
    if len(set(values)) != len(values):
        raise _fail(where, "has repeated entries")


def check_config(config: dict, network_cls: type) -> None:
    """Check the model entries of ``config`` (types, ranges, unknown keys) before anything is built from them."""
    unknown = sorted(set(config) - STORAGE_KEYS - MODEL_KEYS)
    if unknown:
        raise _fail("the top level", f"has unknown entries {unknown[:5]} (a newer scConcerto may have written it: "
                                     "upgrade)")
    missing = sorted((MODEL_KEYS - OPTIONAL_KEYS) - set(config))
    if missing:
        raise _fail("the top level", f"lacks the entries {missing}")
    if not isinstance(config["scconcerto_version"], str):
        raise _fail("scconcerto_version", "is not a string")
    seed = config["seed"]
    if not _conforms(seed, int) or not 0 <= seed <= MAX_SEED:
        raise _fail("seed", f"is {seed!r:.40}, not an integer in [0, {MAX_SEED}]")

    hints, required = _dataclass_hints(DataSetup)
    # every field (each shapes the predictions), save the value profile of models saved before it was kept
    _check_fields(config["setup"], "setup", hints, set(hints) - {"value_profile"})
    setup = config["setup"]
    try:
        check_profile(setup.get("value_profile", []))
    except ValueError as exc:
        raise _fail("setup.value_profile", str(exc)) from None
    _unique_strings(setup["genes"], "setup.genes", allow_empty=False)
    _unique_strings(setup["sources"], "setup.sources", allow_empty=False)
    _unique_strings(setup["label_keys"], "setup.label_keys")
    _unique_strings(setup["proteins"], "setup.proteins")
    if set(setup["labels"]) != set(setup["label_keys"]):
        raise _fail("setup.labels", f"has keys {sorted(setup['labels'])[:5]} but label_keys are "
                                    f"{setup['label_keys'][:5]}")
    for key, names in setup["labels"].items():
        _unique_strings(names, f"setup.labels[{key!r}]", allow_empty=False)
    if bool(setup["proteins"]) != (setup["protein_key"] is not None):
        raise _fail("setup.proteins", "and setup.protein_key disagree (one is set, the other is not)")
    if setup["protein_norm"] not in PROTEIN_NORMS:
        raise _fail("setup.protein_norm", f"is {setup['protein_norm']!r:.40}, not one of {PROTEIN_NORMS}")

    net_hints = _network_hints(network_cls)
    _check_fields(config["network"], "network", net_hints, {"n_features", "n_domains"})
    net = config["network"]
    n_features = {"rna": len(setup["genes"]), **({"protein": len(setup["proteins"])} if setup["proteins"] else {})}
    if net["n_features"] != n_features or net["n_domains"] != len(setup["sources"]):
        raise _fail("network", "sizes (n_features, n_domains) disagree with the recorded setup")
    for key in ("dim", "out_dim"):
        if key in net and net[key] < 1:
            raise _fail(f"network.{key}", f"is {net[key]}, not a positive width")
    if "dropout" in net and not 0.0 <= net["dropout"] < 1.0:
        raise _fail("network.dropout", f"is {net['dropout']}, not in [0, 1)")

    if config["train"] is not None:
        hints, required = _dataclass_hints(TrainConfig)
        _check_fields(config["train"], "train", hints, required)
        train = config["train"]
        if train.get("seed", 0) > MAX_SEED or train.get("epochs", 1) < 1 or train.get("batch_size", 2) < 1:
            raise _fail("train", "has a seed, epochs or batch_size out of range")
    if not isinstance(config["history"], list) or not all(isinstance(h, dict) for h in config["history"]):
        raise _fail("history", "is not a list of per-epoch records")
    check_dataclass(config["training"], TrainingRecord, "training")
    for key in ("mapping", "classifier"):  # checked in full by MappingState / ClassifierState.from_dict
        if config[key] is not None and not isinstance(config[key], dict):
            raise _fail(key, "is neither null nor a mapping")


def check_weights(network_cls: type, n_features: dict[str, int], n_domains: int, network_args: dict,
                  weights: dict[str, torch.Tensor]) -> None:
    """Check that ``weights`` are exactly the state of the network the config describes (names, shapes, dtypes,
    finite values), without allocating that network."""
    try:
        with torch.device("meta"):
            probe = network_cls(n_features, n_domains, **network_args)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise ModelFileError(f"The network settings in config.json are invalid ({exc}).") from exc
    expected = probe.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ModelFileError(f"The weights do not match the network: missing {missing[:5]}, unexpected "
                             f"{unexpected[:5]}. The file is damaged or from another model.")
    bad = [k for k, v in expected.items() if tuple(v.shape) != tuple(weights[k].shape) or v.dtype != weights[k].dtype]
    if bad:
        raise ModelFileError(f"Weights {bad[:5]} have shapes or types that disagree with config.json (e.g. "
                             f"{bad[0]}: {tuple(weights[bad[0]].shape)} {weights[bad[0]].dtype}, expected "
                             f"{tuple(expected[bad[0]].shape)} {expected[bad[0]].dtype}).")
    nonfinite = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if nonfinite:
        raise ModelFileError(f"Weights {nonfinite[:5]} hold NaN or infinite values; the model is damaged.")


def check_reference(tensors: dict[str, np.ndarray], setup: DataSetup, out_dim: int,
                    index_extras: tuple[str, ...] = ()) -> None:
    """Check the reference arrays against the setup: names, shapes, dtypes, code ranges, finite values.

    ``index_extras`` name ``extra.*`` arrays of row numbers into the reference.
    """
    def fail(problem: str) -> ModelFileError:
        return ModelFileError(f"reference.safetensors of the model: {problem}. The file is damaged or from another "
                              "model; restore it, or train and save the model again.")

    allowed = {"embedding", "domains", "protein"} | {f"labels.{k}" for k in setup.labels}
    odd = sorted(k for k in tensors if k not in allowed and not k.startswith("extra."))
    if odd or "embedding" not in tensors or "domains" not in tensors:
        raise fail(f"unexpected arrays {odd[:5]}" if odd else "the embedding or the source codes are missing")
    emb = tensors["embedding"]
    if emb.dtype != np.float32 or emb.ndim != 2 or emb.shape[1] != out_dim or emb.shape[0] < 1:
        raise fail(f"the embedding is {emb.dtype} {emb.shape}, not float32 (cells, {out_dim})")
    n = emb.shape[0]
    if not np.isfinite(emb).all():
        raise fail("the embedding holds NaN or infinite values")

    def codes(name: str, low: int, high: int) -> None:
        a = tensors[name]
        if a.dtype != np.int64 or a.shape != (n,):
            raise fail(f"{name} is {a.dtype} {a.shape}, not int64 ({n},)")
        if a.size and (a.min() < low or a.max() >= high):
            raise fail(f"{name} holds codes outside [{low}, {high})")

    codes("domains", 0, len(setup.sources))
    for key, names in setup.labels.items():
        if f"labels.{key}" not in tensors:
            raise fail(f"the labels of {key!r} are missing")
        codes(f"labels.{key}", -1, len(names))
    if "protein" in tensors:
        p = tensors["protein"]
        if not setup.proteins or p.dtype != np.float32 or p.shape != (n, len(setup.proteins)):
            raise fail(f"protein is {p.dtype} {p.shape}, not float32 ({n}, {len(setup.proteins)})")
        if not np.isfinite(p).all():
            raise fail("protein holds NaN or infinite values")
    for name, a in tensors.items():
        if name.startswith("extra.") and a.dtype.kind not in "fiub":
            raise fail(f"{name} has the type {a.dtype}")
    for name in index_extras:
        a = tensors.get(f"extra.{name}")
        if a is not None and (a.ndim != 1 or a.dtype.kind not in "iu" or (a.size and (a.min() < 0 or a.max() >= n))):
            raise fail(f"extra.{name} is not a list of reference rows in [0, {n})")


def check_bounded(value: Any, bound: int, where: str) -> None:
    """Every integer in ``value`` (nested) lies in ``[0, bound]``: sizes a module is built with cannot exceed
    the number of values saved for it."""
    if isinstance(value, dict):
        for k, v in value.items():
            check_bounded(v, bound, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_bounded(v, bound, f"{where}[{i}]")
    elif isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= bound:
        raise _fail(where, f"is {value}, more than the {bound} values saved for it (or negative)")
