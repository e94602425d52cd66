"""Training logs users watch in their own tools: TensorBoard scalars, one point per epoch.

Every training loop (teach, distill and its control, prune's fine-tuning, each phase of a method
such as fitnet's hints) writes its own TensorBoard run, a subdirectory of `--log-dir` named after
the loop, from the same history rows that go into metrics.json. Only rank 0 writes under torchrun.
"""

from __future__ import annotations

import re
from pathlib import Path

# history keys that are not a per-epoch curve: the epoch itself, and a one-off timing of the first row
NOT_SCALARS = ("epoch", "first_step_s")


def run_name(desc: str) -> str:
    """A directory name for a training loop's description: 'distill[kd] hints' -> 'distill-kd-hints'."""
    return re.sub(r"[^A-Za-z0-9_.=]+", "-", desc).strip("-") or "train"


def scalar_tag(key: str) -> str:
    """TensorBoard groups tags by the part before '/': losses, shares, accuracies, speed."""
    if key == "train_loss":
        return "loss/total"
    if key.startswith("loss_"):
        return f"loss/{key[5:]}"
    if key.startswith("share_loss_"):
        return f"loss_share/{key[11:]}"
    if key.endswith("_accuracy"):
        return f"accuracy/{key.removesuffix('_accuracy')}"
    if key.endswith("_agreement"):
        return f"accuracy/{key}"
    if key in ("images_per_s", "epoch_time_s"):
        return f"speed/{key}"
    return key


class EpochLog:
    """TensorBoard scalars of one training loop; `epoch(row)` writes one point per numeric key."""

    def __init__(self, log_dir: str | Path, desc: str) -> None:
        from compressor import CompressorError

        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is a dependency; a broken install is still one line
            raise CompressorError("--log-dir needs TensorBoard: pip install tensorboard") from None
        self.dir = Path(log_dir).expanduser() / run_name(desc)
        self.writer = SummaryWriter(log_dir=str(self.dir))

    def epoch(self, row: dict) -> None:
        step = int(row["epoch"])
        for key, value in row.items():
            if key not in NOT_SCALARS and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(scalar_tag(key), float(value), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_log(log_dir: str | None, desc: str) -> EpochLog | None:
    """The loop's log when `log_dir` is set and this is the process that writes (rank 0)."""
    from compressor import distributed

    if log_dir is None or not distributed.is_main():
        return None
    return EpochLog(log_dir, desc)
