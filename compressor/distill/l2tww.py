"""Learning What and Where to Transfer (Jang et al., 2019).

For every candidate (teacher layer m, student layer n) pair, meta-networks read the teacher's
features: f gives channel weights (dense + softmax over the teacher's channels) and g the pair's
weight lambda (dense + ReLU6). With r a 1x1 conv on the student's features,

    L_wfm = sum over pairs of lambda * (1/HW) * sum_c w_c * sum_ij (r(S)_cij - T_cij)^2.

Per batch: one update of the student on alpha * CE + beta * L_wfm, `inner_steps` updates on L_wfm
alone, one on CE; then one update of the meta-networks on the student's CE through a one-step
look-ahead of the student on L_wfm. The hypergradient needs the mixed second derivative of L_wfm
(a double backward through the student); where an activation has none (hard-swish, hard-sigmoid:
every MobileNetV3), it is estimated by finite differences of L_wfm's per-channel terms along the
CE gradient instead (DARTS' approximation). Which one ran, the time per step and peak memory go
into metrics.json (`cost`); a non-finite loss stops training.
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from compressor.distill.base import FeatureDistiller
from compressor.distill.functional import cross_entropy, match_spatial
from compressor.distill.registry import register_method
from compressor.training import peak_memory_mb

SECOND_ORDER, FINITE_DIFFERENCE = "second-order", "first-order (finite differences)"


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


@register_method("l2tww", summary="learning what and where to transfer: meta-learned channel and pair weights on "
                 "a feature-matching loss; α·CE + β·L_wfm, bilevel steps", uses=("alpha", "beta", "layers", "pairs"),
                 defaults={"alpha": 1.0, "beta": 0.5})
class L2TWW(FeatureDistiller):
    def __init__(self, student, teacher, *, alpha: float | None = None, beta: float | None = None,
                 inner_steps: int = 2, meta_lr: float = 1e-3, **kw) -> None:
        super().__init__(student, teacher, **kw)
        self.alpha, self.beta = self.default("alpha", alpha), self.default("beta", beta)
        self.inner_steps = inner_steps
        self.meta = nn.ModuleList(PairMeta(self.t_shapes[t][0]) for t, _ in self.pairs)
        self.regressors = nn.ModuleList(nn.Conv2d(self.s_shapes[s][0], self.t_shapes[t][0], 1, bias=False)
                                        for t, s in self.pairs)
        self.meta_opt = torch.optim.Adam(self.meta.parameters(), lr=meta_lr)
        self.step_times: list[float] = []
        self.meta_gradient = SECOND_ORDER

    def student_parameters(self) -> list[nn.Parameter]:
        """theta: the student and the regressors r (the meta-networks are updated separately)."""
        return list(self.model.parameters()) + list(self.regressors.parameters())

    trainable_parameters = student_parameters

    def per_channel(self, s: dict, t: dict) -> list[torch.Tensor]:
        """Per pair, the (N, C) feature-matching error of each sample and teacher channel."""
        out = []
        for reg, (tn, sn) in zip(self.regressors, self.pairs):
            a, b = match_spatial(reg(s[sn]), t[tn])
            out.append((a.float() - b.float()).pow(2).sum(dim=(2, 3)) / (a.shape[2] * a.shape[3]))
        return out

    def weighted(self, errors: list[torch.Tensor], t: dict) -> torch.Tensor:
        total = 0.0
        for meta, err, (tn, _) in zip(self.meta, errors, self.pairs):
            w, lam = meta(t[tn])
            total = total + (lam * (w * err).sum(1)).mean()
        return total

    def wfm(self, s: dict, t: dict) -> torch.Tensor:
        return self.weighted(self.per_channel(s, t), t)

    def _student(self, x):
        logits = self.model(x)
        return logits, self._s_tap.pop()

    def forward_train(self, x, y):
        logits, _, s, t = self.features(x)
        return logits, {"loss_ce": self.alpha * cross_entropy(logits, y), "loss_wfm": self.beta * self.wfm(s, t)}

    def train_step(self, x, y, optimizer):
        """The bilevel steps of one batch; returns the first step's logits and losses."""
        t0 = time.perf_counter()
        logits, _, s, t = self.features(x)  # teacher features are computed once per batch
        ce, wfm = self.alpha * cross_entropy(logits, y), self.beta * self.wfm(s, t)
        if not torch.isfinite(ce + wfm):
            return logits, {"loss_ce": ce.detach(), "loss_wfm": wfm.detach()}  # the loop stops on it
        optimizer.zero_grad(set_to_none=True)
        (ce + wfm).backward()
        optimizer.step()
        for _ in range(self.inner_steps):
            _, s2 = self._student(x)
            optimizer.zero_grad(set_to_none=True)
            self.wfm(s2, t).backward()
            optimizer.step()
        logits3, _ = self._student(x)
        optimizer.zero_grad(set_to_none=True)
        cross_entropy(logits3, y).backward()
        optimizer.step()
        self._meta_step(x, y, t, optimizer.param_groups[0]["lr"])
        self.step_times.append(time.perf_counter() - t0)
        return logits, {"loss_ce": ce.detach(), "loss_wfm": wfm.detach()}

    def _meta_step(self, x, y, t: dict, lr: float) -> None:
        """phi <- phi - meta_lr * d CE(theta - lr * grad_theta L_wfm(theta, phi)) / d phi, to first order in lr:
        d/d phi of -lr * <grad_theta CE, grad_theta L_wfm(theta, phi)>."""
        theta = self.student_parameters()
        logits, _ = self._student(x)
        g_ce = [g.detach() if g is not None else None
                for g in torch.autograd.grad(cross_entropy(logits, y), theta, allow_unused=True)]
        if self.meta_gradient == SECOND_ORDER:
            try:
                self._meta_update(self._hyper_exact(x, t, theta, g_ce), lr)
            except RuntimeError as e:
                if "derivative for" not in str(e) and "double backward" not in str(e):
                    raise
                self.meta_gradient = FINITE_DIFFERENCE  # no double backward through this student: from now on
        if self.meta_gradient == FINITE_DIFFERENCE:
            self._meta_update(self._hyper_finite_difference(x, t, theta, g_ce), lr)
        for p in theta:
            p.grad = None

    def _meta_update(self, hyper, lr: float) -> None:
        self.meta_opt.zero_grad(set_to_none=True)
        if torch.is_tensor(hyper) and hyper.requires_grad:
            (-lr * hyper).backward(inputs=list(self.meta.parameters()))
            self.meta_opt.step()

    def _hyper_exact(self, x, t: dict, theta, g_ce) -> torch.Tensor:
        _, s = self._student(x)
        g_wfm = torch.autograd.grad(self.wfm(s, t), theta, create_graph=True, allow_unused=True)
        return sum((gw * gc).sum() for gw, gc in zip(g_wfm, g_ce) if gw is not None and gc is not None)

    @torch.no_grad()
    def _directional(self, x, t: dict, theta, v, eps: float) -> list[torch.Tensor]:
        """(e(theta + eps v) - e(theta - eps v)) / (2 eps) for each per-channel error e: its derivative along v."""
        saved = [p.detach().clone() for p in theta]
        buffers = [b.clone() for b in self.model.buffers()]
        out = []
        for sign in (1.0, -1.0):
            for p, p0, d in zip(theta, saved, v):
                p.copy_(p0 + sign * eps * d if d is not None else p0)
            _, s = self._student(x)
            out.append(self.per_channel(s, t))
        for p, p0 in zip(theta, saved):
            p.copy_(p0)
        for b, b0 in zip(self.model.buffers(), buffers):
            b.copy_(b0)  # batch-norm statistics as they were
        return [(a - b) / (2 * eps) for a, b in zip(*out)]

    def _hyper_finite_difference(self, x, t: dict, theta, g_ce) -> torch.Tensor | None:
        norm = torch.sqrt(sum((g * g).sum() for g in g_ce if g is not None))
        if not norm > 0:
            return None
        return self.weighted(self._directional(x, t, theta, g_ce, 0.01 / float(norm)), t)

    def cost(self, device) -> dict:
        import statistics


        if not self.step_times:
            return {}
        return {"seconds_per_step": round(statistics.median(self.step_times), 4), "steps": len(self.step_times),
                "peak_memory_mb": peak_memory_mb(device), "meta_gradient": self.meta_gradient}
