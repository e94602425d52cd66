"""Learning What and Where to Transfer (Jang et al., 2019).

For every candidate (teacher layer m, student layer n) pair, meta-networks read the teacher's
features: f gives channel weights (dense + softmax over the teacher's channels) and g the pair's
weight lambda (dense + ReLU6). With r a 1x1 conv on the student's features,

    L_wfm = sum over pairs of lambda * (1/HW) * sum_c w_c * sum_ij (r(S)_cij - T_cij)^2.

Per batch: one update of the student on CE + beta * L_wfm, `inner_steps` updates on L_wfm alone,
one on CE; then one update of the meta-networks on the student's CE, through a one-step
look-ahead of the student on L_wfm (first-order hypergradient). The method is costly and
fragile: time per step and peak memory are recorded, and a non-finite loss stops training.
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from compressor.distill.base import FeatureDistiller
from compressor.distill.functional import match_spatial

DEFAULT_BETA = 0.5


class PairMeta(nn.Module):
    """Meta-networks f (what: channel weights) and g (where: pair weight) for one layer pair."""

    def __init__(self, t_ch: int) -> None:
        super().__init__()
        self.f = nn.Linear(t_ch, t_ch)
        self.g = nn.Linear(t_ch, 1)
        nn.init.zeros_(self.f.weight), nn.init.zeros_(self.f.bias)  # uniform channel weights at start
        nn.init.zeros_(self.g.weight), nn.init.constant_(self.g.bias, 1.0)  # lambda = 1 at start

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = F.adaptive_avg_pool2d(t, 1).flatten(1)
        return F.softmax(self.f(pooled), dim=1), F.relu6(self.g(pooled)).squeeze(1)


class L2TWW(FeatureDistiller):
    def __init__(self, student, teacher, beta: float | None = None, inner_steps: int = 2, meta_lr: float = 1e-3,
                 **kw) -> None:
        super().__init__(student, teacher, **kw)
        self.beta = DEFAULT_BETA if beta is None else beta
        self.inner_steps = inner_steps
        self.meta = nn.ModuleList(PairMeta(self.t_shapes[t][0]) for t, _ in self.pairs)
        self.regressors = nn.ModuleList(nn.Conv2d(self.s_shapes[s][0], self.t_shapes[t][0], 1, bias=False)
                                        for t, s in self.pairs)
        self.meta_opt = torch.optim.Adam(self.meta.parameters(), lr=meta_lr)
        self.step_times: list[float] = []

    def student_parameters(self) -> list[nn.Parameter]:
        """theta: the student and the regressors r (the meta-networks are updated separately)."""
        return list(self.model.parameters()) + list(self.regressors.parameters())

    def wfm(self, s: dict, t: dict) -> torch.Tensor:
        total = 0.0
        for meta, reg, (tn, sn) in zip(self.meta, self.regressors, self.pairs):
            a, b = match_spatial(reg(s[sn]), t[tn])
            w, lam = meta(t[tn])
            per_channel = (a - b).pow(2).sum(dim=(2, 3)) / (a.shape[2] * a.shape[3])  # (N, C)
            total = total + (lam * (w * per_channel).sum(1)).mean()
        return total

    def _student(self, x):
        logits = self.model(x)
        return logits, self._s_tap.pop()

    def forward_train(self, x, y):
        logits, _, s, t = self.features(x)
        return logits, {"loss_ce": F.cross_entropy(logits, y), "loss_wfm": self.beta * self.wfm(s, t)}

    def train_step(self, x, y, optimizer):
        """The bilevel steps of one batch; returns the first step's logits and losses."""
        t0 = time.perf_counter()
        logits, _, s, t = self.features(x)  # teacher features are computed once per batch
        ce, wfm = F.cross_entropy(logits, y), self.wfm(s, t)
        if not torch.isfinite(ce + wfm):
            return logits, {"loss_ce": ce.detach(), "loss_wfm": wfm.detach()}  # the loop stops on it
        optimizer.zero_grad(set_to_none=True)
        (ce + self.beta * wfm).backward()
        optimizer.step()
        for _ in range(self.inner_steps):
            _, s2 = self._student(x)
            optimizer.zero_grad(set_to_none=True)
            self.wfm(s2, t).backward()
            optimizer.step()
        logits3, _ = self._student(x)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(logits3, y).backward()
        optimizer.step()
        self._meta_step(x, y, t, optimizer.param_groups[0]["lr"])
        self.step_times.append(time.perf_counter() - t0)
        return logits, {"loss_ce": ce.detach(), "loss_wfm": (self.beta * wfm).detach()}

    def _meta_step(self, x, y, t: dict, lr: float) -> None:
        """phi <- phi - meta_lr * d CE(theta - lr * grad_theta L_wfm(theta, phi)) / d phi (first order)."""
        theta = self.student_parameters()
        _, s = self._student(x)
        g_wfm = torch.autograd.grad(self.wfm(s, t), theta, create_graph=True, allow_unused=True)
        logits, _ = self._student(x)
        g_ce = torch.autograd.grad(F.cross_entropy(logits, y), theta, allow_unused=True)
        hyper = sum((gw * gc.detach()).sum() for gw, gc in zip(g_wfm, g_ce) if gw is not None and gc is not None)
        self.meta_opt.zero_grad(set_to_none=True)
        if torch.is_tensor(hyper) and hyper.requires_grad:
            (-lr * hyper).backward(inputs=list(self.meta.parameters()))
            self.meta_opt.step()
        for p in theta:
            p.grad = None
