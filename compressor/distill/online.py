"""Online distillation from a stream: teacher and student train together.

As in the study we follow: the training set is cut into chunks; a sliding buffer holds the last
few chunks; both models train several epochs per buffer (the student's last epoch at a tenth of
its learning rate); distillation switches on once the teacher has seen `distill_after` chunks;
only the teacher parameters matching `trainable` train. Accuracy of both models on the validation
split is recorded after every chunk.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from compressor import CompressorError
from compressor.console import log, progress
from compressor.data import DataBundle
from compressor.data.seeding import seed_everything
from compressor.distill.functional import kd_terms
from compressor.models import set_trainable
from compressor.training import accuracy, make_optimizer, predict
from compressor.training.tracking import open_log


def train_online(student: nn.Module, teacher: nn.Module, data: DataBundle, cfg, options: dict,
                 device: torch.device) -> dict:
    """Train both models over the stream (`cfg`: a DistillConfig; `options`: kd's temperature and
    alpha); returns one record per chunk under "chunks" and the student's last validation accuracy."""
    n = len(data.train)
    if cfg.chunk_size > n:
        raise CompressorError(f"--chunk-size must be between 1 and the {n} training images, got {cfg.chunk_size}")
    seed_everything(cfg.seed)
    set_trainable(teacher, cfg.trainable)
    teacher_params = [p for p in teacher.parameters() if p.requires_grad]
    t_opt = torch.optim.Adam(teacher_params, lr=cfg.teacher_lr)
    s_opt = make_optimizer(student.parameters(), cfg)
    student.to(device), teacher.to(device)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))
    chunks = [order[i:i + cfg.chunk_size] for i in range(0, n - cfg.chunk_size + 1, cfg.chunk_size)]
    val = data.loader("val", 512)
    history = []
    logs = open_log(cfg, "distill online")  # --log-dir / --mlflow: one point per chunk
    try:
        for c in range(len(chunks)):
            history.append(_train_chunk(c, chunks, student, teacher, t_opt, s_opt, data, val, cfg, options, device))
            if logs is not None:
                logs.epoch({"epoch": c + 1, **{k: v for k, v in history[-1].items() if k != "chunk"}})
    finally:
        if logs is not None:
            logs.close()
    student.eval(), teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(True)
    return {"chunks": history, "val_accuracy": history[-1]["student_val_accuracy"] if history else None}


def _train_chunk(c: int, chunks, student, teacher, t_opt, s_opt, data, val, cfg, options: dict, device) -> dict:
    """Train both models on the buffer that ends with chunk c; their validation accuracy after it."""
    buffer = torch.cat(chunks[max(0, c - cfg.buffer_chunks + 1):c + 1])
    loader = data.loader("train", cfg.batch_size, train=True, seed=cfg.seed + c, subset=buffer)
    distilling = c >= cfg.distill_after
    s_sum = t_sum = steps = 0
    with progress(f"online chunk {c + 1}/{len(chunks)}", cfg.epochs_per_buffer * len(loader)) as bar:
        for epoch in range(cfg.epochs_per_buffer):
            lr = cfg.lr / 10 if epoch == cfg.epochs_per_buffer - 1 and cfg.epochs_per_buffer > 1 else cfg.lr
            for group in s_opt.param_groups:
                group["lr"] = lr
            loader.set_epoch(epoch)
            student.train(), _train_unfrozen(teacher)
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                t_logits = teacher(x)
                t_loss = F.cross_entropy(t_logits, y)
                t_opt.zero_grad(set_to_none=True)
                t_loss.backward()
                t_opt.step()
                s_logits = student(x)
                if distilling:
                    ce, soft = kd_terms(s_logits, t_logits.detach(), y, options["temperature"], options["alpha"])
                    s_loss = ce + soft
                else:
                    s_loss = F.cross_entropy(s_logits, y)
                if not (torch.isfinite(s_loss) and torch.isfinite(t_loss)):
                    raise CompressorError(f"distill (online): loss became non-finite at chunk {c + 1}; lower --lr")
                s_opt.zero_grad(set_to_none=True)
                s_loss.backward()
                s_opt.step()
                s_sum, t_sum, steps = s_sum + float(s_loss), t_sum + float(t_loss), steps + 1
                bar.advance(1, f"student {float(s_loss):.3f} teacher {float(t_loss):.3f}")
    row = {"chunk": c + 1, "buffer_images": len(buffer), "distilling": distilling,
           "loss_student": s_sum / max(steps, 1), "loss_teacher": t_sum / max(steps, 1),
           "student_val_accuracy": accuracy(*predict(student, val, device)),
           "teacher_val_accuracy": accuracy(*predict(teacher, val, device))}
    log(f"online chunk {c + 1}/{len(chunks)}: student {row['student_val_accuracy']:.4f} teacher "
        f"{row['teacher_val_accuracy']:.4f}{' (distilling)' if distilling else ''}")
    return row


def _train_unfrozen(model: nn.Module) -> None:
    """Train mode, except batch norms whose parameters are frozen: their running stats stay put."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()
