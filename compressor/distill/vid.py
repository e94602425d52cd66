"""Variational information distillation (Ahn et al.), with all-pairs layer matching.

For each (teacher layer i, student layer j) pair, a Gaussian q(t_i | s_j) whose mean is a small
1x1-conv network of s_j and whose per-channel variance is learned (softplus) gives a variational
lower bound of I(t_i; s_j). Loss = alpha * CE + beta * sum_ij lambda_ij * (-log q), the sum
balanced by default (scaled to the cross-entropy on the first batch, see Distiller.balance): alpha 1,
beta 0.5. The study's L = b * task + (1 - b) * sum(lambda * I) is alpha = b, beta = 1 - b with
--no-balance (its b = 0.5 lost to the student alone on the quickstart even balanced).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from compressor import CompressorError
from compressor.distill.base import FeatureDistiller
from compressor.distill.functional import as_map, cross_entropy, gaussian_nll, match_spatial
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
                 "β = 1 − b, `--no-balance`)", uses=("alpha", "beta", "balance", "layers", "pairs", "lambdas"),
                 defaults={"alpha": 1.0, "beta": 0.5})
class VID(FeatureDistiller):
    def __init__(self, student, teacher, *, alpha: float | None = None, beta: float | None = None,
                 balance: bool = True, lambdas: list[list[float]] | None = None, **kw):
        super().__init__(student, teacher, **kw)
        self.alpha, self.beta = self.default("alpha", alpha), self.default("beta", beta)
        self.balanced = balance
        self.regressors = nn.ModuleList(
            VariationalRegressor(_channels(self.s_shapes[s]), _channels(self.t_shapes[t])) for t, s in self.pairs)
        self.register_buffer("lambdas", pair_weights(lambdas, self.pairs))

    def forward_train(self, x, y):
        logits, _, s, t = self.features(x)
        nll = sum(lam * reg(as_map(s[b]), as_map(t[a]))
                  for lam, reg, (a, b) in zip(self.lambdas, self.regressors, self.pairs))
        ce = cross_entropy(logits, y)
        nll = self.balance(ce, nll)
        return logits, {"loss_ce": self.alpha * ce, "loss_vid": self.beta * nll}


def pair_grid(pairs: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """The rows (teacher layers) and columns (student layers) of the λ matrix of these pairs."""
    return list(dict.fromkeys(t for t, _ in pairs)), list(dict.fromkeys(s for _, s in pairs))


def pair_weights(matrix: list[list[float]] | None, pairs: list[tuple[str, str]]) -> torch.Tensor:
    """λ per pair, in the order of `pairs`, from a (teacher layers x student layers) matrix; uniform
    (1 / number of pairs) without one. A matrix of the wrong shape, or weight on layers that are not
    paired, is one line naming what it should be."""
    n = len(pairs)
    if matrix is None:
        return torch.full((n,), 1.0 / n)
    rows, cols = pair_grid(pairs)
    m = torch.tensor(matrix, dtype=torch.float32)
    if m.dim() != 2 or tuple(m.shape) != (len(rows), len(cols)):
        got = "x".join(map(str, m.shape)) or "0"
        raise CompressorError(f"--lambdas is a {got} matrix but the layer pairs need {len(rows)}x{len(cols)}: a row "
                              f"per teacher layer ({', '.join(rows)}), a column per student layer ({', '.join(cols)})")
    where = {(rows.index(t), cols.index(s)) for t, s in pairs}
    stray = [f"{rows[i]}:{cols[j]}" for i in range(len(rows)) for j in range(len(cols))
             if (i, j) not in where and float(m[i, j]) != 0]
    if stray:
        raise CompressorError(f"--lambdas weighs {stray[0]}, which is not a layer pair; put 0 there or pair every "
                              "layer with --pairs all")
    if float(m.sum()) <= 0:
        raise CompressorError("--lambdas are all 0: no layer pair would be distilled")
    return torch.stack([m[rows.index(t), cols.index(s)] for t, s in pairs])


def _channels(shape: tuple) -> int:
    return int(shape[0])
