"""Atomic writes of files and directories, and safe reading of h5ad inputs.

Outputs appear under their final name in one rename, never half-written. A
name is replaced only with ``overwrite`` and only when what is there is
recognisably an output of ours (a model folder with our ``config.json``, a file
we wrote; an HDF5 file must carry our marker) and not an input of the same
command (:func:`protect_inputs`). Without ``overwrite`` the name is reserved
atomically (a hard link), so of two writers racing for one name one fails.
Temporary names carry the writer's process id: leftovers of a killed writer
are removed, and a previous model folder moved aside is put back, on the next
write to the same name or load of that folder.
"""

from __future__ import annotations

import contextvars
import errno
import hashlib
import io
import logging
import os
import re
import secrets
import shutil
import socket
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anndata as ad

from ._errors import InputError, OutputExistsError, OutputWriteError, ScConcertoError

log = logging.getLogger("scconcerto")

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
#: Root attribute of every HDF5 file (.h5ad) we write: such a file may be replaced with ``overwrite``.
OUTPUT_MARKER = "scconcerto_output"
MODEL_CONFIG = "config.json"
MODEL_FORMAT = "scconcerto-model"
MAX_CONFIG_BYTES = 256 << 20
#: Files of these names are replaced only when they carry our marker, whatever they hold.
DATA_SUFFIXES = (".h5ad", ".h5", ".hdf5")

_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_INPUTS: contextvars.ContextVar[tuple[tuple[str, tuple[int, int] | None], ...]] = \
    contextvars.ContextVar("scconcerto_inputs", default=())


# ---------------------------------------------------------------------------------------------- inputs
@contextmanager
def protect_inputs(paths: Iterable[str | os.PathLike[str] | None]) -> Iterator[None]:
    """Within the block, no output may replace (or lie inside a folder replacing) one of ``paths``."""
    entries = []
    for p in paths:
        if p is None:
            continue
        path = Path(p)
        try:
            st = path.stat()
            ident = (st.st_dev, st.st_ino)
        except OSError:
            ident = None
        entries.append((str(path.resolve()), ident))
    token = _INPUTS.set(_INPUTS.get() + tuple(entries))
    try:
        yield
    finally:
        _INPUTS.reset(token)


def _input_at(path: Path) -> str | None:
    """The protected input that replacing ``path`` would destroy, if any."""
    try:
        st = path.stat()
        ident = (st.st_dev, st.st_ino)
    except OSError:
        ident = None
    resolved = path.resolve()
    for name, other in _INPUTS.get():
        if (ident is not None and ident == other) or Path(name) == resolved or resolved in Path(name).parents:
            return name
    return None


# ------------------------------------------------------------------------------------- what is ours
def _read_regular(path: Path, limit: int) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes (never blocks on a FIFO)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if st.st_size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(path))
        with os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read(limit + 1)[:limit]
    finally:
        os.close(fd)


def model_dir_listing(path: Path) -> dict | None:
    """The parsed ``config.json`` of a scConcerto model folder at ``path``, or ``None`` if it is not one."""
    import json

    try:
        config = json.loads(_read_regular(path / MODEL_CONFIG, MAX_CONFIG_BYTES))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(config, dict) or config.get("format") != MODEL_FORMAT:
        return None
    return config


def _foreign_entries(path: Path, config: dict) -> list[str]:
    files = config.get("files")
    ours = {MODEL_CONFIG} | ({v for v in files.values() if isinstance(v, str)} if isinstance(files, dict) else set())
    return sorted(p.name for p in path.iterdir() if p.name not in ours or not p.is_file() or p.is_symlink())


