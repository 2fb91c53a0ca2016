"""Out-of-core expression matrices: CSR stored in an ``.h5ad`` (HDF5) or zarr file, read by row blocks.

A :class:`BackedCSR` keeps only the row pointer (8 bytes a cell) in memory and
reads ``data``/``indices`` slices on demand. Contiguous row ranges cost one
read; an arbitrary set of rows is read as few contiguous runs as possible.
:func:`read_backed` opens a file so that ``X`` stays on disk while ``obs``,
``var`` and ``obsm`` are loaded, which is what :class:`~scconcerto.Concerto`
and ``prepare_cells`` need to stream a dataset larger than memory.
"""

from __future__ import annotations

import ctypes
import functools
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anndata as ad
import numpy as np
import scipy.sparse as sp

from .._errors import InputError

T = TypeVar("T")

#: Rows read per block when a whole matrix is scanned (totals, embedding, copying).
DEFAULT_BLOCK_ROWS = 16_384
#: Sorted rows closer than this are read as one contiguous run (reading a few extra rows beats a new read).
_RUN_GAP = 32
#: A run never spans more rows than this: a dense selection (a 20 % sample of the file) is read block by
#: block instead of as one run covering the whole file, so memory follows the rows selected.
RUN_MAX_ROWS = DEFAULT_BLOCK_ROWS


def _csr_group(obj: Any) -> Any:
    """The h5py/zarr group holding ``data``, ``indices``, ``indptr`` of a CSR matrix."""
    group = getattr(obj, "group", obj)
    try:
        encoding = group.attrs.get("encoding-type", "csr_matrix")
        names = set(group.keys())
    except AttributeError as exc:
        raise InputError(f"{type(obj).__name__} is not an on-disk CSR matrix (an h5py/zarr group with data, "
                         "indices and indptr, or anndata's backed sparse dataset).") from exc
    if not {"data", "indices", "indptr"} <= names:
        raise InputError(f"The on-disk matrix group has members {sorted(names)}; a CSR matrix needs data, "
                         "indices and indptr.")
    if encoding != "csr_matrix":
        raise InputError(f"The on-disk matrix is stored as {encoding!r}; streaming needs CSR (cells are rows). "
                         "Convert it once, e.g. `adata.X = adata.X.tocsr()` before writing, or load it in memory.")
    return group


def is_backed_csr(matrix: Any) -> bool:
    """Whether ``matrix`` is an on-disk CSR matrix that :class:`BackedCSR` can stream."""
    if isinstance(matrix, BackedCSR):
        return True
    try:
        from anndata.abc import CSRDataset
    except ImportError:  # pragma: no cover - older anndata
        return False
    return isinstance(matrix, CSRDataset)


