from typing import Annotated, Optional

import typer

from compressor.cli.common import Shared, command, show
from compressor.cli.options import DataOpt, EpochsOpt, Method, OutOpt, PairMode, Scheme
from compressor.distill.online import OnlineConfig
from compressor.stages import distill as run_distill


@command("data", "train", "runtime")
def distill(
    student: Annotated[str, typer.Option("--student", help="Student model: convtiny, convverytiny or any timm name.")],
    data: DataOpt,
    out: OutOpt,
    teacher: Annotated[Optional[str], typer.Option("--teacher", help="Artifact directory of the teacher (from teach); optional with --scheme self.")] = None,
    method: Annotated[Method, typer.Option("--method", help="Knowledge type: kd (Hinton), mse, fitnet, at, rkd, vid, l2tww.")] = Method("kd"),
    scheme: Annotated[Scheme, typer.Option("--scheme", help="offline (frozen teacher), online, self.")] = Scheme("offline"),
    temperature: Annotated[float, typer.Option("--temperature", "-T", help="Softmax temperature T for kd (loss scaled by T^2).")] = 4.0,
    alpha: Annotated[float, typer.Option("--alpha", help="Weight of the hard-label loss; 1 - alpha goes to the teacher (alpha = 1: no teacher).")] = 0.5,
    beta: Annotated[Optional[float], typer.Option("--beta", help="Feature-loss weight: at 1000 (as the original code), vid the task weight in [0, 1] (0.5).")] = None,
    channels: Annotated[Optional[str], typer.Option("--channels", help="Select artifact: feature methods see only the teacher channels it kept.")] = None,
    layers: Annotated[Optional[str], typer.Option("--layers", help="Feature methods: explicit TEACHER:STUDENT layer pairs, comma-separated (default: stage outputs before each downsampling).")] = None,
    pairs: Annotated[PairMode, typer.Option("--pairs", help="How stage layers pair: matched (stage by stage) or all (every teacher layer with every student layer; vid).")] = PairMode("matched"),
    hint_epochs: Annotated[int, typer.Option("--hint-epochs", help="fitnet: epochs of stage one (hint loss only, up to the guided layer) before --epochs of kd.")] = 1,
    control: Annotated[bool, typer.Option("--control", help="Also train the student alone (alpha = 1, same budget and seed) and report control_accuracy.")] = False,
    chunk_size: Annotated[int, typer.Option("--chunk-size", help="online: images per chunk of the stream.")] = 1800,
    buffer_chunks: Annotated[int, typer.Option("--buffer-chunks", help="online: the sliding buffer holds the last N chunks.")] = 5,
    epochs_per_buffer: Annotated[int, typer.Option("--epochs-per-buffer", help="online: epochs over each buffer (the student's last at lr/10).")] = 2,
    distill_after: Annotated[int, typer.Option("--distill-after", help="online: chunks the teacher sees before distillation switches on.")] = 5,
    trainable: Annotated[Optional[str], typer.Option("--trainable", help="online: regex of teacher parameters that train (default: all).")] = None,
    teacher_lr: Annotated[float, typer.Option("--teacher-lr", help="online: the teacher's Adam learning rate.")] = 1e-3,
    cache_teacher: Annotated[bool, typer.Option("--cache-teacher/--no-cache-teacher", help="offline: store the frozen teacher's outputs per (epoch, sample) and reuse them in later runs with the same teacher, data and seed.")] = False,
    cache_dir: Annotated[Optional[str], typer.Option("--cache-dir", help="Where the teacher cache lives (default: the directory holding --out, i.e. the run directory, /cache).")] = None,
    epochs: EpochsOpt = 5,
    *,
    shared: Shared,
) -> None:
    """Train a student from a teacher's knowledge; reports accuracy, agreement and teacher accuracy.

    Methods (offline): kd, mse, fitnet, at, rkd, vid. Schemes: offline (frozen teacher), online
    (teacher and student train together over a stream of chunks), self (auxiliary heads on the
    student learn from its own output; dropped at export).
    """
    metrics = run_distill(teacher=teacher, student=student, data=shared.data(data), out=out, method=method.value,
                          scheme=scheme.value, temperature=temperature, alpha=alpha, beta=beta, channels=channels,
                          layers=layers, pairs=pairs.value, hint_epochs=hint_epochs, control=control,
                          cache_teacher=cache_teacher, cache_dir=cache_dir, resume=shared.resume,
                          online=OnlineConfig(chunk_size=chunk_size, buffer_chunks=buffer_chunks,
                                              epochs_per_buffer=epochs_per_buffer, distill_after=distill_after,
                                              trainable=trainable, teacher_lr=teacher_lr), train=shared.train(epochs), device=shared.device_name)
    show(metrics, shared.json_, f"distill -> {out}")
