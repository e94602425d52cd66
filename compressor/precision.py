"""Training precision: what `--precision 32|bf16-mixed|16-mixed` means, and losses kept in float32.

Names as in Lightning. 32 trains in float32 (no autocast). bf16-mixed runs the forward passes under
`torch.autocast` in bfloat16 (CPU and GPU). 16-mixed runs them in float16 with a gradient scaler
(`torch.amp.GradScaler`) so that small gradients do not underflow. Whatever the precision, every
loss is computed in float32 from the logits and features it receives (`float32`).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

PRECISIONS = ("32", "bf16-mixed", "16-mixed")
_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def _up(x):
    if torch.is_tensor(x) and x.is_floating_point():
        return x.float()
    if isinstance(x, (list, tuple)):
        return type(x)(_up(v) for v in x)
    return x


def float32(fn):
    """Run a loss in float32: floating tensor arguments (and lists of them) cast up, autocast off."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        args, kwargs = _up(list(args)), {k: _up(v) for k, v in kwargs.items()}
        first = next((a for a in args if torch.is_tensor(a)), None)
        with torch.autocast(first.device.type if first is not None else "cpu", enabled=False):
            return fn(*args, **kwargs)

    return wrapper


cross_entropy = float32(F.cross_entropy)


def autocast(precision: str, device: torch.device):
    """The forward-pass context for `precision` on `device` (a no-op for 32)."""
    return torch.autocast(device.type, dtype=_DTYPES.get(precision, torch.float32), enabled=precision != "32")


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A gradient scaler, active for 16-mixed only (bfloat16 has float32's range)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
