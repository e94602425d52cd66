"""Variational information distillation (Ahn et al.), with all-pairs layer matching.

For each (teacher layer i, student layer j) pair, a Gaussian q(t_i | s_j) whose mean is a small
1x1-conv network of s_j and whose per-channel variance is learned (softplus) gives a variational
lower bound of I(t_i; s_j). Loss = alpha * CE + beta * sum_ij lambda_ij * (-log q), the sum
balanced by default (scaled to the cross-entropy on the first batch, see Distiller.balance): alpha 1,
beta 0.5. The study's L = b * task + (1 - b) * sum(lambda * I) is alpha = b, beta = 1 - b with
--no-balance (its b = 0.5 on the quickstart lost 1.3 points to the student alone even balanced).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from compressor import CompressorError
from compressor.distill.base import FeatureDistiller
from compressor.distill.functional import cross_entropy, gaussian_nll, match_spatial
from compressor.distill.registry import register_method


class VariationalRegressor(nn.Module):
    """Mean network (1x1 conv, ReLU, 1x1 conv, ReLU, 1x1 conv) and per-channel softplus variance."""

    def __init__(self, s_ch: int, t_ch: int, init_var: float = 5.0, eps: float = 1e-5) -> None:
        super().__init__()
        mid = max(s_ch, t_ch)
        self.mean = nn.Sequential(nn.Conv2d(s_ch, mid, 1), nn.ReLU(), nn.Conv2d(mid, mid, 1), nn.ReLU(),
                                  nn.Conv2d(mid, t_ch, 1))
        self.raw_var = nn.Parameter(torch.full((t_ch,), math.log(math.expm1(init_var - eps))))
        self.eps = eps

    def variance(self) -> torch.Tensor:
        return F.softplus(self.raw_var) + self.eps

    def forward(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s, t = match_spatial(s, t)
        return gaussian_nll(self.mean(s), self.variance(), t)


@register_method("vid", summary="variational information: per (teacher layer, student layer) pair a Gaussian "
                 "q(t \\| s) with a 1×1-conv mean and learned per-channel variance; α·CE + β·Σ λ·(−log q), the sum "
                 "balanced (scaled to equal the CE on the first batch; the study's b·task + (1 − b)·Σλ·I is α = b, "
                 "β = 1 − b, `--no-balance`)", uses=("alpha", "beta", "balance", "layers", "pairs"),
                 defaults={"alpha": 1.0, "beta": 0.5})
class VID(FeatureDistiller):
    def __init__(self, student, teacher, *, alpha: float | None = None, beta: float | None = None,
                 balance: bool = True, lambdas: list[list[float]] | None = None, **kw):
        super().__init__(student, teacher, **kw)
        self.alpha, self.beta = self.default("alpha", alpha), self.default("beta", beta)
        self.balanced = balance
        self.regressors = nn.ModuleList(
            VariationalRegressor(_channels(self.s_shapes[s]), _channels(self.t_shapes[t])) for t, s in self.pairs)
        n = len(self.pairs)
        lam = torch.full((n,), 1.0 / n) if lambdas is None else torch.tensor(lambdas, dtype=torch.float32).flatten()
        if lam.numel() != n:
            raise CompressorError(f"the lambda matrix has {lam.numel()} entries but there are {n} layer pairs")
        self.register_buffer("lambdas", lam)

    def forward_train(self, x, y):
        logits, _, s, t = self.features(x)
        nll = sum(lam * reg(_as_map(s[b]), _as_map(t[a]))
                  for lam, reg, (a, b) in zip(self.lambdas, self.regressors, self.pairs))
        ce = cross_entropy(logits, y)
        nll = self.balance(ce, nll)
        return logits, {"loss_ce": self.alpha * ce, "loss_vid": self.beta * nll}


def _channels(shape: tuple) -> int:
    return int(shape[0])


def _as_map(f: torch.Tensor) -> torch.Tensor:
    return f if f.dim() == 4 else f.view(*f.shape, *([1] * (4 - f.dim())))
