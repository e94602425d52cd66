"""The one training loop every stage uses: optimizer, cosine schedule, per-epoch validation,
best and last weights, progress, seeding, and a stop on non-finite loss.

What is trained is a *task*: an nn.Module with `forward_train(x, y) -> (logits, {name: loss})`
and a `model` attribute (what is evaluated and saved). The loop sums the named losses and logs
them; it never branches on the method.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from compressor import CompressorError, distributed
from compressor.console import log, progress
from compressor.data import DataBundle
from compressor.data.seeding import MIX_SALT, mix, sample_generators, seed_everything
from compressor.precision import autocast, grad_scaler
from compressor.training.checkpoint import FitCheckpoint, Interrupted, StopSignals, rng_state, set_rng_state
from compressor.training.tasks import FitResult, Task, accuracy, make_optimizer, predict, process_age_s
from compressor.training.tracking import open_log


def train_task(task: Task, data: DataBundle, cfg, *, device, stage: str, desc: str | None = None,
               loop: str | None = None, checkpoints=None, fingerprint: dict | None = None, val_reference: torch.Tensor | None = None,
               after_step: Callable[[], None] | None = None) -> FitResult:
    """Train any task through all its phases: the one function teach, distill and prune call.

    Each phase (fitnet: hints, then kd) is a `fit` with its own checkpoint tag; the task says what
    the optimizer updates and whether it has a custom step, so a method behaves the same in every
    stage. `cfg` is a stage config with the `TrainConfig` fields; `loop` names the checkpoints of a
    second training loop of the same stage (distill's control).
    """
    result = FitResult()
    for tag, epochs in task.phases(cfg.epochs):
        task.begin_phase(tag)
        name = desc or stage + (f"[{task.method_name}]" if task.method_name else "")
        result = fit(task, data, cfg if epochs == cfg.epochs else cfg.model_copy(update={"epochs": epochs}),
                     device=device, desc=name if tag == "main" else f"{name} {tag}", stage=stage,
                     params=task.trainable_parameters(), train_step=task.train_step, after_step=after_step,
                     val_reference=val_reference, keep_best=tag == "main",
                     checkpoint=(checkpoints.fit(tag if loop is None else loop if tag == "main" else f"{loop}-{tag}",
                                                 fingerprint or {}) if checkpoints is not None else None))
    return result


@dataclass
class FitOptions:
    """How one training loop runs, besides the task, the data and the config (`fit`'s keywords).

    desc, stage: the progress line's name and the stage it belongs to (checkpoints, errors).
    params: what the optimizer updates (default: every parameter of the task that requires grad).
    after_step: called after each optimizer step (e.g. to re-apply pruning masks); if it has
        state_dict/load_state_dict, its state is checkpointed too.
    train_step: replaces the default step (for methods with several updates per batch); called as
        train_step(x, y, optimizer) -> (logits, {name: loss tensor}).
    val_reference: the teacher's predicted class per validation sample; each epoch then also
        records `val_agreement` (accuracy on the teacher's labels: the "soft" accuracy).
    checkpoint: where to save resumable state at every epoch end and when SIGINT/SIGTERM stops
        training after the current step (and to resume from, see compressor.training.checkpoint).
    keep_best: leave the best epoch's weights (by validation accuracy); False leaves the last
        epoch's (a preparatory phase such as fitnet's hints, whose loss is not the task's).
    """

    desc: str = "train"
    stage: str = "train"
    params: list[nn.Parameter] | None = None
    after_step: Callable[[], None] | None = None
    train_step: Callable | None = None
    val_reference: torch.Tensor | None = None
    checkpoint: FitCheckpoint | None = None
    keep_best: bool = True


def fit(task: nn.Module, data: DataBundle, cfg, *, device: torch.device | str = "cpu", **options) -> FitResult:
    """Train `task` for cfg.epochs, validating each epoch; leave the best weights in `task.model`.

    `task`: a module with forward_train(x, y) -> (logits, {name: loss}) and a `model` attribute;
    `cfg`: anything with the `compressor.config.TrainConfig` fields (epochs, lr, batch_size, ...);
    `options`: the `FitOptions` fields. A task with an `on_batch(epoch, index)` method is told which
    samples each batch holds.
    """
    return Trainer(task, data, cfg, device=device, options=FitOptions(**options)).run()


class Trainer:
    """One training loop: optimizer, cosine schedule, epochs of steps, validation, best weights,
    checkpoints and resume. Built and run by `fit`."""

    def __init__(self, task, data, cfg, *, device, options: FitOptions) -> None:
        seed_everything(cfg.seed)
        self.device = torch.device(device)
        task.to(self.device)
        self.task, self.model, self.cfg, self.desc, self.stage = task, task.model, cfg, options.desc, options.stage
        stage, after_step, train_step = options.stage, options.after_step, options.train_step
        explicit_params = options.params is not None
        params = options.params if explicit_params else [p for p in task.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(params, cfg)
        self.on_batch = getattr(task, "on_batch", None)
        self.mix = batch_mixer(cfg, data.num_classes)
        self.train_loader = data.loader("train", cfg.batch_size, train=True, seed=cfg.seed, shard=True)
        self.val_loader = data.loader("val", 512)
        steps = max(1, cfg.epochs * len(self.train_loader))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
        self.after_step, self.train_step = after_step, train_step
        self.val_reference, self.checkpoint = options.val_reference, options.checkpoint
        self.result, self.best_state = FitResult(), None
        self.keep_best = options.keep_best  # False: a preparatory phase, whose last epoch is what the next one starts from
        self.log = open_log(cfg, options.desc)
        self.first_step_s: float | None = None  # seconds from the process's start to the end of the first step
        self.start_epoch, self.start_step, self.carry = 1, 0, ({}, 0, 0)
        self.extra_optims = {k: v for k, v in vars(task).items() if isinstance(v, torch.optim.Optimizer)}
        self.stateful_hook = after_step if hasattr(after_step, "state_dict") else None
        self.frozen = "teacher." if getattr(task, "teacher", None) is not None else None  # offline: never changes
        self.scaler = grad_scaler(cfg.precision, self.device)
        if train_step is not None and self.scaler.is_enabled():
            raise CompressorError(f"{stage}: --precision 16-mixed needs a gradient scaler, which "
                                  f"{task.method_name}'s own training step does not use; use bf16-mixed or 32")
        if cfg.channels_last:
            task.to(memory_format=torch.channels_last)
        self.forward = parallel_forward(task, self.device, cfg, explicit_params=explicit_params,
                                        custom_step=train_step is not None, stage=stage)
        if cfg.compile:
            if train_step is not None:
                raise CompressorError(f"{stage}: --compile compiles the standard training step; "
                                      f"{task.method_name} has its own; drop --compile")
            self.forward = torch.compile(self.forward)

    def run(self) -> FitResult:
        t_start = time.time()
        self.restore()
        try:
            with StopSignals() as stop:
                for epoch in range(self.start_epoch, self.cfg.epochs + 1):
                    self.task.train()
                    sums, correct, seen, t0 = self.train_epoch(epoch, stop)
                    self.validate(epoch, sums, correct, seen, t0)
                    if self.checkpoint is not None:
                        self.checkpoint.save(self.snapshot(epoch + 1, 0, {}, 0, 0))
                    if signame := self.stopping(stop):
                        _stop(signame, self.checkpoint, None, self.stage, epoch + 1, 0)
        finally:
            if self.log is not None:
                self.log.close()
        if self.best_state is not None and self.keep_best:
            if self.result.history and self.result.best_epoch != self.result.history[-1]["epoch"]:
                self.result.last_state = copy.deepcopy(self.model.state_dict())
            self.model.load_state_dict(self.best_state)
        self.result.wall_time_s = round(time.time() - t_start, 2)
        self.model.eval()
        return self.result

    def task_state(self) -> dict:
        return {k: v for k, v in self.task.state_dict().items() if self.frozen is None or not k.startswith(self.frozen)}

    def snapshot(self, epoch: int, step: int, sums: dict, correct: int, seen: int) -> dict:
        return {"task": self.task_state(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "extra_optimizers": {k: o.state_dict() for k, o in self.extra_optims.items()},
                "scaler": self.scaler.state_dict(),
                "after_step": self.stateful_hook.state_dict() if self.stateful_hook else None,
                "epoch": epoch, "step": step, "sums": sums, "correct": correct, "seen": seen,
                "history": self.result.history, "best_state": self.best_state, "best_epoch": self.result.best_epoch,
                "best_val_accuracy": self.result.best_val_accuracy, "rng": rng_state()}

    def restore(self) -> None:
        """Continue from the checkpoint when resuming (model, optimizers, schedule, RNG, position)."""
        saved = self.checkpoint.load() if self.checkpoint is not None else None
        if saved is None:
            return
        missing, unexpected = self.task.load_state_dict(saved["task"], strict=False)
        if unexpected or any(self.frozen is None or not k.startswith(self.frozen) for k in missing):
            raise CompressorError(f"checkpoint {self.checkpoint.path} does not match this model; run without --resume")
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        for k, o in self.extra_optims.items():
            o.load_state_dict(saved["extra_optimizers"][k])
        if saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        if self.stateful_hook is not None:
            self.stateful_hook.load_state_dict(saved["after_step"])
        self.result.history, self.best_state = saved["history"], saved["best_state"]
        self.result.best_epoch, self.result.best_val_accuracy = saved["best_epoch"], saved["best_val_accuracy"]
        self.start_epoch, self.start_step = saved["epoch"], saved["step"]
        self.carry = (saved["sums"], saved["correct"], saved["seen"])
        set_rng_state(saved["rng"])
        log(f"{self.desc}: resuming from {self.checkpoint.path} at epoch {self.start_epoch}, step {self.start_step}")

    def train_epoch(self, epoch: int, stop: StopSignals):
        loader = self.train_loader
        loader.set_epoch(epoch)
        first = epoch == self.start_epoch
        loader.skip_batches = self.start_step if first else 0
        sums, correct, seen = (dict(self.carry[0]), self.carry[1], self.carry[2]) if first else ({}, 0, 0)
        t0 = time.time()
        with progress(f"{self.desc} epoch {epoch}/{self.cfg.epochs}", len(loader)) as bar:
            bar.advance(loader.skip_batches)
            for step, (x, y) in enumerate(loader, loader.skip_batches + 1):
                logits, losses, loss = self.step(x, y, epoch, step)
                if self.first_step_s is None:
                    self.first_step_s = process_age_s()
                n = len(y)
                seen += n
                correct += int((logits.detach().argmax(1) == y.to(logits.device)).sum())
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) * n
                bar.advance(1, f"loss {float(loss.detach()):.4f}")
                if signame := self.stopping(stop):
                    _stop(signame, self.checkpoint, self.snapshot(epoch, step, sums, correct, seen), self.stage,
                          epoch, step)
        loader.skip_batches = 0
        return sums, correct, seen, t0

    def stopping(self, stop: StopSignals) -> str | None:
        """The signal that stops training, when one reached this process or, under torchrun, any."""
        if distributed.any_true(stop.received is not None, self.device):
            return stop.received or "SIGTERM"  # another process's (SIGTERM or SIGINT: the same stop)
        return None

    def step(self, x, y, epoch: int, step: int):
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if self.mix is not None:
            x, y = self.mix(x, y, epoch, step)
        if self.cfg.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.on_batch is not None:
            self.on_batch(epoch, self.train_loader.last_index)
        with autocast(self.cfg.precision, self.device):
            if self.train_step is not None:
                logits, losses = self.train_step(x, y, self.optimizer)
            else:
                logits, losses = self.forward(x, y)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            kept = (f"; the last good checkpoint (end of epoch {epoch - 1}) is kept at {self.checkpoint.path}"
                    if self.checkpoint is not None and self.checkpoint.path.is_file() else "")
            raise CompressorError(f"{self.stage}: loss became non-finite ({float(loss)}) at epoch {epoch} "
                                  f"step {step}; lower --lr (now {self.cfg.lr}){kept}")
        if self.train_step is None:
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)  # with the scaler off (32, bf16-mixed): optimizer.step()
            self.scaler.update()
        self.scheduler.step()
        if self.after_step is not None:
            self.after_step()
        return logits, losses, loss

    def validate(self, epoch: int, sums: dict, correct: int, seen: int, t0: float) -> None:
        distributed.broadcast_buffers(self.model)  # every rank evaluates (and keeps) rank 0's statistics
        val_logits, val_labels = predict(self.model, self.val_loader, self.device)
        sums, correct, seen = _global_counts(sums, correct, seen)
        val_acc = accuracy(val_logits, val_labels)
        row = {"epoch": epoch, "train_loss": sum(sums.values()) / max(seen, 1),
               **{k: v / max(seen, 1) for k, v in sums.items()}, **loss_shares(sums),
               "train_accuracy": correct / max(seen, 1), "val_accuracy": val_acc,
               **({"val_agreement": float((val_logits.argmax(1) == self.val_reference).float().mean())}
                  if self.val_reference is not None else {}),
               "lr": self.optimizer.param_groups[0]["lr"], "epoch_time_s": round(time.time() - t0, 2),
               "images_per_s": round(seen / max(time.time() - t0, 1e-9), 1),
               **({"first_step_s": round(self.first_step_s, 2)} if self.first_step_s is not None and
                  not self.result.history else {})}
        self.result.history.append(row)
        if self.log is not None:
            self.log.epoch(row)
        log(f"{self.desc} epoch {epoch}/{self.cfg.epochs}: loss {row['train_loss']:.4f}  "
            f"train acc {row['train_accuracy']:.4f}  val acc {val_acc:.4f}  ({row['images_per_s']:.0f} img/s)")
        if self.best_state is None or val_acc > self.result.best_val_accuracy:
            self.result.best_val_accuracy, self.result.best_epoch = val_acc, epoch
            self.best_state = copy.deepcopy(self.model.state_dict())


def loss_shares(sums: dict) -> dict:
    """Each loss term's share of the epoch's total (of absolute sizes: a Gaussian NLL can be negative),
    as `share_<name>`; with one term there is nothing to share."""
    total = sum(abs(v) for v in sums.values())
    if len(sums) < 2 or total == 0:
        return {}
    return {f"share_{k}": abs(v) / total for k, v in sums.items()}


def batch_mixer(cfg, num_classes: int):
    """Mixup / CutMix / label smoothing of a training batch (timm's), or None when all are off:
    `mix(x, y, epoch, step) -> (x, soft targets)`. The mixing weight and box are drawn from
    generators seeded by (seed, epoch, step), so a run (and its resume) is repeatable. A batch of
    odd size (the last one, maybe) is only label-smoothed: timm mixes a batch with its reverse."""
    mixup, cutmix, smoothing = cfg.mixup, cfg.cutmix, cfg.label_smoothing
    if not (mixup or cutmix or smoothing):
        return None
    from timm.data.mixup import Mixup, mixup_target

    mixer = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=smoothing,
                  num_classes=num_classes) if mixup or cutmix else None

    def mix_batch(x, y, epoch: int, step: int):
        if mixer is None or len(x) % 2:
            return x, mixup_target(y, num_classes, smoothing=smoothing)
        with sample_generators(mix(cfg.seed, epoch, step, MIX_SALT)):
            return mixer(x, y)

    return mix_batch


def _global_counts(sums: dict, correct: int, seen: int) -> tuple[dict, int, int]:
    """Training loss sums and counts over every process's share of the batches."""
    if not distributed.active():
        return sums, correct, seen
    keys = sorted(sums)
    t = distributed.sum_(torch.tensor([sums[k] for k in keys] + [correct, seen], dtype=torch.float64))
    return dict(zip(keys, t[:len(keys)].tolist())), int(t[-2]), int(t[-1])


class _TrainForward(nn.Module):
    """What DistributedDataParallel wraps: the task's training forward, as `forward`."""

    def __init__(self, task: nn.Module) -> None:
        super().__init__()
        self.task = task

    def forward(self, x, y):
        return self.task.forward_train(x, y)


def parallel_forward(task, device: torch.device, cfg, *, explicit_params: bool, custom_step: bool, stage: str):
    """The task's training forward; under torchrun, through DistributedDataParallel (gradients
    averaged over processes), the frozen teacher left out of it."""
    if cfg.sync_batchnorm and not distributed.active():
        raise CompressorError(f"{stage}: --sync-batchnorm synchronises batch norm across torchrun's processes; "
                              "launch with torchrun or drop it")
    if not distributed.active():
        return task.forward_train
    if custom_step:
        raise CompressorError(f"{stage}: {task.method_name}'s own training step runs in one process; "
                              "launch it without torchrun")
    if cfg.sync_batchnorm:
        if device.type != "cuda":
            raise CompressorError(f"{stage}: --sync-batchnorm needs GPUs (PyTorch's SyncBatchNorm has no CPU "
                                  "kernel); drop it on the CPU")
        task.model = nn.SyncBatchNorm.convert_sync_batchnorm(task.model)
    from torch.nn.parallel import DistributedDataParallel as DDP

    wrapped = _TrainForward(task)
    frozen = [n for n, _ in list(wrapped.named_parameters()) + list(wrapped.named_buffers())
              if n.startswith("task.teacher.")]
    DDP._set_params_and_buffers_to_ignore_for_model(wrapped, frozen)
    ddp = DDP(wrapped, device_ids=[device.index] if device.type == "cuda" else None,
              find_unused_parameters=explicit_params)
    return ddp


def _stop(signame: str, checkpoint: FitCheckpoint | None, state: dict | None, stage: str, epoch: int,
          step: int) -> None:
    """Save where training stands (unless an epoch-end checkpoint already did) and stop."""
    if checkpoint is None:
        raise Interrupted(f"{stage}: stopped by {signame} at epoch {epoch} step {step} (no checkpoint kept)", signame)
    if state is not None:
        checkpoint.save(state)
    raise Interrupted(f"{stage}: stopped by {signame} at epoch {epoch} step {step}; checkpoint saved to "
                      f"{checkpoint.path}; rerun the same command with --resume to continue", signame)
