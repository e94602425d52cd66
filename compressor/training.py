"""The one training loop every stage uses: optimizer, cosine schedule, per-epoch validation,
best and last weights, progress, seeding, and a stop on non-finite loss.

What is trained is a *task*: an nn.Module with `forward_train(x, y) -> (logits, {name: loss})`
and a `model` attribute (what is evaluated and saved). The loop sums the named losses and logs
them; it never branches on the method.
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from compressor import CompressorError
from compressor.console import log, progress
from compressor.checkpoint import FitCheckpoint, Interrupted, StopSignals, rng_state, set_rng_state
from compressor.data import BatchLoader, DataBundle


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise CompressorError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    if device not in ("cpu", "cuda"):
        raise CompressorError(f"--device must be auto, cpu or cuda, got '{device}'")
    return torch.device(device)


def peak_memory_mb(device: torch.device | str = "cpu") -> float:
    """Peak memory of this process: CUDA allocations on a GPU, resident set size on the CPU."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@dataclass
class TrainConfig:
    epochs: int = 1
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    seed: int = 0

    def validate(self) -> None:
        if self.epochs < 0:
            raise CompressorError(f"--epochs must be 0 or more, got {self.epochs}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise CompressorError(f"--lr must be a positive number, got {self.lr}")
        if self.batch_size < 1:
            raise CompressorError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.optimizer not in ("sgd", "adam"):
            raise CompressorError(f"--optimizer must be sgd or adam, got '{self.optimizer}'")


class Supervised(nn.Module):
    """The plain task: cross-entropy on the hard labels."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward_train(self, x, y):
        logits = self.model(x)
        return logits, {"loss_ce": F.cross_entropy(logits, y)}


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_accuracy: float = 0.0
    last_state: dict | None = None
    wall_time_s: float = 0.0


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)


@torch.no_grad()
def predict(model: nn.Module, loader: BatchLoader, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels for every sample of a (non-shuffled) loader."""
    was_training = model.training
    model.eval()
    outs, labels = [], []
    try:
        for x, y in loader:
            outs.append(model(x.to(device)).float().cpu())
            labels.append(y)
    finally:
        model.train(was_training)
    return torch.cat(outs), torch.cat(labels)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean()) if len(labels) else 0.0