def is_our_h5(path: Path) -> bool:
    """Whether ``path`` is an HDF5 file carrying our output marker."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return OUTPUT_MARKER in f.attrs
    except Exception:  # noqa: BLE001 - any unreadable file is not ours
        return False


def _is_hdf5(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(8) == HDF5_MAGIC
    except OSError:
        return False


def _refuse_replacing(path: Path, kind: str | None) -> None:
    """Raise unless ``overwrite`` may replace what is at ``path`` with an output of ``kind``."""
    name = str(path)
    owner = _input_at(path)
    if owner is not None:
        raise InputError(f"The output {name!r} is (or holds) {owner!r}, an input of this command; --overwrite never "
                         "replaces an input. Write the output under another name.")
    if path.is_symlink() and not path.exists():
        return  # a dangling link: nothing to lose
    if path.is_dir():
        if kind == "file":
            raise InputError(f"The output {name!r} is a folder; a file does not replace a folder. Choose another "
                             "name.")
        config = model_dir_listing(path)
        if config is None:
            raise InputError(f"The output {name!r} is a folder that is not a model folder written by scConcerto; "
                             "--overwrite replaces only outputs of scConcerto. Choose another name, or move the "
                             "folder away yourself.")
        foreign = _foreign_entries(path, config)
        if foreign:
            raise InputError(f"The model folder {name!r} also holds {foreign[:5]}, which scConcerto did not write; "
                             "--overwrite would delete them. Move them out, or choose another name.")
        return
    if kind == "model":
        raise InputError(f"The output {name!r} is a file, not a model folder; --overwrite does not replace a file "
                         "with a model folder. Choose another name.")
    if not path.is_file():
        raise InputError(f"The output {name!r} is not a regular file (a device, socket or pipe); choose another name.")
    if (_is_hdf5(path) or path.suffix.lower() in DATA_SUFFIXES) and not is_our_h5(path):
        raise InputError(f"The output {name!r} is an .h5ad/HDF5 file that scConcerto did not write (it may be your "
                         "data); --overwrite replaces only files written by scConcerto. Choose another name, or "
                         "remove the file yourself.")


def check_output(path: str | Path, overwrite: bool, kind: str | None = None) -> Path:
    """Refuse an existing output unless ``overwrite`` and it is ours to replace; make sure its folder exists.

    ``kind`` is ``"file"``, ``"model"`` (a model folder) or ``None`` (whichever is there).
    Leftovers of killed writers of this name are cleaned up first.
    """
    path = Path(path)
    if not path.parent.exists():
        raise InputError(f"The folder of the output {str(path)!r} does not exist; create it first.")
    recover_leftovers(path)
    if os.path.lexists(path):
        if not overwrite:
            raise OutputExistsError(f"The output {str(path)!r} already exists. Choose another path, or pass "
                                    "overwrite=True (`--overwrite` on the command line) to replace it.")
        _refuse_replacing(path, kind)
    return path


# ---------------------------------------------------------------------------------- temporary names
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}~{_HOST}")


def _old_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.old-{os.getpid()}~{_HOST}")


def _leftover(path: Path, entry: str) -> tuple[str, int] | None:
    """``("tmp" | "old", pid)`` when ``entry`` is a temporary name of a writer of ``path`` on this machine."""
    m = re.fullmatch(rf"\.{re.escape(path.name)}\.(tmp|old)-(\d+)(?:-[0-9a-f]+)?(?:~([0-9a-f]{{8}}))?", entry)
    if m is None or (m.group(3) is not None and m.group(3) != _HOST):
        return None
    return m.group(1), int(m.group(2))


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (ours counts as running)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def recover_leftovers(path: str | Path) -> None:
    """Clean up after writers of ``path`` that were killed: remove their temporaries, and put back a previous
    model folder they had moved aside (``.NAME.old-PID``) when nothing took its place. Best effort."""
    path = Path(path)
    try:
        entries = [(e, _leftover(path, e)) for e in os.listdir(path.parent)]
    except OSError:
        return
    stale = [(path.parent / e, what) for e, what in entries if what is not None and not pid_alive(what[1])]
    for p, (what, _) in sorted(stale, key=lambda t: t[0].name):
        try:
            if what == "old" and not os.path.lexists(path):
                os.rename(p, path)
                log.warning("Restored %s from %s, left by a write that was interrupted.", path, p.name)
            else:
                _remove(p)
        except OSError as exc:
            log.debug("Could not clean up %s (%s).", p, exc)


# ------------------------------------------------------------------------------------------- writing
def _write_failed(path: Path, exc: BaseException) -> OutputWriteError:
    text = str(exc)
    full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT) or \
        "No space left" in text or "os error 28" in text or "errno = 28" in text or "quota" in text.lower()
    cause = "the disk is full (or the quota is used up)" if full else f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
    fix = "Free some space or write to another disk" if full else "Check the folder's permissions and free space"
    return OutputWriteError(f"Could not write {str(path)!r}: {cause}. {fix}, then run again; nothing was written "
                            "and any earlier output of that name is unchanged.")


def _is_write_error(exc: BaseException) -> bool:
    if isinstance(exc, ScConcertoError):
        return False
    if isinstance(exc, OSError):
        return True
    return type(exc).__name__ == "SafetensorError" and ("I/O error" in str(exc) or "os error" in str(exc))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems cannot sync a directory
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _finish_file(tmp: Path) -> None:
    """Give a written file the usual permissions and flush it to disk."""
    os.chmod(tmp, 0o666 & ~_umask())
    _fsync(tmp)


class _FailSoftFile(io.RawIOBase):
    """A file for HDF5 (h5py's file-object driver) that records the first write error instead of raising it.

    HDF5 left objects it could not flush (a full disk) half-closed, and the process crashed when it exited
    (segmentation fault); here HDF5 sees every write succeed, and :func:`hdf5_writer` raises the error after
    the file is closed.
    """

    def __init__(self, path: Path):
        self._file = open(path, "w+b", buffering=0)  # noqa: SIM115 - closed in close()
        self.error: OSError | None = None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def readinto(self, buffer) -> int:  # noqa: ANN001 - a writable buffer
        return self._file.readinto(buffer)

    def write(self, data) -> int:  # noqa: ANN001 - a bytes-like object
        view = memoryview(data).cast("B")
        if self.error is None:
            try:
                done = 0
                while done < len(view):
                    done += self._file.write(view[done:])
                return done
            except OSError as exc:
                self.error = exc
        self._file.seek(len(view), 1)  # after an error, writes are dropped: the file is discarded anyway
        return len(view)

    def truncate(self, size: int | None = None) -> int:
        try:
            return self._file.truncate(size)
        except OSError as exc:
            self.error = self.error or exc
            return self.tell() if size is None else size

    def flush(self) -> None:
        if not self._file.closed:
            try:
                self._file.flush()
            except OSError as exc:
                self.error = self.error or exc

    def close(self) -> None:
        if not self._file.closed:
            try:
                self._file.close()
            except OSError as exc:
                self.error = self.error or exc
        super().close()


@contextmanager
def hdf5_writer(path: str | Path) -> Iterator["h5py.File"]:  # noqa: F821 - imported lazily
    """A new HDF5 file at ``path``, marked as our output; a write error (a full disk) is raised once the file is
    closed, as an ``OSError``."""
    import h5py

    raw = _FailSoftFile(Path(path))
    try:
        with h5py.File(raw, "w") as f:
            f.attrs[OUTPUT_MARKER] = "1"
            yield f
    except BaseException as exc:
        raw.close()
        if raw.error is not None:
            raise raw.error from exc
        raise
    raw.close()
    if raw.error is not None:
        raise raw.error


def _place_file(tmp: Path, path: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if the name was taken meanwhile, atomically
    except FileExistsError:
        raise OutputExistsError(f"The output {str(path)!r} appeared while this command ran (another run wrote it); "
                                "it was left as it is. Choose another path, or pass --overwrite.") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
            raise
        if os.path.lexists(path):  # no hard links here: check, then rename
            raise OutputExistsError(f"The output {str(path)!r} appeared while this command ran; it was left as "
                                    "it is. Choose another path, or pass --overwrite.") from None
        os.replace(tmp, path)
    else:
        tmp.unlink()


def write_atomic_file(path: str | Path, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then move it into place.

    The file gets the permissions of a new file (umask); an HDF5 file is marked as ours. A failure leaves no
    temporary file and any previous file at ``path`` intact; a write error is an :class:`OutputWriteError`.
    """
    path = check_output(path, overwrite, "file")
    tmp = _temp_path(path)
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        write(tmp)
        _finish_file(tmp)
        _place_file(tmp, path, overwrite)
    except BaseException as exc:
        _discard(tmp)
        if _is_write_error(exc):
            raise _write_failed(path, exc) from exc
        raise
    return path


def _discard(tmp: Path) -> None:
    """Remove a temporary file; emptied first, so that a library still holding it open (HDF5 after a failed
    write, which flushes again when its objects are released) finds the space it needs instead of crashing."""
    try:
        os.truncate(tmp, 0)
    except OSError:
        pass
    tmp.unlink(missing_ok=True)


def _finish_tree(tmp: Path) -> None:
    """Give the files and folders of ``tmp`` the usual permissions (umask) and flush them to disk."""
    mask = _umask()
    for root, dirs, files in os.walk(tmp):
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~mask)
            _fsync(Path(root, f))
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~mask)
    os.chmod(tmp, 0o777 & ~mask)
    _fsync(tmp)


