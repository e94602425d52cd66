"""distill: train a student from a teacher's knowledge."""

from __future__ import annotations

import time
from pathlib import Path

from compressor import CompressorError
from compressor.artifacts import ArtifactWriter, base_metrics, load_artifact
from compressor.console import log
from compressor.distill import check_scheme, get_method
from compressor.models import count_params, create_model
from compressor.stages.common import DataOptions, check_fraction, make_spec, test_logits
from compressor.training import Supervised, TrainConfig, accuracy, fit, resolve_device, seed_everything


def distill(*, teacher: str | Path, student: str, data: DataOptions, out: str | Path, method: str = "kd",
            scheme: str = "offline", temperature: float = 4.0, alpha: float = 0.5, channels: str | None = None,
            control: bool = False, train: TrainConfig | None = None, device: str = "auto") -> dict:
    """Distill `teacher` (an artifact dir) into a fresh `student`; write the student's artifact.

    With `control`, the same student is also trained alone (alpha = 1, same seed and budget) and
    its accuracy is reported as `control_accuracy`: the number distillation has to beat.
    """
    started = time.time()
    train = train or TrainConfig(epochs=1)
    train.validate()
    method_cls = get_method(method)
    check_scheme(scheme)
    check_fraction("--alpha", alpha)
    if not temperature > 0:
        raise CompressorError(f"--temperature must be positive, got {temperature}")
    if channels is not None:
        from compressor.stages.select import read_channels

        read_channels(channels)  # validated now; feature methods use it
    dev = resolve_device(device)
    t_art = load_artifact(teacher)
    bundle = data.load(t_art.spec)
    t_logits, labels = test_logits(t_art.model.to(dev), bundle, dev)
    teacher_acc = accuracy(t_logits, labels)
    t_pred = t_logits.argmax(1)
    with ArtifactWriter(out) as writer:
        def build():
            seed_everything(train.seed)
            return create_model(student, num_classes=bundle.num_classes, in_chans=bundle.input_shape[0])

        net = build()
        log(f"distill: {t_art.spec['architecture']} ({count_params(t_art.model):,} params, test acc "
            f"{teacher_acc:.4f}) -> {student} ({count_params(net):,} params), method {method}, T={temperature}, "
            f"alpha={alpha}")
        task = method_cls(net, t_art.model, temperature=temperature, alpha=alpha)
        result = fit(task, bundle, train, device=dev, desc=f"distill[{method}]", stage="distill")
        s_logits, _ = test_logits(net, bundle, dev)
        acc = accuracy(s_logits, labels)
        metrics = {"accuracy": acc, "params": count_params(net), "teacher_accuracy": teacher_acc,
                   "agreement": float((s_logits.argmax(1) == t_pred).float().mean()),
                   "teacher_params": count_params(t_art.model), "val_accuracy": result.best_val_accuracy,
                   "best_epoch": result.best_epoch, "history": result.history}
        if control:
            alone = build()
            res_alone = fit(Supervised(alone), bundle, train, device=dev, desc="control (alpha=1)", stage="distill")
            c_logits, _ = test_logits(alone, bundle, dev)
            metrics.update({"control_accuracy": accuracy(c_logits, labels),
                            "control_agreement": float((c_logits.argmax(1) == t_pred).float().mean()),
                            "control_history": res_alone.history})
            log(f"distill: student alone (alpha=1) test accuracy {metrics['control_accuracy']:.4f}")
        settings = {"teacher": str(Path(teacher).absolute()), "student": student, "method": method,
                    "scheme": scheme, "temperature": temperature, "alpha": alpha, "channels": channels,
                    "control": control, **vars(train)}
        writer.save_model(net, make_spec(student, bundle, stage="distill", settings=settings))
        metrics.update(base_metrics(train.seed, started))
        writer.commit(metrics)
    log(f"distill: test accuracy {acc:.4f}, agreement {metrics['agreement']:.4f} -> {Path(out)}")
    return metrics
