"""Self-distillation (Zhang et al., Be Your Own Teacher): auxiliary classifiers on the student's
intermediate stages learn from its own final output (KD on logits + L2 on features). The heads
live in the distiller, not in the student, so they are dropped at export."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from compressor.taps import FeatureTap, probe_shapes
from compressor.distill.functional import cross_entropy, kd_terms
from compressor.training import Task


class AuxHead(nn.Module):
    """1x1 conv bottleneck to the deepest stage's channels, then global pool and a linear classifier."""

    def __init__(self, in_ch: int, deep_ch: int, num_classes: int) -> None:
        super().__init__()
        self.bottleneck = nn.Sequential(nn.Conv2d(in_ch, deep_ch, 1, bias=False), nn.BatchNorm2d(deep_ch), nn.ReLU())
        self.fc = nn.Linear(deep_ch, num_classes)

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = F.adaptive_avg_pool2d(self.bottleneck(f), 1).flatten(1)
        return self.fc(feat), feat


class SelfDistiller(Task):
    """Loss = CE(final) + sum over shallow heads of [alpha CE + (1 - alpha) T^2 KL(final || head)
    + feature_weight * ||f_head - f_final||^2]. No external teacher."""

    def __init__(self, student: nn.Module, *, stages: list[str], input_shape: list[int], num_classes: int,
                 temperature: float = 3.0, alpha: float = 0.3, feature_weight: float = 0.03, **_) -> None:
        super().__init__()
        self.model, self.stages = student, list(stages)
        shapes = probe_shapes(student, self.stages, input_shape)
        deep = shapes[self.stages[-1]][0]
        self.heads = nn.ModuleList(AuxHead(shapes[s][0], deep, num_classes) for s in self.stages[:-1])
        self.temperature, self.alpha, self.feature_weight = temperature, alpha, feature_weight
        self._tap = FeatureTap(student, self.stages)

    def forward_train(self, x, y):
        logits = self.model(x)
        feats = self._tap.pop()
        final_feat = F.adaptive_avg_pool2d(feats[self.stages[-1]], 1).flatten(1).detach()
        losses = {"loss_ce": cross_entropy(logits, y)}
        kd_total = hint_total = logits.new_zeros(())
        for head, name in zip(self.heads, self.stages[:-1]):
            h_logits, h_feat = head(feats[name])
            ce, soft = kd_terms(h_logits, logits.detach(), y, self.temperature, self.alpha)
            kd_total = kd_total + ce + soft
            hint_total = hint_total + self.feature_weight * F.mse_loss(h_feat, final_feat)
        losses["loss_aux_kd"], losses["loss_aux_feat"] = kd_total, hint_total
        return logits, losses

    def close(self) -> None:
        self._tap.remove()
