"""Domain-specific batch normalization (source-aware BN) with AdaBN for unseen sources, and statistics
taken with per-cell weights (a source's composition balanced, :mod:`scconcerto.data.composition`)."""

from __future__ import annotations

import torch
from torch import nn


MIN_ADAPT_CELLS = 2


def weighted_moments(x: torch.Tensor, weights: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, biased variance and the unbiasing factor of the rows of ``x`` under per-row ``weights``.

    Without weights: the plain mean and ``x.var(unbiased=False)``, factor ``n / (n - 1)``. With weights
    (any positive scale): ``sum(w x) / sum(w)``, ``sum(w (x - mean)^2) / sum(w)`` and the
    reliability-weights factor ``1 / (1 - sum(w^2) / sum(w)^2)``, which is ``n / (n - 1)`` for equal
    weights. The unbiased variance (BN's running variance) is the biased one times the factor.
    """
    n = x.shape[0]
    if weights is None:
        factor = torch.tensor(n / (n - 1) if n > 1 else 1.0, dtype=x.dtype, device=x.device)
        return x.mean(0), x.var(0, unbiased=False), factor
    w = weights.to(x.dtype)
    total = w.sum()
    p = w / total
    mean = p @ x
    var = p @ (x - mean) ** 2
    share = (p * p).sum()
    factor = torch.where(share < 1, 1.0 / (1.0 - share).clamp_min(1e-12), torch.ones_like(share))
    return mean, var, factor


class DomainSpecificBatchNorm1d(nn.Module):
    """Batch normalization with its own statistics and affine per source.

    In training mode each source present in the batch is normalized by its own
    batch statistics, and that source's running statistics are updated. In eval
    mode a cell uses its source's running statistics. For a source never seen
    in training, :meth:`add_domains` adds slots (affine initialised to the mean
    of the known sources) and :meth:`adapting` re-estimates their statistics from
    forward passes alone (AdaBN).

    Parameters
    ----------
    num_features
        Channels.
    n_domains
        Number of sources.
    momentum
        Running-statistics momentum.
    eps
        Added to the variance.
    """

    def __init__(self, num_features: int, n_domains: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.momentum = momentum
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(n_domains, num_features))
        self.bias = nn.Parameter(torch.zeros(n_domains, num_features))
        self.register_buffer("running_mean", torch.zeros(n_domains, num_features))
        self.register_buffer("running_var", torch.ones(n_domains, num_features))
        self._adapt_sums: dict[int, list[torch.Tensor]] | None = None

    @property
    def n_domains(self) -> int:
        return int(self.weight.shape[0])

    def add_domains(self, n_new: int) -> list[int]:
        """Append ``n_new`` source slots; return their ids. Known sources are untouched."""
        ids = list(range(self.n_domains, self.n_domains + n_new))
        with torch.no_grad():
            w = torch.cat([self.weight, self.weight.mean(0, keepdim=True).expand(n_new, -1)])
            b = torch.cat([self.bias, self.bias.mean(0, keepdim=True).expand(n_new, -1)])
            self.weight = nn.Parameter(w)
            self.bias = nn.Parameter(b)
            self.running_mean = torch.cat([self.running_mean, self.running_mean.new_zeros(n_new, self.num_features)])
            self.running_var = torch.cat([self.running_var, self.running_var.new_ones(n_new, self.num_features)])
        return ids

    def set_statistics(self, domain: int, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Set the running mean and variance of source ``domain`` (statistics estimated elsewhere)."""
        with torch.no_grad():
            self.running_mean[domain] = torch.as_tensor(mean, dtype=self.running_mean.dtype)
            self.running_var[domain] = torch.as_tensor(var, dtype=self.running_var.dtype)

    def set_moments(self, domain: int, x: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        """Set the running statistics of source ``domain`` to the (weighted) moments of all its hidden vectors
        ``x`` (:func:`weighted_moments`; unbiased variance)."""
        mean, var, factor = weighted_moments(x.double(), None if weights is None else weights.double())
        self.set_statistics(domain, mean, var * factor)

    def copy_domain(self, source: int, targets: list[int]) -> None:
        """Give the sources ``targets`` the statistics and affine of source ``source`` (sources that were
        normalized together in training)."""
        with torch.no_grad():
            for t in targets:
                self.weight[t] = self.weight[source]
                self.bias[t] = self.bias[source]
                self.running_mean[t] = self.running_mean[source]
                self.running_var[t] = self.running_var[source]

    def use_mean_statistics(self, domain: int, sources: list[int]) -> None:
        """Give source ``domain`` the mean running statistics of ``sources`` (a source too small for its own)."""
        if sources:
            self.set_statistics(domain, self.running_mean[sources].mean(0), self.running_var[sources].mean(0))

    def start_adapting(self, domain_ids: list[int]) -> None:
        """Begin AdaBN: forward passes now accumulate exact (weighted, when given weights) statistics for
        ``domain_ids``."""
        self._adapt_sums = {int(d): [torch.zeros((), dtype=torch.float64), torch.zeros(self.num_features,
                                     dtype=torch.float64), torch.zeros(self.num_features, dtype=torch.float64),
                                     torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.int64)]
                            for d in domain_ids}

    def finish_adapting(self) -> None:
        """End AdaBN: set the running statistics of the adapted sources to the accumulated ones.

        A source with fewer than ``MIN_ADAPT_CELLS`` cells has no usable statistics of
        its own: it gets the mean running statistics of the known sources instead.
        """
        sums, self._adapt_sums = self._adapt_sums, None
        if not sums:
            return
        known = [d for d in range(self.n_domains) if d not in sums]
        with torch.no_grad():
            for d, (total, s1, s2, squares, count) in sums.items():
                if count.item() < MIN_ADAPT_CELLS:
                    self.use_mean_statistics(d, known)
                    continue
                mean = s1 / total
                var = (s2 / total - mean**2).clamp_min(0)
                share = squares / total**2
                if share < 1:
                    var = var / (1 - share)
                self.running_mean[d] = mean.to(self.running_mean.dtype)
                self.running_var[d] = var.to(self.running_var.dtype)

    def _normalize(self, x: torch.Tensor, d: int, w: torch.Tensor | None) -> torch.Tensor:
        if self._adapt_sums is not None and d in self._adapt_sums:
            acc = self._adapt_sums[d]
            xd = x.detach().double().cpu()
            wd = torch.ones(xd.shape[0], dtype=torch.float64) if w is None else w.detach().double().cpu()
            acc[0] += wd.sum()
            acc[1] += wd @ xd
            acc[2] += wd @ (xd * xd)
            acc[3] += (wd * wd).sum()
            acc[4] += xd.shape[0]
            mean, var, _ = weighted_moments(x, w)
        elif self.training and x.shape[0] > 1:
            mean, var, factor = weighted_moments(x, w)
            with torch.no_grad():
                self.running_mean[d].lerp_(mean.detach(), self.momentum)
                self.running_var[d].lerp_(var.detach() * factor, self.momentum)
        else:
            mean, var = self.running_mean[d], self.running_var[d]
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight[d] + self.bias[d]

    def forward(self, x: torch.Tensor, domains: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Normalize rows of ``x`` (``(n, C)``) by the statistics of their source ``domains`` (``(n,)``).

        ``weights`` (``(n,)``, positive) weight the cells in the statistics taken in training mode and
        while adapting (balanced statistics); eval mode uses the running statistics and ignores them.
        """
        first = int(domains[0]) if domains.numel() else 0
        if domains.numel() == 0 or bool((domains == first).all()):
            return self._normalize(x, first, weights)
        out = torch.empty_like(x)
        for d in torch.unique(domains).tolist():
            mask = domains == d
            out = out.index_put((mask,), self._normalize(x[mask], int(d), None if weights is None else weights[mask]))
        return out

    def extra_repr(self) -> str:
        return f"{self.num_features}, n_domains={self.n_domains}, momentum={self.momentum}, eps={self.eps}"