def take_rows(indptr: np.ndarray, data: np.ndarray, indices: np.ndarray, rows: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR arrays of ``rows`` (positions into ``indptr``), in that order, without a per-row loop."""
    starts = indptr[rows]
    lengths = indptr[rows + 1] - starts
    new_indptr = np.zeros(rows.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_indptr[1:])
    gather = np.repeat(starts - new_indptr[:-1], lengths) + np.arange(new_indptr[-1], dtype=np.int64)
    return data[gather], indices[gather], new_indptr


class BackedCSR:
    """A read-only cells x genes CSR matrix on disk, read by row blocks.

    Parameters
    ----------
    source
        anndata's backed sparse dataset (``adata.X`` of ``read_h5ad(..., backed='r')``
        or ``anndata.io.sparse_dataset``), or an h5py/zarr group with ``data``,
        ``indices``, ``indptr`` (and a ``shape`` attribute).
    shape
        ``(n_rows, n_cols)`` if the group has no ``shape`` attribute.

    Notes
    -----
    Only the row pointer is held in memory. The object can be pickled (it
    reopens the file by name) and reopens its file after a ``fork``, so it can
    travel to DataLoader workers and ``ddp_spawn`` processes.
    """

    def __init__(self, source: Any, shape: tuple[int, int] | None = None):
        group = _csr_group(source)
        if shape is None:
            shape = tuple(int(s) for s in (getattr(source, "shape", None) or group.attrs["shape"]))
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        self._group = group
        self._pid = os.getpid()
        self._location = self._locate(group)
        self.indptr = np.asarray(group["indptr"][:], dtype=np.int64)
        if self.indptr.shape[0] != self.shape[0] + 1:
            raise InputError(f"The on-disk CSR matrix has {self.indptr.shape[0]} row pointers for {self.shape[0]} "
                             "rows; the file is damaged.")
        self.dtype = np.dtype(group["data"].dtype)

    ndim = 2
    format = "csr"

    @staticmethod
    def _locate(group: Any) -> tuple[str, str, str] | None:
        file = getattr(group, "file", None)
        if file is not None and hasattr(file, "filename"):  # h5py
            return ("h5", str(file.filename), str(group.name))
        store = getattr(group, "store", None)
        root = getattr(store, "root", None) or getattr(store, "path", None)
        if root is not None:  # zarr (local store)
            return ("zarr", str(root), str(getattr(group, "path", "")))
        return None

    def _reopen(self) -> Any:
        if self._location is None:
            raise InputError("This on-disk matrix cannot be reopened in another process (unknown storage); "
                             "use num_workers=0 and the 'ddp' strategy (not 'ddp_spawn').")
        kind, path, name = self._location
        if kind == "h5":
            import h5py

            return h5py.File(path, "r")[name]
        import zarr

        root = zarr.open_group(path, mode="r")
        return root[name] if name else root

    @property
    def group(self) -> Any:
        stale = self._group is None or self._pid != os.getpid()  # unpickled, or inherited through fork
        if not stale and self._location is not None and self._location[0] == "h5":
            stale = not self._group.id.valid  # the AnnData that opened the file closed it
        if stale:
            self._group = self._reopen()
            self._pid = os.getpid()
        return self._group

    def __getstate__(self) -> dict:
        if self._location is None:
            raise TypeError("this BackedCSR cannot be pickled: its storage has no reopenable location")
        state = dict(self.__dict__)
        state["_group"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    @property
    def data(self) -> Any:
        """The stored values, lazily (slicing reads only the slice)."""
        return self.group["data"]

    def head_values(self, n: int = 2_000_000) -> np.ndarray:
        """The first ``n`` stored values (enough to tell counts from normalized data, and to spot bad input)."""
        return np.asarray(self.group["data"][: min(n, self.nnz)])

    @property
    def nbytes(self) -> int:
        """Bytes ``data`` + ``indices`` would take in memory."""
        return self.nnz * (self.dtype.itemsize + np.dtype(self.group["indices"].dtype).itemsize)

    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows ``start:stop`` (one contiguous read)."""
        start, stop = max(int(start), 0), min(int(stop), self.shape[0])
        lo, hi = int(self.indptr[start]), int(self.indptr[max(stop, start)])
        group = self.group
        data = np.asarray(group["data"][lo:hi])
        indices = np.asarray(group["indices"][lo:hi])
        indptr = self.indptr[start:max(stop, start) + 1] - lo
        return sp.csr_matrix((data, indices, indptr), shape=(max(stop - start, 0), self.shape[1]))

    def __getitem__(self, rows: Any) -> sp.csr_matrix:
        """Rows as an in-memory CSR matrix, in the order given (a slice or integer array)."""
        if isinstance(rows, tuple):
            if len(rows) != 2 or rows[1] != slice(None):
                raise IndexError("BackedCSR only selects rows: use m[rows] or m[rows, :]")
            rows = rows[0]
        if isinstance(rows, slice):
            start, stop, step = rows.indices(self.shape[0])
            if step == 1:
                return self.read_rows(start, stop)
            rows = np.arange(start, stop, step)
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise IndexError(f"row index out of range for {self.shape[0]} rows")
        if rows.size == 0:
            return sp.csr_matrix((0, self.shape[1]), dtype=self.dtype)
        if rows[-1] - rows[0] == rows.size - 1 and np.all(np.diff(rows) == 1):
            return self.read_rows(int(rows[0]), int(rows[-1]) + 1)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        far = np.diff(sorted_rows) > _RUN_GAP
        other_block = np.diff(sorted_rows // RUN_MAX_ROWS) > 0  # runs stay inside aligned blocks of rows
        cuts = np.flatnonzero(far | other_block) + 1
        parts_data, parts_idx, parts_len = [], [], []
        for run in np.split(sorted_rows, cuts):
            first, last = int(run[0]), int(run[-1]) + 1
            block = self.read_rows(first, last)
            d, i, p = take_rows(block.indptr.astype(np.int64), block.data, block.indices, run - first)
            parts_data.append(d)
            parts_idx.append(i)
            parts_len.append(np.diff(p))
        lengths = np.concatenate(parts_len)
        indptr = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        data, indices, indptr = take_rows(indptr, np.concatenate(parts_data), np.concatenate(parts_idx),
                                          np.argsort(order, kind="stable"))
        return sp.csr_matrix((data, indices, indptr), shape=(rows.size, self.shape[1]))

    def iter_blocks(self, block_rows: int = DEFAULT_BLOCK_ROWS) -> Iterator[tuple[int, int, sp.csr_matrix]]:
        """``(start, stop, rows start:stop)`` for consecutive blocks covering the matrix."""
        for start in range(0, self.shape[0], block_rows):
            stop = min(start + block_rows, self.shape[0])
            yield start, stop, self.read_rows(start, stop)

    def sum(self, axis: int | None = None) -> np.ndarray:
        """Row sums (``axis=1``, shape ``(n_rows, 1)``), column sums (``axis=0``) or the total, block by block."""
        if axis == 1:
            out = np.empty((self.shape[0], 1), dtype=np.float64)
            for start, stop, block in self.iter_blocks():
                out[start:stop, 0] = np.asarray(block.sum(axis=1), dtype=np.float64).ravel()
            return out
        cols = np.zeros(self.shape[1], dtype=np.float64)
        for _, _, block in self.iter_blocks():
            cols += np.bincount(block.indices, weights=block.data, minlength=self.shape[1])
        return cols.reshape(1, -1) if axis == 0 else np.float64(cols.sum())

    def to_memory(self) -> sp.csr_matrix:
        """The whole matrix in memory."""
        return self.read_rows(0, self.shape[0])

    def __repr__(self) -> str:
        where = self._location[1] if self._location else "?"
        return f"BackedCSR({self.shape[0]} x {self.shape[1]}, nnz={self.nnz}, file={where!r})"


def read_backed(path: str | os.PathLike[str]) -> ad.AnnData:
    """Open an ``.h5ad`` file or a ``.zarr`` store with ``X`` left on disk.

    ``obs``, ``var``, ``uns`` and ``obsm`` are loaded; ``X`` (CSR) is read by
    row blocks when it is used. The file is opened read-only.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"The input {str(path)!r} does not exist.")
    if path.is_dir():  # zarr store
        import zarr
        from anndata.io import read_elem, sparse_dataset

        try:
            root = zarr.open_group(str(path), mode="r")
        except Exception as exc:  # zarr raises several types for a folder that is not a store
            raise InputError(f"{str(path)!r} is a folder but not a zarr store ({type(exc).__name__}: {exc}).") from exc
        if "X" not in root:
            raise InputError(f"The zarr store {str(path)!r} has no X.")
        parts = {k: read_elem(root[k]) for k in ("obs", "var", "uns", "obsm") if k in root}
        return ad.AnnData(X=sparse_dataset(root["X"]), **parts)
    from .._io import read_h5ad

    return read_h5ad(path, backed=True)


@functools.cache
def _libc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        return None


def release_freed_memory() -> None:
    """Give memory freed by the program back to the operating system (glibc ``malloc_trim``; no-op elsewhere).

    Streaming allocates and frees large arrays from several threads; glibc keeps
    freed heap pages mapped when fragmentation pins the heap top, so the
    resident size crept up with the number of cells streamed (0.45 GB after
    400 training steps). Trimming once per window keeps it flat.
    """
    trim = _libc_trim()
    if trim is not None:
        trim(0)


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate ``items`` while a background thread produces up to ``depth`` of them ahead.

    Reading and decoding the next block (file I/O, decompression, numpy work
    that releases the GIL) overlaps the consumer's computation. An exception in
    the producer is raised in the consumer; stopping early stops the producer.
    """
    if depth < 1:
        yield from items
        return
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put((True, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put((True, done))
        except BaseException as exc:  # noqa: BLE001 - forwarded to the consumer
            buffer.put((False, exc))

    thread = threading.Thread(target=produce, name="scconcerto-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = buffer.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                buffer.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


def map_blocks(matrix: BackedCSR | sp.csr_matrix, fn: Callable[[int, int, sp.csr_matrix], T],
               block_rows: int = DEFAULT_BLOCK_ROWS, depth: int = 1) -> Iterator[T]:
    """``fn(start, stop, rows)`` over consecutive row blocks, reading the next block in the background."""
    if isinstance(matrix, BackedCSR):
        blocks: Iterable = matrix.iter_blocks(block_rows)
    else:
        blocks = ((s, min(s + block_rows, matrix.shape[0]), matrix[s:min(s + block_rows, matrix.shape[0])])
                  for s in range(0, matrix.shape[0], block_rows))
    for start, stop, block in prefetch(blocks, depth):
        yield fn(start, stop, block)


def write_rows_h5ad(source: str | os.PathLike[str], destination: str | os.PathLike[str],
                    rows: np.ndarray | None = None, block_rows: int = DEFAULT_BLOCK_ROWS, overwrite: bool = False,
                    obsm: dict[str, np.ndarray] | None = None, uns: dict | None = None) -> Path:
    """Copy the cells ``rows`` (default: all; written in increasing order) of an ``.h5ad``/zarr to a new ``.h5ad``.

    ``X`` is streamed block by block (never loaded whole); ``obs``, ``var``,
    ``uns`` and ``obsm`` are subset in memory. ``obsm``/``uns`` entries given
    here are added (``obsm`` arrays have one row per written cell). The file
    appears atomically.
    """
    from anndata.io import write_elem

    from .._io import hdf5_writer, write_atomic_file

    src = read_backed(source)
    if not isinstance(src.X, BackedCSR) and not is_backed_csr(src.X):
        raise InputError(f"{str(source)!r} has no CSR X to stream.")
    X = src.X if isinstance(src.X, BackedCSR) else BackedCSR(src.X)
    rows = np.arange(X.shape[0]) if rows is None else np.unique(np.asarray(rows, dtype=np.int64))
    if rows.size and (rows[0] < 0 or rows[-1] >= X.shape[0]):
        raise InputError(f"Row numbers must lie in [0, {X.shape[0]}).")
    obs = src.obs.iloc[rows]
    extra = dict(obsm or {})
    for key, value in extra.items():
        if np.shape(value)[0] != rows.size:
            raise InputError(f"obsm[{key!r}] has {np.shape(value)[0]} rows for {rows.size} cells.")
    obsm = {**{k: np.asarray(v)[rows] for k, v in src.obsm.items()}, **extra}
    uns_out = {**dict(src.uns), **dict(uns or {})}

    def write(tmp: Path) -> None:
        with hdf5_writer(tmp) as f:  # marked as ours; a full disk is an error, not a crash
            f.attrs["encoding-type"] = "anndata"
            f.attrs["encoding-version"] = "0.1.0"
            write_elem(f, "obs", obs)
            write_elem(f, "var", src.var)
            write_elem(f, "uns", uns_out)
            write_elem(f, "obsm", obsm)
            for key in ("layers", "obsp", "varm", "varp"):
                write_elem(f, key, {})
            g = f.create_group("X")
            g.attrs["encoding-type"] = "csr_matrix"
            g.attrs["encoding-version"] = "0.1.0"
            g.attrs["shape"] = np.array([rows.size, X.shape[1]], dtype=np.int64)
            d_data = g.create_dataset("data", shape=(0,), maxshape=(None,), dtype=X.dtype, chunks=(1 << 18,))
            d_idx = g.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(1 << 18,))
            d_ptr = g.create_dataset("indptr", shape=(rows.size + 1,), dtype=np.int64)
            d_ptr[0] = 0
            done = nnz = 0
            for start in range(0, rows.size, block_rows):
                chunk = rows[start:start + block_rows]
                block = X[chunk]
                k = block.nnz
                d_data.resize((nnz + k,))
                d_idx.resize((nnz + k,))
                d_data[nnz:nnz + k] = block.data
                d_idx[nnz:nnz + k] = block.indices
                d_ptr[done + 1:done + chunk.size + 1] = block.indptr[1:] + nnz
                nnz += k
                done += chunk.size

    try:
        return write_atomic_file(destination, write, overwrite)
    finally:
        file = getattr(getattr(src, "file", None), "close", None)
        if callable(file):
            file()
