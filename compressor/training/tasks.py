"""What the loop trains and how a model is evaluated: a *task* is an nn.Module with
`forward_train(x, y) -> (logits, {name: loss})` and a `model` attribute (what is evaluated and
saved); `Supervised` is the plain one, each distillation method another. Devices, optimizers,
predictions and accuracy."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from compressor import CompressorError, distributed
from compressor.data import Batches, BatchLoader
from compressor.precision import cross_entropy


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise CompressorError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    if device not in ("cpu", "cuda"):
        raise CompressorError(f"--device must be auto, cpu or cuda, got '{device}'")
    return torch.device(device)


def process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc), or None where that cannot be read."""
    try:
        start_ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        boot = next(int(ln.split()[1]) for ln in open("/proc/stat") if ln.startswith("btime"))
        return time.time() - (boot + start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def peak_memory_mb(device: torch.device | str = "cpu") -> float:
    """Peak memory of this process: CUDA allocations on a GPU, resident set size on the CPU."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Task(nn.Module):
    """What the training loop trains: `forward_train(x, y) -> (logits, {name: loss})` and a `model`
    attribute (what is evaluated and saved). A task may also define its phases, what the optimizer
    updates, a custom step and what it cost (see `compressor.distill.base.Distiller`)."""

    method_name: str | None = None
    train_step = None  # or a method train_step(x, y, optimizer) -> (logits, {name: loss tensor})

    def phases(self, epochs: int) -> list[tuple[str, int]]:
        return [("main", epochs)]

    def begin_phase(self, tag: str) -> None:
        pass

    def trainable_parameters(self) -> list[nn.Parameter] | None:
        return None  # every parameter of the task that requires grad

    def cost(self, device) -> dict:
        return {}


class Supervised(Task):
    """The plain task: cross-entropy on the hard labels."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward_train(self, x, y):
        logits = self.model(x)
        return logits, {"loss_ce": cross_entropy(logits, y)}


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_accuracy: float = 0.0
    wall_time_s: float = 0.0
    last_state: dict | None = None  # the last epoch's weights, where they are not the best epoch's


def make_optimizer(params, cfg) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)


@torch.no_grad()
def predict(model: nn.Module, loader: BatchLoader, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels for every sample of a (non-shuffled) loader.

    Under torchrun each process runs its share of every batch and the logits are gathered, so every
    process returns the whole split."""
    shard = (distributed.active() and isinstance(loader, Batches) and not loader.shuffle and loader.world == 1
             and min(loader.num_samples, loader.batch_size) >= distributed.world_size())  # a share for every process
    if shard:
        loader.rank, loader.world = distributed.rank(), distributed.world_size()
    was_training = model.training
    model.eval()
    outs, labels, index = [], [], []
    try:
        for x, y in loader:
            outs.append(model(x.to(device)).float().cpu())
            labels.append(y)
            if shard:
                index.append(loader.last_index)
    finally:
        model.train(was_training)
        if shard:
            loader.rank, loader.world = 0, 1
    if not shard:
        return torch.cat(outs), torch.cat(labels)
    logits, labels = distributed.gather_rows([torch.cat(outs), torch.cat(labels)], torch.cat(index),
                                             loader.num_samples)
    return logits, labels


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean()) if len(labels) else 0.0
