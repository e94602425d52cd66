"""distill: train a student from a teacher's knowledge (offline, online or self-distillation)."""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from pathlib import Path

from compressor import CompressorError
from compressor.artifacts import CONTROL_FILE, ArtifactWriter, base_metrics, load_artifact
from compressor.console import log
from compressor.distill import build_distiller, check_scheme, get_method
from compressor.distill.l2tww import L2TWW
from compressor.distill.online import OnlineConfig, train_online
from compressor.distill.self_distill import SelfDistiller
from compressor.models import count_params, create_model, stage_layers
from compressor.checkpoint import Checkpoints
from compressor.stages.common import DataOptions, check_fraction, check_input_fits, make_spec, test_logits
from compressor.stages.select import read_channels
from compressor.training import (Supervised, TrainConfig, accuracy, fit, peak_memory_mb, predict, resolve_device,
                                 seed_everything)


def distill(*, teacher: str | Path | None, student: str, data: DataOptions, out: str | Path, method: str = "kd",
            scheme: str = "offline", temperature: float = 4.0, alpha: float = 0.5, beta: float | None = None,
            channels: str | None = None, layers: str | None = None, pairs: str = "matched", hint_epochs: int = 1,
            online: OnlineConfig | None = None, control: bool = False, train: TrainConfig | None = None,
            cache_teacher: bool = False, cache_dir: str | Path | None = None, resume: bool = False,
            device: str = "auto") -> dict:
    """Distill `teacher` (an artifact dir) into a fresh `student`; write the student's artifact.

    Args:
        method: kd, mse, fitnet, at, rkd, vid (see compressor.distill); offline scheme only, the
            online and self schemes use kd.
        scheme: offline (frozen teacher), online (teacher trains too, from a stream of chunks:
            see `online`), self (the student teaches its own auxiliary heads; `teacher` optional,
            used only for the comparison metrics).
        beta: the method's feature-loss weight (at: 1000; vid: task weight 0.5) when None.
        channels: a select artifact; feature methods see only the teacher channels it kept.
        layers: explicit 'teacher_layer:student_layer,...' pairs for feature methods
            (default: each stage's output before a downsampling, paired by `pairs`).
        pairs: matched (stage by stage) or all (every teacher layer with every student layer).
        hint_epochs: fitnet's stage one (hint loss only, up to the guided layer) before kd.
        control: also train the same student alone (alpha = 1, same seed and budget) and
            report its accuracy as `control_accuracy`: the number distillation has to beat. Its
            weights are kept as control.safetensors (for `compress report`).
        cache_teacher: offline only: store the teacher's outputs per (epoch, sample) under
            `cache_dir` (default: the directory holding `out`, i.e. the run directory) and reuse
            them in later runs with the same teacher, data and seed (see compressor.distill.cache).
        resume: continue an interrupted run of the same command from its checkpoint (offline and
            self schemes; see compressor.checkpoint).
    """
    started = time.time()
    train = train or TrainConfig(epochs=1)
    train.validate()
    get_method(method)
    check_scheme(scheme)
    check_fraction("--alpha", alpha)
    if not temperature > 0:
        raise CompressorError(f"--temperature must be positive, got {temperature}")
    if hint_epochs < 0:
        raise CompressorError(f"--hint-epochs must be 0 or more, got {hint_epochs}")
    if scheme != "offline" and method != "kd":
        raise CompressorError(f"scheme '{scheme}' distills with kd; --method {method} works with --scheme offline")
    if teacher is None and scheme != "self":
        raise CompressorError(f"scheme '{scheme}' needs --teacher (only --scheme self trains without one)")
    if cache_teacher and scheme != "offline":
        raise CompressorError(f"--cache-teacher works with --scheme offline only: the {scheme} scheme's teacher "
                              "changes during training (or is absent), so its outputs cannot be reused")
    if resume and scheme == "online":
        raise CompressorError("--resume is not supported for --scheme online (its teacher and student train over "
                              "a stream of chunks); rerun it from the start")
    kept = read_channels(channels) if channels is not None else None
    dev = resolve_device(device)
    t_art = load_artifact(teacher) if teacher is not None else None
    bundle = data.load(t_art.spec if t_art else None)
    labels = bundle.test.labels
    t_pred = val_ref = cache = None
    if cache_teacher:
        from compressor.distill.cache import TeacherCache, cache_key

        root = Path(cache_dir) if cache_dir is not None else Path(out).expanduser().absolute().parent / "cache"
        cache = TeacherCache(root / "teacher", cache_key(t_art.path, bundle.identity, train.seed, []),
                             len(bundle.train))
    if t_art is not None:
        t_art.model.to(dev)

        def teacher_split(split: str):
            def compute():
                return predict(t_art.model, bundle.loader(split, 512), dev)[0]
            return cache.split_logits(split, compute) if cache is not None else compute()

        t_pred = teacher_split("test").argmax(1)
        if scheme == "offline":
            val_ref = teacher_split("val").argmax(1)
    ckpt = Checkpoints(out, "distill", resume)
    fingerprint = {"teacher": str(Path(teacher).absolute()) if teacher else None, "student": student,
                   "method": method, "scheme": scheme, "temperature": temperature, "alpha": alpha, "beta": beta,
                   "channels": channels, "layers": layers, "pairs": pairs, "hint_epochs": hint_epochs,
                   "train": vars(train), "data": bundle.identity}
    with ArtifactWriter(out) as writer:
        def build():
            seed_everything(train.seed)
            return create_model(student, num_classes=bundle.num_classes, in_chans=bundle.input_shape[0])

        net = build()
        check_input_fits(net, bundle, student)
        log(f"distill: {_describe(t_art, t_pred, labels)} -> {student} ({count_params(net):,} params), "
            f"scheme {scheme}, method {method}, T={temperature}, alpha={alpha}")
        extra: dict = {}
        if scheme == "online":
            history = train_online(net, t_art.model, bundle, train, replace(online or OnlineConfig(),
                                   temperature=temperature, alpha=alpha), dev)
            t_logits, _ = test_logits(t_art.model, bundle, dev)  # the teacher has learned too
            t_pred = t_logits.argmax(1)
            extra["chunks"] = history
            extra["val_accuracy"] = history[-1]["student_val_accuracy"] if history else None
        else:
            if scheme == "self":
                task = SelfDistiller(net, stages=stage_layers(net), input_shape=bundle.input_shape,
                                     num_classes=bundle.num_classes, temperature=temperature, alpha=alpha)
            else:
                task = build_distiller(method, net, t_art.model, input_shape=bundle.input_shape,
                                       temperature=temperature, alpha=alpha, beta=beta, layers=layers, pairs=pairs,
                                       channels=kept)
            if getattr(task, "pairs", None):
                log(f"distill: layer pairs (teacher, student): {task.pairs}")
            if cache is not None:
                layers_key = task.teacher_layers()
                if layers_key:  # feature methods store their layers too: a cache of their own
                    cache = TeacherCache(cache.dir.parent, cache_key(t_art.path, bundle.identity, train.seed,
                                                                     layers_key), len(bundle.train))
                task.cache = cache
            try:
                if method == "fitnet" and hint_epochs:
                    fit(task, bundle, replace(train, epochs=hint_epochs), device=dev, desc="distill[fitnet hints]",
                        stage="distill", val_reference=val_ref, checkpoint=ckpt.fit("hints", fingerprint))
                    task.phase = "kd"
                if isinstance(task, L2TWW):  # bilevel steps; the meta-networks have their own optimizer
                    result = fit(task, bundle, train, device=dev, desc="distill[l2tww]", stage="distill",
                                 params=task.student_parameters(), train_step=task.train_step, val_reference=val_ref,
                                 checkpoint=ckpt.fit("main", fingerprint))
                    extra["cost"] = {"seconds_per_step": round(statistics.median(task.step_times), 4),
                                     "steps": len(task.step_times), "peak_memory_mb": peak_memory_mb(dev)}
                    log(f"distill[l2tww]: {extra['cost']['seconds_per_step'] * 1000:.0f} ms per step, "
                        f"peak memory {extra['cost']['peak_memory_mb']:.0f} MB")
                else:
                    result = fit(task, bundle, train, device=dev, desc=f"distill[{method}]", stage="distill",
                                 val_reference=val_ref, checkpoint=ckpt.fit("main", fingerprint))
            finally:
                task.close()
            extra.update({"val_accuracy": result.best_val_accuracy, "best_epoch": result.best_epoch,
                          "history": result.history})
            if cache is not None:
                extra["teacher_cache"] = {"dir": str(cache.dir), "hits": cache.hits, "misses": cache.misses}
                log(f"distill: teacher cache {cache.dir}: {cache.hits} batches read, {cache.misses} computed")
        s_logits, _ = test_logits(net, bundle, dev)
        acc = accuracy(s_logits, labels)
        metrics = {"accuracy": acc, "params": count_params(net)}
        if t_pred is not None:
            metrics.update({"teacher_accuracy": float((t_pred == labels).float().mean()),
                            "agreement": float((s_logits.argmax(1) == t_pred).float().mean()),
                            "teacher_params": count_params(t_art.model)})
        metrics.update(extra)
        if control:
            alone = build()
            res_alone = fit(Supervised(alone), bundle, train, device=dev, desc="control (alpha=1)", stage="distill",
                            val_reference=val_ref, checkpoint=ckpt.fit("control", fingerprint))
            writer.save_weights(alone, CONTROL_FILE)
            c_logits, _ = test_logits(alone, bundle, dev)
            metrics.update({"control_accuracy": accuracy(c_logits, labels), "control_history": res_alone.history})
            if t_pred is not None:
                metrics["control_agreement"] = float((c_logits.argmax(1) == t_pred).float().mean())
            log(f"distill: student alone (alpha=1) test accuracy {metrics['control_accuracy']:.4f}")
        settings = {"teacher": str(Path(teacher).absolute()) if teacher else None, "student": student,
                    "method": method, "scheme": scheme, "temperature": temperature, "alpha": alpha, "beta": beta,
                    "channels": channels, "layers": layers, "pairs": pairs, "hint_epochs": hint_epochs,
                    "online": vars(online) if online and scheme == "online" else None, "control": control,
                    "cache_teacher": cache_teacher,
                    **vars(train)}
        writer.save_model(net, make_spec(student, bundle, stage="distill", settings=settings))
        metrics.update(base_metrics(train.seed, started))
        writer.commit(metrics)
    ckpt.clear()
    log(f"distill: test accuracy {acc:.4f}" + (f", agreement {metrics['agreement']:.4f}" if t_pred is not None else "")
        + f" -> {Path(out)}")
    return metrics


def _describe(t_art, t_pred, labels) -> str:
    if t_art is None:
        return "no teacher (self-distillation)"
    acc = float((t_pred == labels).float().mean())
    return f"{t_art.spec['architecture']} ({count_params(t_art.model):,} params, test acc {acc:.4f})"