def _place_dir(tmp: Path, path: Path, overwrite: bool) -> None:
    """Rename ``tmp`` to ``path``; a previous folder is moved aside first and deleted only once the new one
    is in place (put back if that fails; after a kill, :func:`recover_leftovers` puts it back)."""
    if not os.path.lexists(path):
        try:
            os.rename(tmp, path)
            return
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                raise
            if not overwrite:
                raise OutputExistsError(f"The output {str(path)!r} appeared while this command ran (another run "
                                        "wrote it); it was left as it is. Choose another path, or pass "
                                        "--overwrite.") from None
    if not overwrite:
        raise OutputExistsError(f"The output {str(path)!r} appeared while this command ran; it was left as it is.")
    old = _old_path(path)
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        try:
            os.rename(old, path)
        except OSError as exc:
            raise OutputWriteError(f"Could not replace {str(path)!r}, nor put the previous one back ({exc}); the "
                                   f"previous one is kept at {str(old)!r}: rename it back.") from exc
        raise
    _remove(old)


def write_atomic_dir(path: str | Path, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Fill a temporary directory with ``write(tmp_dir)``, then swap it into place.

    A failure (or a kill) at any point leaves a previous directory at ``path`` intact, or recoverable: it is
    deleted only once the new one is in place. A write error is an :class:`OutputWriteError`.
    """
    path = check_output(path, overwrite, "model")
    tmp = _temp_path(path)
    try:
        os.mkdir(tmp)
        write(tmp)
        _finish_tree(tmp)
        _place_dir(tmp, path, overwrite)
    except BaseException as exc:
        if os.path.lexists(tmp):
            _remove(tmp)
        if _is_write_error(exc) and not isinstance(exc, OutputWriteError):
            raise _write_failed(path, exc) from exc
        raise
    return path


def write_h5ad(adata: ad.AnnData, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``adata`` to ``path`` atomically (compressed), as :meth:`anndata.AnnData.write_h5ad` does."""
    from anndata.io import write_elem

    def write(tmp: Path) -> None:
        if adata.isbacked:  # anndata copies from the open file (and appends to an existing one: start afresh)
            import h5py

            tmp.unlink()
            adata.write_h5ad(tmp, compression="gzip")
            with h5py.File(tmp, "r+") as f:
                f.attrs[OUTPUT_MARKER] = "1"
            return
        adata.strings_to_categoricals()  # as AnnData.write_h5ad does
        if adata.raw is not None:
            adata.strings_to_categoricals(adata.raw.var)
        with hdf5_writer(tmp) as f:
            write_elem(f, "/", adata, dataset_kwargs={"compression": "gzip"})
            if adata.raw is None and "raw" in f:  # write_elem stores a null raw; AnnData.write_h5ad none
                del f["raw"]

    return write_atomic_file(path, write, overwrite)


def read_h5ad(path: str | Path, backed: bool = False) -> ad.AnnData:
    """Read an ``.h5ad`` file read-only, with a clear error when it is missing, empty or not h5ad."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"The input file {str(path)!r} does not exist.")
    if path.is_dir():
        raise InputError(f"{str(path)!r} is a folder, not an .h5ad file.")
    if not path.is_file():
        raise InputError(f"{str(path)!r} is not a regular file (a device, socket or pipe); pass an .h5ad file.")
    if path.stat().st_size == 0:
        raise InputError(f"The input file {str(path)!r} is empty (0 bytes).")
    with open(path, "rb") as fh:
        magic = fh.read(8)
    if magic != HDF5_MAGIC:
        raise InputError(f"{str(path)!r} is not an .h5ad (HDF5) file. Convert it first, e.g. with "
                         "`scanpy.read_10x_h5`, `scanpy.read_10x_mtx` or `anndata.read_csv`, then `.write_h5ad`.")
    try:
        return ad.read_h5ad(path, backed="r" if backed else None)
    except Exception as exc:  # h5py/anndata raise many types for damaged files
        raise InputError(f"{str(path)!r} could not be read as .h5ad ({type(exc).__name__}: {exc}). The file may be "
                         "truncated or corrupt: copy it again or re-export it.") from exc
