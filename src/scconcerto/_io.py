"""Atomic writes of files and directories, and safe reading of h5ad inputs."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import anndata as ad

from ._errors import InputError, OutputExistsError


def check_output(path: str | Path, overwrite: bool) -> Path:
    """Refuse an existing output unless ``overwrite``; make sure its folder exists."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"The output {str(path)!r} already exists. Choose another path, or pass "
                                "overwrite=True (`--overwrite` on the command line) to replace it.")
    if not path.parent.exists():
        raise InputError(f"The folder of the output {str(path)!r} does not exist; create it first.")
    return path


def write_atomic_file(path: str | Path, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it into place."""
    path = check_output(path, overwrite)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic_dir(path: str | Path, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Fill a temporary directory with ``write(tmp_dir)``, then swap it into place.

    A failure leaves any previous directory at ``path`` intact.
    """
    path = check_output(path, overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = None
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        write(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists():
            shutil.rmtree(old, ignore_errors=True)
    return path


def write_h5ad(adata: ad.AnnData, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``adata`` to ``path`` atomically (compressed)."""
    return write_atomic_file(path, lambda p: adata.write_h5ad(p, compression="gzip"), overwrite)


def read_h5ad(path: str | Path, backed: bool = False) -> ad.AnnData:
    """Read an ``.h5ad`` file read-only, with a clear error when it is missing, empty or not h5ad."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"The input file {str(path)!r} does not exist.")
    if path.is_dir():
        raise InputError(f"{str(path)!r} is a folder, not an .h5ad file.")
    if path.stat().st_size == 0:
        raise InputError(f"The input file {str(path)!r} is empty (0 bytes).")
    with open(path, "rb") as fh:
        magic = fh.read(8)
    if magic != b"\x89HDF\r\n\x1a\n":
        raise InputError(f"{str(path)!r} is not an .h5ad (HDF5) file. Convert it first, e.g. with "
                         "`scanpy.read_10x_h5`, `scanpy.read_10x_mtx` or `anndata.read_csv`, then `.write_h5ad`.")
    try:
        return ad.read_h5ad(path, backed="r" if backed else None)
    except Exception as exc:  # h5py/anndata raise many types for damaged files
        raise InputError(f"{str(path)!r} could not be read as .h5ad ({type(exc).__name__}: {exc}). The file may be "
                         "truncated or corrupt: copy it again or re-export it.") from exc
