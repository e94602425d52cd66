"""Pure distillation losses, usable in any training loop (like torch.nn.functional)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor | None,
            temperature: float = 4.0, alpha: float = 0.5) -> torch.Tensor:
    """Hinton et al.: alpha * CE(y, s) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T)).

    Batch mean. alpha = 1 is plain training (the teacher is ignored); alpha = 0 is pure distillation.
    """
    ce, soft = kd_terms(student_logits, teacher_logits, targets, temperature, alpha)
    return ce + soft


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
