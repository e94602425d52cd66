import math

import pytest
import torch
import torch.nn.functional as F

from compressor.distill.functional import kd_loss, kd_terms


def _softmax(row, T):
    e = [math.exp(v / T) for v in row]
    s = sum(e)
    return [v / s for v in e]


def test_kd_loss_matches_formula_on_hand_made_tensors():
    s = torch.tensor([[2.0, 1.0, 0.1], [0.5, 0.5, 3.0]])
    t = torch.tensor([[3.0, 0.5, 0.0], [0.0, 1.0, 2.0]])
    y = torch.tensor([0, 2])
    T, alpha = 3.0, 0.25
    # by hand: alpha * CE + (1 - alpha) * T^2 * mean_b sum_k p_t log(p_t / p_s)
    ce = -(math.log(_softmax(s[0].tolist(), 1)[0]) + math.log(_softmax(s[1].tolist(), 1)[2])) / 2
    kl = 0.0
    for b in range(2):
        ps, pt = _softmax(s[b].tolist(), T), _softmax(t[b].tolist(), T)
        kl += sum(q * math.log(q / p) for p, q in zip(ps, pt))
    kl /= 2
    expected = alpha * ce + (1 - alpha) * T**2 * kl
    assert kd_loss(s, t, y, temperature=T, alpha=alpha).item() == pytest.approx(expected, rel=1e-5)
    ce_term, kd_term = kd_terms(s, t, y, T, alpha)
    assert ce_term.item() == pytest.approx(alpha * ce, rel=1e-5)
    assert kd_term.item() == pytest.approx((1 - alpha) * T**2 * kl, rel=1e-5)


def test_kd_alpha_one_is_plain_cross_entropy_and_ignores_teacher():
    s, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    a = kd_loss(s, torch.randn(5, 4), y, alpha=1.0)
    b = kd_loss(s, torch.randn(5, 4) * 10, y, alpha=1.0)
    assert a.item() == pytest.approx(F.cross_entropy(s, y).item())
    assert a.item() == pytest.approx(b.item())


def test_kd_is_zero_when_student_equals_teacher_and_alpha_zero():
    s = torch.randn(3, 5)
    assert kd_loss(s, s.clone(), torch.tensor([0, 1, 2]), alpha=0.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_gradient_reaches_student_not_teacher():
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3, requires_grad=True)
    kd_loss(s, t, torch.tensor([0, 1, 2, 0])).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_kd_on_fp16_logits_at_t8_equals_the_fp32_loss():
    """Losses are computed in float32 from what they receive: no overflow, no NaN (issue #11)."""
    from compressor.distill.functional import kd_loss

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(64, 100, generator=g) * 30, torch.randn(64, 100, generator=g) * 30
    y = torch.randint(0, 100, (64,), generator=g)
    full = kd_loss(s.half().float(), t.half().float(), y, temperature=8.0, alpha=0.0)
    half = kd_loss(s.half(), t.half(), y, temperature=8.0, alpha=0.0)
    assert half.dtype == torch.float32 and torch.isfinite(half)
    assert abs(half.item() - full.item()) < 1e-3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = kd_loss(s, t, y, temperature=8.0, alpha=0.5)
    assert under_autocast.dtype == torch.float32
    assert abs(under_autocast.item() - kd_loss(s, t, y, temperature=8.0, alpha=0.5).item()) < 1e-4


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


S = torch.tensor([[2.0, 1.0, 0.1, -0.5], [0.5, 0.5, 3.0, 1.0], [-1.0, 2.5, 0.0, 0.3]])
TT = torch.tensor([[3.0, 0.5, 0.0, -1.0], [0.0, 1.0, 2.0, 2.5], [0.2, 1.5, -0.5, 0.9]])
Y = torch.tensor([0, 2, 1])


def test_dkd_loss_matches_the_papers_equations_loop_by_loop():
    """Zhao et al. eq. (1)-(4): b = [p_t, 1 - p_t], p-hat = softmax over the non-target classes;
    TCKD = KL(b^T || b^S), NCKD = KL(p-hat^T || p-hat^S); DKD = alpha * TCKD + beta * NCKD, times T^2."""
    from compressor.distill.functional import dkd_loss

    T, a, b = 4.0, 1.0, 8.0
    tckd = nckd = 0.0
    for i in range(3):
        ps, pt = _softmax(S[i].tolist(), T), _softmax(TT[i].tolist(), T)
        g = int(Y[i])
        tckd += _kl([pt[g], 1 - pt[g]], [ps[g], 1 - ps[g]])
        others = [k for k in range(4) if k != g]
        hs = _softmax([S[i, k].item() for k in others], T)
        ht = _softmax([TT[i, k].item() for k in others], T)
        nckd += _kl(ht, hs)
    expected = T**2 * (a * tckd + b * nckd) / 3
    assert dkd_loss(S, TT, Y, alpha=a, beta=b, temperature=T).item() == pytest.approx(expected, rel=1e-5)
    # with beta = alpha = 1, TCKD + NCKD weighted by (1 - p_t^T) is classic KD (the paper's eq. 7): check the split
    kd = sum(_kl(_softmax(TT[i].tolist(), T), _softmax(S[i].tolist(), T)) for i in range(3)) / 3
    recombined = 0.0
    for i in range(3):
        ps, pt = _softmax(S[i].tolist(), T), _softmax(TT[i].tolist(), T)
        g = int(Y[i])
        others = [k for k in range(4) if k != g]
        recombined += _kl([pt[g], 1 - pt[g]], [ps[g], 1 - ps[g]]) + (1 - pt[g]) * _kl(
            _softmax([TT[i, k].item() for k in others], T), _softmax([S[i, k].item() for k in others], T))
    assert recombined / 3 == pytest.approx(kd, rel=1e-6)
    s = S.clone().requires_grad_(True)
    dkd_loss(s, TT, Y).backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_dist_loss_matches_the_papers_equations_loop_by_loop():
    """Huang et al. eq. (5)-(9): d_p(u, v) = 1 - Pearson(u, v); inter = mean over samples of d_p between
    the class distributions, intra = mean over classes of d_p between the batch columns; times T^2."""
    from compressor.distill.functional import dist_loss

    def pearson(u, v):
        mu, mv = sum(u) / len(u), sum(v) / len(v)
        cov = sum((x - mu) * (y - mv) for x, y in zip(u, v))
        return cov / (math.sqrt(sum((x - mu) ** 2 for x in u)) * math.sqrt(sum((y - mv) ** 2 for y in v)))

    T, beta, gamma = 2.0, 1.5, 0.5
    ys = [_softmax(S[i].tolist(), T) for i in range(3)]
    yt = [_softmax(TT[i].tolist(), T) for i in range(3)]
    inter = sum(1 - pearson(ys[i], yt[i]) for i in range(3)) / 3
    intra = sum(1 - pearson([ys[i][k] for i in range(3)], [yt[i][k] for i in range(3)]) for k in range(4)) / 4
    expected = T**2 * (beta * inter + gamma * intra)
    assert dist_loss(S, TT, beta=beta, gamma=gamma, temperature=T).item() == pytest.approx(expected, rel=1e-5)
    assert dist_loss(TT, TT).item() == pytest.approx(0.0, abs=1e-6)  # identical predictions: no loss
