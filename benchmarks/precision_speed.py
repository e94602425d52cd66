"""Training throughput by precision: fp32 against bf16-mixed + channels-last (and any other mix).

    python benchmarks/precision_speed.py --device cuda                     # resnet50 teach + distill steps at 224
    python benchmarks/precision_speed.py --device cpu --image-size 64 --batch-size 16 --steps 3   # a smoke run

Times the training step the stages run (`compressor.training.Trainer.step`: forward under
`compressor.precision.autocast`, float32 losses, gradient scaler for 16-mixed, SGD) on random
inputs, so the figure is the model's compute, not the data loader: a `teach` step of the teacher
(default resnet50) and an offline `distill` step (kd, the frozen teacher's forward plus the
student's, default resnet18). Reports images/s per setting and the speed-up over the first setting
(fp32 by default); name the
GPU beside any figure you quote (printed in the first line).
"""

from __future__ import annotations

import argparse
import time

import torch


def settings(spec: str) -> list[tuple[str, bool]]:
    out = []
    for item in spec.split(","):
        precision, _, layout = item.partition("+")
        out.append((precision, layout == "cl"))
    return out


def images_per_s(task, optimizer, x, y, precision: str, channels_last: bool, steps: int, warmup: int) -> float:
    from compressor.precision import autocast, grad_scaler

    device = x.device
    scaler = grad_scaler(precision, device)
    if channels_last:
        task.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    task.train()

    def step():
        with autocast(precision, device):
            _, losses = task.forward_train(x, y)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * len(x) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="resnet50")
    ap.add_argument("--student", default="resnet18")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--settings", default="32,bf16-mixed,bf16-mixed+cl,16-mixed+cl",
                    help="comma-separated PRECISION[+cl] (cl: channels-last)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    from compressor.distill import build_distiller
    from compressor.models import create_model
    from compressor.training import Supervised

    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; batch {args.batch_size}, {args.image_size} px")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=g).to(device)
    y = torch.randint(0, args.classes, (args.batch_size,), generator=g).to(device)
    first = settings(args.settings)[0]
    first = first[0] + (" + channels-last" if first[1] else "")
    for kind in ("teach", "distill"):
        base = None
        for precision, cl in settings(args.settings):
            torch.manual_seed(0)
            teacher = create_model(args.teacher, num_classes=args.classes, in_chans=3)
            if kind == "teach":
                task = Supervised(teacher)
            else:
                student = create_model(args.student, num_classes=args.classes, in_chans=3)
                task = build_distiller("kd", student, teacher, input_shape=[3, args.image_size, args.image_size])
            task.to(device)
            opt = torch.optim.SGD([p for p in task.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
            rate = images_per_s(task, opt, x, y, precision, cl, args.steps, args.warmup)
            base = base or rate
            label = precision + (" + channels-last" if cl else "")
            print(f"{kind:8s} {label:28s} {rate:9.1f} images/s  {rate / base:5.2f}x {first}", flush=True)


if __name__ == "__main__":
    main()
