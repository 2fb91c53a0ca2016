"""Domain-specific batch normalization (source-aware BN) with AdaBN for unseen sources."""

from __future__ import annotations

import torch
from torch import nn


MIN_ADAPT_CELLS = 2


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

    def use_mean_statistics(self, domain: int, sources: list[int]) -> None:
        """Give source ``domain`` the mean running statistics of ``sources`` (a source too small for its own)."""
        if sources:
            self.set_statistics(domain, self.running_mean[sources].mean(0), self.running_var[sources].mean(0))

    def start_adapting(self, domain_ids: list[int]) -> None:
        """Begin AdaBN: forward passes now accumulate exact statistics for ``domain_ids``."""
        self._adapt_sums = {int(d): [torch.zeros(()), torch.zeros(self.num_features, dtype=torch.float64),
                                     torch.zeros(self.num_features, dtype=torch.float64)] for d in domain_ids}

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
            for d, (n, s1, s2) in sums.items():
                if n.item() < MIN_ADAPT_CELLS:
                    self.use_mean_statistics(d, known)
                    continue
                mean = s1 / n
                var = (s2 / n - mean**2).clamp_min(0)
                if n.item() > 1:
                    var = var * n / (n - 1)
                self.running_mean[d] = mean.to(self.running_mean.dtype)
                self.running_var[d] = var.to(self.running_var.dtype)

    def _normalize(self, x: torch.Tensor, d: int) -> torch.Tensor:
        if self._adapt_sums is not None and d in self._adapt_sums:
            acc = self._adapt_sums[d]
            xd = x.detach().double().cpu()
            acc[0] = acc[0] + xd.shape[0]
            acc[1] += xd.sum(0)
            acc[2] += (xd * xd).sum(0)
            mean, var = x.mean(0), x.var(0, unbiased=False)
        elif self.training and x.shape[0] > 1:
            mean, var = x.mean(0), x.var(0, unbiased=False)
            with torch.no_grad():
                n = x.shape[0]
                self.running_mean[d].lerp_(mean.detach(), self.momentum)
                self.running_var[d].lerp_(var.detach() * n / (n - 1), self.momentum)
        else:
            mean, var = self.running_mean[d], self.running_var[d]
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight[d] + self.bias[d]

    def forward(self, x: torch.Tensor, domains: torch.Tensor) -> torch.Tensor:
        """Normalize rows of ``x`` (``(n, C)``) by the statistics of their source ``domains`` (``(n,)``)."""
        first = int(domains[0]) if domains.numel() else 0
        if domains.numel() == 0 or bool((domains == first).all()):
            return self._normalize(x, first)
        out = torch.empty_like(x)
        for d in torch.unique(domains).tolist():
            mask = domains == d
            out = out.index_put((mask,), self._normalize(x[mask], int(d)))
        return out

    def extra_repr(self) -> str:
        return f"{self.num_features}, n_domains={self.n_domains}, momentum={self.momentum}, eps={self.eps}"
