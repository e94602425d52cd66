"""Pure distillation losses, usable in any training loop (like torch.nn.functional).

Every loss is computed in float32 from what it receives, whatever the training precision: fp16 or
bf16 logits and features are cast up and autocast is off inside (`float32`), so a temperature of 8
on fp16 logits gives the fp32 loss, never an overflow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from compressor.precision import cross_entropy, float32  # noqa: F401 - cross_entropy is part of this API


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor | None,
            temperature: float = 4.0, alpha: float = 0.5) -> torch.Tensor:
    """Hinton et al.: alpha * CE(y, s) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T)).

    Batch mean. alpha = 1 is plain training (the teacher is ignored); alpha = 0 is pure distillation.
    """
    ce, soft = kd_terms(student_logits, teacher_logits, targets, temperature, alpha)
    return ce + soft


@float32
def kd_terms(student_logits, teacher_logits, targets, temperature: float = 4.0, alpha: float = 0.5):
    """The two weighted terms of `kd_loss`: (alpha * CE, (1 - alpha) * T^2 * KL)."""
    zero = student_logits.new_zeros(())
    ce = alpha * F.cross_entropy(student_logits, targets) if alpha > 0 else zero
    if alpha < 1:
        log_p_s = F.log_softmax(student_logits / temperature, dim=1)
        log_p_t = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
        kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
        soft = (1 - alpha) * temperature**2 * kl
    else:
        soft = zero
    return ce, soft


@float32
def logit_mse_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared error between student and teacher logits (logit regression)."""
    return F.mse_loss(student_logits, teacher_logits.detach())


def as_map(f: torch.Tensor) -> torch.Tensor:
    """A flat (N, D) feature as an (N, D, 1, 1) map; maps unchanged."""
    return f if f.dim() == 4 else f.view(*f.shape, *([1] * (4 - f.dim())))


def match_spatial(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger of two (N, C, H, W) maps to the smaller one's height and width."""
    ha, wa, hb, wb = a.shape[-2], a.shape[-1], b.shape[-2], b.shape[-1]
    if (ha, wa) == (hb, wb):
        return a, b
    if ha * wa > hb * wb:
        return F.adaptive_avg_pool2d(a, (hb, wb)), b
    return a, F.adaptive_avg_pool2d(b, (ha, wa))


def attention_map(feature: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Zagoruyko & Komodakis: mean over channels of |A|^p, flattened and L2-normalized: (N, H*W)."""
    return F.normalize(feature.abs().pow(p).mean(1).flatten(1), dim=1)


@float32
def attention_transfer_loss(student_features: list[torch.Tensor], teacher_features: list[torch.Tensor],
                            p: float = 2.0) -> torch.Tensor:
    """Sum over layer pairs of the mean squared difference of attention maps (unweighted).

    Maps of different spatial size are pooled to the smaller one before normalizing.
    """
    if len(student_features) != len(teacher_features):
        raise ValueError(f"{len(student_features)} student features but {len(teacher_features)} teacher features")
    total = student_features[0].new_zeros(())
    for s, t in zip(student_features, teacher_features):
        ms, mt = s.abs().pow(p).mean(1, keepdim=True), t.detach().abs().pow(p).mean(1, keepdim=True)
        ms, mt = match_spatial(ms, mt)
        total = total + (F.normalize(ms.flatten(1), dim=1) - F.normalize(mt.flatten(1), dim=1)).pow(2).mean()
    return total


def _pairwise_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    prod = e @ e.t()
    sq = prod.diag()
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * prod).clamp(min=eps).sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))


def rkd_distance_potential(e: torch.Tensor) -> torch.Tensor:
    """psi_D: pairwise Euclidean distances divided by their mean over distinct pairs (mu)."""
    d = _pairwise_distances(e)
    n = len(e)
    mu = d.sum() / max(n * (n - 1), 1)
    return d / mu.clamp_min(1e-12)


def rkd_angle_potential(e: torch.Tensor) -> torch.Tensor:
    """psi_A: cosine of the angle at j formed by every triplet (i, j, k), flattened."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # (j, i, D): unit vectors j -> i
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()


@float32
def rkd_loss(student_embeddings: torch.Tensor, teacher_embeddings: torch.Tensor, distance_weight: float = 25.0,
             angle_weight: float = 50.0) -> torch.Tensor:
    """Park et al. relational KD: Huber (smooth L1) loss between distance-wise and angle-wise potentials.

    Independent of the embedding dimensions of student and teacher.
    """
    s, t = student_embeddings.flatten(1), teacher_embeddings.detach().flatten(1)
    loss = s.new_zeros(())
    if distance_weight:
        loss = loss + distance_weight * F.smooth_l1_loss(rkd_distance_potential(s), rkd_distance_potential(t))
    if angle_weight:
        loss = loss + angle_weight * F.smooth_l1_loss(rkd_angle_potential(s), rkd_angle_potential(t))
    return loss


@float32
def gaussian_nll(mean: torch.Tensor, variance: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-log q(t | s) up to a constant for a Gaussian with per-channel variance (VID), averaged."""
    var = variance.view(1, -1, *([1] * (target.dim() - 2)))
    return 0.5 * ((mean - target.detach()).pow(2) / var + var.log()).mean()


@float32
def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, alpha: float = 1.0,
             beta: float = 8.0, temperature: float = 4.0) -> torch.Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022): alpha * TCKD + beta * NCKD, each scaled by T^2, batch mean.

    TCKD: KL between the binary distributions (p_target, 1 - p_target) of teacher and student;
    NCKD: KL between their distributions over the non-target classes alone (softmax without the
    target class). Cross-entropy and the warm-up are not part of it (see compressor.distill.dkd).
    """
    t = teacher_logits.detach() / temperature
    s = student_logits / temperature
    target = F.one_hot(targets, s.shape[1]).bool()
    p_s, p_t = F.softmax(s, dim=1), F.softmax(t, dim=1)
    pt_s, pt_t = p_s[target], p_t[target]  # the target class's probability, per sample
    b_s = torch.stack([pt_s, (1 - pt_s)], dim=1).clamp_min(1e-12)
    b_t = torch.stack([pt_t, (1 - pt_t)], dim=1).clamp_min(1e-12)
    tckd = (b_t * (b_t.log() - b_s.log())).sum(1).mean()
    masked = torch.finfo(s.dtype).min
    log_q_s = F.log_softmax(s.masked_fill(target, masked), dim=1)
    log_q_t = F.log_softmax(t.masked_fill(target, masked), dim=1)
    q_t = log_q_t.exp()
    nckd = (q_t * (log_q_t - log_q_s)).masked_fill(target, 0).sum(1).mean()
    return temperature**2 * (alpha * tckd + beta * nckd)


def _pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of a with the same row of b."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


@float32
def dist_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 1.0, gamma: float = 1.0,
              temperature: float = 1.0) -> torch.Tensor:
    """DIST (Huang et al., NeurIPS 2022): beta * inter-class + gamma * intra-class relation, each T^2 *
    (1 - mean Pearson correlation) between the softened predictions: across the classes of each sample
    (inter), and across the samples of the batch for each class (intra)."""
    y_s = F.softmax(student_logits / temperature, dim=1)
    y_t = F.softmax(teacher_logits.detach() / temperature, dim=1)
    inter = 1 - _pearson_rows(y_s, y_t).mean()
    intra = 1 - _pearson_rows(y_s.t(), y_t.t()).mean()
    return temperature**2 * (beta * inter + gamma * intra)
