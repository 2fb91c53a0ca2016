"""Fused CPU kernels (numba) for the teacher's attention pooling, forward and backward.

The reference implementation (:func:`scconcerto.nn.attention.attention_pool_torch`)
materializes several ``(nnz, d)`` tensors per step (gathered rows, scaled rows,
``tanh``, attention-weighted rows) and its backward as many again; on a CPU the
step is bound by that memory traffic. These kernels instead walk each cell's
expressed genes once, keeping the cell's ``(n_genes_in_cell, d)`` activations in
a small scratch buffer that stays in cache:

forward, per cell
    ``h_i = tanh(v_i P[g_i] + b)``, logits ``u . h_i``, a max-subtracted softmax
    and ``hidden = sum_i a_i h_i``; only ``hidden`` ``(n_cells, d)`` and the
    weights ``(nnz,)`` are written.
backward, per cell
    ``h_i`` is recomputed (cheaper than storing it), then with ``G = dL/dhidden``
    and ``r_i = dL/da_i = G . h_i (+ upstream grad of the weights)``::

        dL/ds_i = a_i (r_i - sum_j a_j r_j)
        dL/dx_i = (a_i G + dL/ds_i u) * (1 - h_i**2)
        dP[g_i] += v_i dL/dx_i,  db += dL/dx_i,  du += dL/ds_i h_i,  dv_i = dL/dx_i . P[g_i]

Cells are split into contiguous chunks (two per thread) run by Python threads
that take the next chunk as they finish one (the compiled kernels release the
GIL); idle threads sleep instead of spinning, which matters on a shared machine
where torch's own OpenMP pool already competes for the cores. Each chunk
accumulates ``dP``, ``db`` and ``du`` in its own buffer and the buffers are
summed in chunk order, so the result is deterministic for a given number of
threads. ``tanh`` uses a rational approximation (Eigen's float ``tanh``, a few
ulp from ``torch.tanh``) that the compiler can vectorize.

numba compiles the kernels on first use (cached on disk afterwards).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .._hardware import available_cpus

try:  # numba ships with umap-learn / pynndescent; without it the torch path is used
    import numba
    from numba import njit
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None

__all__ = ["FusedAttentionPool", "fused_attention_pool", "get_num_threads", "is_available", "set_num_threads"]


def is_available() -> bool:
    """Whether the fused CPU kernels can run (numba importable)."""
    return numba is not None


if numba is not None:
    _CLAMP = np.float32(7.90531110763549805)
    _A1, _A3, _A5 = np.float32(4.89352455891786e-03), np.float32(6.37261928875436e-04), np.float32(1.48572235717979e-05)
    _A7, _A9 = np.float32(5.12229709037114e-08), np.float32(-8.60467152213735e-11)
    _A11, _A13 = np.float32(2.00018790482477e-13), np.float32(-2.76076847742355e-16)
    _B0, _B2 = np.float32(4.89352518554385e-03), np.float32(2.26843463243900e-03)
    _B4, _B6 = np.float32(1.18534705686654e-04), np.float32(1.19825839466702e-06)

    @njit(inline="always", fastmath=True, error_model="numpy")
    def _tanh(x):  # noqa: ANN001, ANN202 - numba scalar helper
        x = min(max(x, -_CLAMP), _CLAMP)
        x2 = x * x
        p = x2 * _A13 + _A11
        p = p * x2 + _A9
        p = p * x2 + _A7
        p = p * x2 + _A5
        p = p * x2 + _A3
        p = p * x2 + _A1
        p = p * x
        q = x2 * _B6 + _B4
        q = q * x2 + _B2
        q = q * x2 + _B0
        return p / q

    @njit(fastmath=True, cache=True, nogil=True, error_model="numpy")
    def _forward_kernel(P, b, u, indices, values, offsets, lo, hi, max_len, hidden, weights):  # noqa: ANN001
        d = P.shape[1]
        H = np.empty((max(max_len, 1), d), dtype=np.float32)
        acc = np.empty(d, dtype=np.float32)
        for c in range(lo, hi):
            s = offsets[c]
            length = offsets[c + 1] - s
            for k in range(d):
                acc[k] = 0.0
            if length == 0:
                for k in range(d):
                    hidden[c, k] = 0.0
                continue
            m = np.float32(-3.0e38)
            for i in range(length):
                g = indices[s + i]
                v = values[s + i]
                logit = np.float32(0.0)
                for k in range(d):
                    t = _tanh(v * P[g, k] + b[k])
                    H[i, k] = t
                    logit += t * u[k]
                weights[s + i] = logit
                if logit > m:
                    m = logit
            den = 0.0
            for i in range(length):
                w = math.exp(weights[s + i] - m)
                weights[s + i] = w
                den += w
            inv = 1.0 / den
            for i in range(length):
                w = np.float32(weights[s + i] * inv)
                weights[s + i] = w
                for k in range(d):
                    acc[k] += w * H[i, k]
            for k in range(d):
                hidden[c, k] = acc[k]

    @njit(fastmath=True, cache=True, nogil=True, error_model="numpy")
    def _backward_kernel(P, b, u, indices, values, offsets, weights, hidden, grad_hidden, grad_weights,  # noqa: ANN001
                         has_grad_weights, need_values_grad, lo, hi, dPc, dbc, duc, dv):
        d = P.shape[1]
        h = np.empty(d, dtype=np.float32)
        for c in range(lo, hi):
            s = offsets[c]
            length = offsets[c + 1] - s
            if length == 0:
                continue
            base = np.float32(0.0)
            for k in range(d):
                base += grad_hidden[c, k] * hidden[c, k]
            if has_grad_weights:
                for i in range(length):
                    base += weights[s + i] * grad_weights[s + i]
            for i in range(length):
                g = indices[s + i]
                v = values[s + i]
                a = weights[s + i]
                gh = np.float32(0.0)
                for k in range(d):
                    t = _tanh(v * P[g, k] + b[k])
                    h[k] = t
                    gh += grad_hidden[c, k] * t
                if has_grad_weights:
                    gh += grad_weights[s + i]
                ds = a * (gh - base)
                gv = np.float32(0.0)
                for k in range(d):
                    dx = (a * grad_hidden[c, k] + ds * u[k]) * (np.float32(1.0) - h[k] * h[k])
                    dPc[g, k] += v * dx
                    dbc[k] += dx
                    duc[k] += ds * h[k]
                    gv += dx * P[g, k]
                if need_values_grad:
                    dv[s + i] = gv


_pool: tuple[int, ThreadPoolExecutor] | None = None
_num_threads: int | None = None


def set_num_threads(n: int | None) -> None:
    """Threads the fused kernels use (``None``: the CPUs this process may run on)."""
    global _num_threads
    if n is not None and n < 1:
        raise ValueError(f"the number of threads must be at least 1, got {n}")
    _num_threads = n


def num_threads_setting() -> int | None:
    """The explicit thread setting (``None``: automatic), to save and restore it."""
    return _num_threads


def get_num_threads() -> int:
    """Threads the fused kernels use."""
    if _num_threads is not None:
        return _num_threads
    env = os.environ.get("SCCONCERTO_NUM_THREADS")
    if env:
        return max(1, int(env))
    return available_cpus()


def _executor(n_workers: int) -> ThreadPoolExecutor:
    global _pool
    if _pool is None or _pool[0] != os.getpid() or _pool[1]._max_workers < n_workers:  # new process (fork) or size
        _pool = (os.getpid(), ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="scconcerto-fused"))
    return _pool[1]


def _run_chunks(n_cells: int, n_chunks: int, work: Callable[[int, int, int], None]) -> None:
    """Call ``work(chunk, lo, hi)`` for ``n_chunks`` contiguous cell ranges, in parallel threads.

    The kernels release the GIL, so Python threads run them on separate cores;
    idle threads sleep (no OpenMP runtime spinning next to torch's). Threads
    take the next chunk as they finish one, so a thread slowed down by other
    processes on the machine does not hold the others back.
    """
    bounds = [n_cells * ch // n_chunks for ch in range(n_chunks + 1)]
    threads = min(get_num_threads(), n_chunks)
    if threads == 1:
        for ch in range(n_chunks):
            work(ch, bounds[ch], bounds[ch + 1])
        return
    ticket = itertools.count()  # next() on a count is atomic under the GIL

    def loop() -> None:
        while (ch := next(ticket)) < n_chunks:
            work(ch, bounds[ch], bounds[ch + 1])

    futures = [_executor(threads - 1).submit(loop) for _ in range(threads - 1)]
    loop()
    for f in futures:
        f.result()


def _chunks_for(n_cells: int, nnz: int) -> int:
    """Two chunks per thread (load balance), but none smaller than ~8k stored values."""
    return max(1, min(2 * get_num_threads(), n_cells, 1 + nnz // 8_192))


class FusedAttentionPool(torch.autograd.Function):
    """Autograd wrapper of the fused kernels; inputs are CPU float32 tensors."""

    @staticmethod
    def forward(ctx, projected, bias, context, indices, values, offsets):  # noqa: ANN001, ANN205
        P = projected.detach().contiguous()
        b = bias.detach().contiguous()
        u = context.detach().contiguous()
        idx = indices.contiguous()
        val = values.detach().contiguous()
        off = offsets.contiguous()
        n = off.shape[0] - 1
        hidden = torch.empty((n, P.shape[1]), dtype=torch.float32)
        weights = torch.empty(idx.shape[0], dtype=torch.float32)
        if n:
            max_len = int((off[1:] - off[:-1]).max())
            arrays = (P.numpy(), b.numpy(), u.numpy(), idx.numpy(), val.numpy(), off.numpy())
            h_np, w_np = hidden.numpy(), weights.numpy()
            _run_chunks(n, _chunks_for(n, idx.shape[0]),
                        lambda ch, lo, hi: _forward_kernel(*arrays, lo, hi, max_len, h_np, w_np))
        ctx.save_for_backward(P, b, u, idx, val, off, weights, hidden)
        ctx.set_materialize_grads(False)
        return hidden, weights

    @staticmethod
    def backward(ctx, grad_hidden, grad_weights):  # noqa: ANN001, ANN205
        P, b, u, idx, val, off, weights, hidden = ctx.saved_tensors
        n = off.shape[0] - 1
        d = P.shape[1]
        need_p, need_b, need_u, _, need_v, _ = ctx.needs_input_grad
        if n == 0 or (grad_hidden is None and grad_weights is None):
            return None, None, None, None, None, None
        gh = torch.zeros_like(hidden) if grad_hidden is None else grad_hidden.to(torch.float32).contiguous()
        has_gw = grad_weights is not None
        gw = grad_weights.to(torch.float32).contiguous() if has_gw else torch.zeros(1, dtype=torch.float32)
        chunks = _chunks_for(n, idx.shape[0])
        dP = np.zeros((chunks, P.shape[0], d), dtype=np.float32)
        db = np.zeros((chunks, d), dtype=np.float32)
        du = np.zeros((chunks, d), dtype=np.float32)
        dv = np.zeros(idx.shape[0] if need_v else 1, dtype=np.float32)
        arrays = (P.numpy(), b.numpy(), u.numpy(), idx.numpy(), val.numpy(), off.numpy(), weights.numpy(),
                  hidden.numpy(), gh.numpy(), gw.numpy(), has_gw, bool(need_v))
        _run_chunks(n, chunks, lambda ch, lo, hi: _backward_kernel(*arrays, lo, hi, dP[ch], db[ch], du[ch], dv))
        grad_p = torch.from_numpy(dP.sum(0) if chunks > 1 else dP[0]) if need_p else None
        grad_b = torch.from_numpy(db.sum(0)) if need_b else None
        grad_u = torch.from_numpy(du.sum(0)) if need_u else None
        grad_v = torch.from_numpy(dv) if need_v else None
        return grad_p, grad_b, grad_u, None, grad_v, None


def fused_attention_pool(projected: torch.Tensor, bias: torch.Tensor, context: torch.Tensor, indices: torch.Tensor,
                         values: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention pooling with the fused CPU kernels (same contract as ``attention_pool``).

    All tensors must be on the CPU; floating inputs are float32, ``indices`` and
    ``offsets`` int64.
    """
    if numba is None:
        raise RuntimeError("the fused attention kernels need numba (`pip install numba`)")
    return FusedAttentionPool.apply(projected, bias, context, indices, values, offsets)
