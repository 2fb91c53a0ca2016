"""The model directory format: JSON config + safetensors tensors, versioned, checksummed, pickle-free.

Layout of a model directory::

    config.json              format, format_version, setup, network, train, history, training, mapping,
                             classifier, files, checksums
    weights.safetensors      every network parameter and buffer, by its stable module path
    reference.safetensors    reference embedding, source codes, label codes, proteins
    <part>.safetensors       optional parts, e.g. classifier.safetensors (a fine-tuned classifier head)
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_numpy, save_file as save_numpy
from safetensors.torch import load_file as load_torch, save_file as save_torch

from .._errors import ModelFileError
from ..data.scaled_space import CENTRINGS, ScaledSpace
from .._io import MAX_CONFIG_BYTES, MODEL_CONFIG as CONFIG, MODEL_FORMAT as FORMAT, recover_leftovers, \
    write_atomic_dir

#: Version 2 (2026-12-06): typed ``training``, ``mapping`` and ``classifier`` entries in config.json instead of
#: ``extra``; folders of version 1 are refused (train the model again).
FORMAT_VERSION = 2
#: Key of the SHA-256 of the config itself (:func:`config_checksum`); configs saved before it existed lack it.
CONFIG_CHECKSUM = "config_checksum"
WEIGHTS = "weights.safetensors"
REFERENCE = "reference.safetensors"


#: Names of the reference's optional arrays in ``reference.safetensors`` (``extra.<name>``).
CALIBRATION_ROWS = "calibration_rows"
BALANCE_GROUPS = "balance_groups"
UMAP = "umap"
EMBEDDING_RNA = "embedding_rna"
SCALED_EXPRESSION = "scaled_expression"
SCALED_SPACE = {"loadings": "scaled_expression_loadings", "offset": "scaled_expression_offset",
                "caps": "scaled_expression_caps"}
#: How the scaled space takes out its average cell (``uint8`` code of :data:`~scconcerto.data.scaled_space.CENTRINGS`);
#: absent in models saved before 2026-12-07, which subtract it (``"mean"``).
SCALED_CENTRING = "scaled_expression_centring"
ANN_INDEX = "ann_index"


@dataclass
class ReferenceStore:
    """What mapping needs of the reference cells, saved in ``reference.safetensors``.

    Attributes
    ----------
    embedding, domains, labels, protein
        The reference embedding, source codes, label codes per label key (``-1``: unlabeled), proteins.
    calibration_rows
        Labeled rows kept out of label-aware training: they calibrate mapping's label decisions.
    balance_groups
        The groups whose composition was balanced in training (labels or clusters), kept for query AdaBN.
    umap
        The reference UMAP ``(n_ref, 2)`` queries are placed on.
    embedding_rna
        Of an RNA + protein model: the reference embedded from RNA alone (for RNA-only queries).
    scaled_expression, scaled_space
        Every reference cell in its scaled expression space, and that space
        (:class:`~scconcerto.data.scaled_space.ScaledSpace`).
    ann_indexes
        Per searched space of a large reference, its approximate index (faiss's own serialization, uint8),
        checked when read (:func:`~scconcerto.search.ann.index_from_array`).
    """

    embedding: np.ndarray
    domains: np.ndarray
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    protein: np.ndarray | None = None
    calibration_rows: np.ndarray | None = None
    balance_groups: np.ndarray | None = None
    umap: np.ndarray | None = None
    embedding_rna: np.ndarray | None = None
    scaled_expression: np.ndarray | None = None
    scaled_space: ScaledSpace | None = None
    ann_indexes: dict[str, np.ndarray] = field(default_factory=dict)

    def to_tensors(self) -> dict[str, np.ndarray]:
        out = {"embedding": np.ascontiguousarray(self.embedding, np.float32),
               "domains": np.ascontiguousarray(self.domains, np.int64)}
        out.update({f"labels.{k}": np.ascontiguousarray(v, np.int64) for k, v in self.labels.items()})
        if self.protein is not None:
            out["protein"] = np.ascontiguousarray(self.protein, np.float32)
        extra = {CALIBRATION_ROWS: self.calibration_rows, BALANCE_GROUPS: self.balance_groups, UMAP: self.umap,
                 EMBEDDING_RNA: self.embedding_rna, SCALED_EXPRESSION: self.scaled_expression,
                 **{f"{ANN_INDEX}.{space}": c for space, c in self.ann_indexes.items()}}
        if self.scaled_space is not None:
            extra.update({name: getattr(self.scaled_space, attr) for attr, name in SCALED_SPACE.items()})
            extra[SCALED_CENTRING] = np.array([CENTRINGS.index(self.scaled_space.centring)], dtype=np.uint8)
        out.update({f"extra.{k}": np.ascontiguousarray(v) for k, v in extra.items() if v is not None})
        return out

    @classmethod
    def from_tensors(cls, t: dict[str, np.ndarray]) -> "ReferenceStore":
        """The store of arrays read from ``reference.safetensors``; :class:`ModelFileError` for an unknown array."""
        extra = {k[6:]: v for k, v in t.items() if k.startswith("extra.")}
        known = {CALIBRATION_ROWS, BALANCE_GROUPS, UMAP, EMBEDDING_RNA, SCALED_EXPRESSION, SCALED_CENTRING,
                 *SCALED_SPACE.values()}
        odd = sorted(k for k in extra if k not in known and not k.startswith(f"{ANN_INDEX}."))
        if odd:
            raise ModelFileError(f"reference.safetensors of the model holds arrays of unknown roles "
                                 f"{['extra.' + k for k in odd[:5]]}; it was written by another version of "
                                 "scConcerto or edited. Train and save the model again.")
        space_parts = [extra.get(name) for name in SCALED_SPACE.values()]
        if any(part is None for part in space_parts) and not all(part is None for part in space_parts):
            raise ModelFileError("reference.safetensors of the model holds part of the scaled expression space "
                                 "only; the file is damaged. Restore it, or train and save the model again.")
        centring = extra.get(SCALED_CENTRING)
        if centring is not None and (centring.shape != (1,) or int(centring[0]) >= len(CENTRINGS)):
            raise ModelFileError("reference.safetensors of the model holds an unknown centring of the scaled "
                                 "expression space; the file is damaged or from a newer scConcerto. Train and save "
                                 "the model again.")
        return cls(embedding=t["embedding"], domains=t["domains"],
                   labels={k[7:]: v for k, v in t.items() if k.startswith("labels.")},
                   protein=t.get("protein"), calibration_rows=extra.get(CALIBRATION_ROWS),
                   balance_groups=extra.get(BALANCE_GROUPS), umap=extra.get(UMAP),
                   embedding_rna=extra.get(EMBEDDING_RNA), scaled_expression=extra.get(SCALED_EXPRESSION),
                   scaled_space=None if space_parts[0] is None else ScaledSpace(
                       *space_parts, centring="mean" if centring is None else CENTRINGS[int(centring[0])]),
                   ann_indexes={k[len(ANN_INDEX) + 1:]: v for k, v in extra.items()
                                 if k.startswith(f"{ANN_INDEX}.")})


def _open_regular(path: Path) -> int:
    """A read-only descriptor of ``path``, which must be a regular file (a FIFO, device or folder is refused
    without blocking)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ModelFileError(f"{path.name} of the model directory cannot be opened ({exc.strerror}); the directory "
                             "is incomplete or damaged. Save the model again.") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ModelFileError(f"{path.name} in the model directory {str(path.parent)!r} is not a regular file (a "
                             "folder, pipe or device); the directory was tampered with. Restore it from the "
                             "original model directory.")
    return fd


def _sha256(path: Path) -> str:
    """SHA-256 of a regular file, read up to its size on disk."""
    fd = _open_regular(path)
    h = hashlib.sha256()
    with os.fdopen(fd, "rb") as fh:
        left = os.fstat(fh.fileno()).st_size
        while left > 0:
            block = fh.read(min(1 << 20, left))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def config_checksum(config: dict) -> str:
    """SHA-256 of ``config`` (without its own checksum) in a canonical JSON form."""
    body = {k: v for k, v in config.items() if k != CONFIG_CHECKSUM}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _read_config(cfg_path: Path) -> dict:
    fd = _open_regular(cfg_path)
    with os.fdopen(fd, "rb") as fh:
        if os.fstat(fh.fileno()).st_size > MAX_CONFIG_BYTES:
            raise ModelFileError(f"{cfg_path} is larger than {MAX_CONFIG_BYTES >> 20} MiB; it is not a scConcerto "
                                 "model config.")
        raw = fh.read(MAX_CONFIG_BYTES)
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ModelFileError(f"{cfg_path} is not valid JSON ({exc}); the model directory is corrupt.") from exc


def save_model_dir(path: str | Path, config: dict, state: dict[str, torch.Tensor],
                   reference: ReferenceStore | None, overwrite: bool = False,
                   parts: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Write a model directory atomically (a failure leaves an existing one intact).

    ``parts`` are optional extra tensor sets (e.g. ``{"classifier": ...}``), each written to ``<name>.safetensors``.
    """

    def write(tmp: Path) -> None:
        save_torch({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp / WEIGHTS))
        files = {"weights": WEIGHTS}
        if reference is not None:
            save_numpy(reference.to_tensors(), str(tmp / REFERENCE))
            files["reference"] = REFERENCE
        for name, tensors in (parts or {}).items():
            if tensors:
                files[name] = f"{name}.safetensors"
                save_torch({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / files[name]))
        full = {"format": FORMAT, "format_version": FORMAT_VERSION, **config, "files": files,
                "checksums": {name: _sha256(tmp / name) for name in files.values()}}
        full[CONFIG_CHECKSUM] = config_checksum(full)
        (tmp / CONFIG).write_text(json.dumps(full, indent=1))

    return write_atomic_dir(path, write, overwrite)


def _inside(directory: Path, name: str) -> Path:
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise ModelFileError(f"The model's config names the file {name!r}, which is not a plain file name inside "
                             "the model directory; the directory may have been tampered with.")
    return directory / name


def read_model_dir(path: str | Path
                   ) -> tuple[dict, dict[str, torch.Tensor], dict[str, np.ndarray] | None, dict[str, dict[str, torch.Tensor]]]:
    """Read and verify a model directory: format, version, regular files, checksums of the files and of the config
    itself (no pickle anywhere). The content is checked by :mod:`scconcerto.model._schema`.

    Returns the config, the network weights, the reference arrays (see :meth:`ReferenceStore.from_tensors`) and
    the optional parts.
    """
    directory = Path(path)
    cfg_path = directory / CONFIG
    recover_leftovers(directory)  # a previous model moved aside by a killed overwrite is put back
    if not directory.is_dir():
        raise ModelFileError(f"{str(directory)!r} is not a model directory (it does not exist or is a file). "
                             "Pass the folder written by `Concerto.save` / `scconcerto train --out`.")
    if not os.path.lexists(cfg_path):
        raise ModelFileError(f"{str(directory)!r} has no {CONFIG}: it is not a scConcerto model directory, or the "
                             "save was interrupted. Train and save the model again.")
    config = _read_config(cfg_path)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ModelFileError(f"{cfg_path} is not a scConcerto model config (format {found!r}).")
    version = config.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelFileError(f"{cfg_path} has no valid format_version ({version!r}).")
    if version < FORMAT_VERSION:
        raise ModelFileError(f"The model in {str(directory)!r} was saved in format version {version}, an earlier format "
                             f"than this scConcerto reads ({FORMAT_VERSION}; its mapping and classifier settings are "
                             "now typed entries of config.json). Train the model again with this scConcerto "
                             "(`scconcerto train`, then `scconcerto annotate train` for a classifier) and save it.")
    if version > FORMAT_VERSION:
        raise ModelFileError(f"The model was saved in format version {version}, newer than this scConcerto reads "
                             f"({FORMAT_VERSION}). Upgrade scConcerto (`pip install -U scconcerto`).")
    if CONFIG_CHECKSUM in config and config[CONFIG_CHECKSUM] != config_checksum(config):
        raise ModelFileError(f"{cfg_path} does not match its own checksum ({CONFIG_CHECKSUM}): it was edited or "
                             "damaged after saving. Restore it from the original model directory.")
    files = config.get("files")
    checksums = config.get("checksums")
    loaded: dict[str, dict] = {}
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise ModelFileError(f"{cfg_path} has an invalid 'files' entry (a mapping of roles to file names).")
    if not isinstance(checksums, dict):
        raise ModelFileError(f"{cfg_path} has an invalid 'checksums' entry (a mapping of file names to SHA-256).")
    for role in ["weights", "reference", *sorted(set(files) - {"weights", "reference"})]:
        if role not in files:
            if role == "weights":
                raise ModelFileError(f"{cfg_path} lists no weights file.")
            continue
        f = _inside(directory, files[role])
        if not os.path.lexists(f):
            raise ModelFileError(f"The model directory lacks {f.name} ({role}); it is incomplete. Save it again.")
        if checksums.get(f.name) != _sha256(f):
            raise ModelFileError(f"{f.name} does not match the checksum recorded in {CONFIG}: the file was changed "
                                 "or damaged after saving. Restore it from the original model directory.")
        try:
            loaded[role] = load_numpy(str(f)) if role == "reference" else load_torch(str(f))
        except (SafetensorError, OSError, ValueError, TypeError) as exc:
            raise ModelFileError(f"{f.name} is not a valid safetensors file ({exc}).") from exc
    parts = {k: v for k, v in loaded.items() if k not in ("weights", "reference")}
    return config, loaded["weights"], loaded.get("reference"), parts