def fit(task: nn.Module, data: DataBundle, cfg: TrainConfig, *, device: torch.device | str = "cpu",
        desc: str = "train", params: list[nn.Parameter] | None = None,
        after_step: Callable[[], None] | None = None, stage: str = "train",
        train_step: Callable | None = None, val_reference: torch.Tensor | None = None,
        checkpoint: FitCheckpoint | None = None) -> FitResult:
    """Train `task` for cfg.epochs, validating each epoch; leave the best weights in `task.model`.

    Args:
        task: module with forward_train(x, y) -> (logits, {name: loss}) and a `model` attribute.
        params: what the optimizer updates (default: every parameter of `task` that requires grad).
        after_step: called after each optimizer step (e.g. to re-apply pruning masks); if it has
            state_dict/load_state_dict, its state is checkpointed too.
        train_step: replaces the default step (for methods with several updates per batch);
            called as train_step(x, y, optimizer) -> (logits, {name: loss tensor}).
        val_reference: the teacher's predicted class per validation sample; each epoch then also
            records `val_agreement` (accuracy on the teacher's labels: the "soft" accuracy).
        checkpoint: where to save resumable state at every epoch end and when SIGINT/SIGTERM
            stops training after the current step (and to resume from, see compressor.checkpoint).

    A task with an `on_batch(epoch, index)` method is told which samples each batch holds.
    """
    cfg.validate()
    seed_everything(cfg.seed)
    device = torch.device(device)
    task.to(device)
    model = task.model
    if params is None:
        params = [p for p in task.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg)
    on_batch = getattr(task, "on_batch", None)
    train_loader = data.loader("train", cfg.batch_size, train=True, seed=cfg.seed)
    val_loader = data.loader("val", 512)
    steps = max(1, cfg.epochs * len(train_loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    result = FitResult()
    best_state, t_start = None, time.time()
    start_epoch, start_step, carry = 1, 0, ({}, 0, 0)
    extra_optims = {k: v for k, v in vars(task).items() if isinstance(v, torch.optim.Optimizer)}
    stateful_hook = after_step if hasattr(after_step, "state_dict") else None

    frozen = "teacher." if getattr(task, "teacher", None) is not None else None  # offline: never changes

    def task_state() -> dict:
        return {k: v for k, v in task.state_dict().items() if frozen is None or not k.startswith(frozen)}

    def snapshot(epoch: int, step: int, sums: dict, correct: int, seen: int) -> dict:
        return {"task": task_state(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "extra_optimizers": {k: o.state_dict() for k, o in extra_optims.items()},
                "after_step": stateful_hook.state_dict() if stateful_hook else None,
                "epoch": epoch, "step": step, "sums": sums, "correct": correct, "seen": seen,
                "history": result.history, "best_state": best_state, "best_epoch": result.best_epoch,
                "best_val_accuracy": result.best_val_accuracy, "rng": rng_state()}

    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        missing, unexpected = task.load_state_dict(saved["task"], strict=False)
        if unexpected or any(frozen is None or not k.startswith(frozen) for k in missing):
            raise CompressorError(f"checkpoint {checkpoint.path} does not match this model; run without --resume")
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        for k, o in extra_optims.items():
            o.load_state_dict(saved["extra_optimizers"][k])
        if stateful_hook is not None:
            stateful_hook.load_state_dict(saved["after_step"])
        result.history, best_state = saved["history"], saved["best_state"]
        result.best_epoch, result.best_val_accuracy = saved["best_epoch"], saved["best_val_accuracy"]
        start_epoch, start_step = saved["epoch"], saved["step"]
        carry = (saved["sums"], saved["correct"], saved["seen"])
        set_rng_state(saved["rng"])
        log(f"{desc}: resuming from {checkpoint.path} at epoch {start_epoch}, step {start_step}")
    with StopSignals() as stop:
        for epoch in range(start_epoch, cfg.epochs + 1):
            task.train()
            train_loader.set_epoch(epoch)
            first = epoch == start_epoch
            train_loader.skip_batches = start_step if first else 0
            sums, correct, seen = (dict(carry[0]), carry[1], carry[2]) if first else ({}, 0, 0)
            t0 = time.time()
            with progress(f"{desc} epoch {epoch}/{cfg.epochs}", len(train_loader)) as bar:
                bar.advance(train_loader.skip_batches)
                for step, (x, y) in enumerate(train_loader, train_loader.skip_batches + 1):
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    if on_batch is not None:
                        on_batch(epoch, train_loader.last_index)
                    if train_step is not None:
                        logits, losses = train_step(x, y, optimizer)
                    else:
                        logits, losses = task.forward_train(x, y)
                    loss = sum(losses.values())
                    if not torch.isfinite(loss):
                        kept = (f"; the last good checkpoint (end of epoch {epoch - 1}) is kept at {checkpoint.path}"
                                if checkpoint is not None and checkpoint.path.is_file() else "")
                        raise CompressorError(f"{stage}: loss became non-finite ({float(loss)}) at epoch {epoch} "
                                              f"step {step}; lower --lr (now {cfg.lr}){kept}")
                    if train_step is None:
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
                    scheduler.step()
                    if after_step is not None:
                        after_step()
                    n = len(y)
                    seen += n
                    correct += int((logits.detach().argmax(1) == y).sum())
                    for k, v in losses.items():
                        sums[k] = sums.get(k, 0.0) + float(v.detach()) * n
                    bar.advance(1, f"loss {float(loss.detach()):.4f}")
                    if stop.received:
                        _stop(stop.received, checkpoint, snapshot(epoch, step, sums, correct, seen), stage, epoch, step)
            train_loader.skip_batches = 0
            val_logits, val_labels = predict(model, val_loader, device)
            val_acc = accuracy(val_logits, val_labels)
            row = {"epoch": epoch, "train_loss": sum(sums.values()) / max(seen, 1),
                   **{k: v / max(seen, 1) for k, v in sums.items()},
                   "train_accuracy": correct / max(seen, 1), "val_accuracy": val_acc,
                   **({"val_agreement": float((val_logits.argmax(1) == val_reference).float().mean())}
                      if val_reference is not None else {}),
                   "lr": optimizer.param_groups[0]["lr"], "epoch_time_s": round(time.time() - t0, 2),
                   "images_per_s": round(seen / max(time.time() - t0, 1e-9), 1)}
            result.history.append(row)
            log(f"{desc} epoch {epoch}/{cfg.epochs}: loss {row['train_loss']:.4f}  "
                f"train acc {row['train_accuracy']:.4f}  val acc {val_acc:.4f}  ({row['images_per_s']:.0f} img/s)")
            if best_state is None or val_acc > result.best_val_accuracy:
                result.best_val_accuracy, result.best_epoch = val_acc, epoch
                best_state = copy.deepcopy(model.state_dict())
            if checkpoint is not None:
                checkpoint.save(snapshot(epoch + 1, 0, {}, 0, 0))
            if stop.received:
                _stop(stop.received, checkpoint, None, stage, epoch + 1, 0)
    result.last_state = copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    result.wall_time_s = round(time.time() - t_start, 2)
    model.eval()
    return result


def _stop(signame: str, checkpoint: FitCheckpoint | None, state: dict | None, stage: str, epoch: int,
          step: int) -> None:
    """Save where training stands (unless an epoch-end checkpoint already did) and stop."""
    if checkpoint is None:
        raise Interrupted(f"{stage}: stopped by {signame} at epoch {epoch} step {step} (no checkpoint kept)", signame)
    if state is not None:
        checkpoint.save(state)
    raise Interrupted(f"{stage}: stopped by {signame} at epoch {epoch} step {step}; checkpoint saved to "
                      f"{checkpoint.path}; rerun the same command with --resume to continue", signame)
