"""distill: train a student from a teacher's knowledge (offline, online or self-distillation)."""

from __future__ import annotations

from pathlib import Path

import torch

from compressor import CompressorError
from compressor.artifacts import CONTROL_FILE, ArtifactWriter, load_artifact
from compressor.config import DistillConfig
from compressor.console import log, warn
from compressor.data.seeding import seed_everything
from compressor.distill import build_distiller, resolve_options
from compressor.distill.cache import TeacherCache, cache_key
from compressor.distill.online import train_online
from compressor.distill.registry import METHOD_OPTIONS
from compressor.distill.self_distill import SelfDistiller
from compressor.models import classifier_name, count_params, create_model, size_kwargs, stage_layers
from compressor.stages.common import (apply_init, check_input_fits, last_epoch_accuracy, load_bundle, load_init,
                                      make_spec, test_logits)
from compressor.stages.runner import StageRun, stage
from compressor.stages.select_stage import read_channels
from compressor.training import Supervised, accuracy, predict, train_task


@stage("distill", DistillConfig, trains=True)
def distill(run: StageRun) -> dict:
    """Train a student from a teacher (an artifact directory); write the student's artifact.

    Schemes: offline (frozen teacher, any method), online (teacher and student train together over
    a stream of chunks, kd), self (the student teaches its own auxiliary heads, kd; `teacher`
    optional, used only for the comparison metrics), born-again (generation after generation of the
    teacher's architecture, each distilled offline from the one before with any method). `control`
    also trains the same student alone (alpha = 1, same seed and budget) and keeps it as
    control.safetensors. `cache_teacher` stores
    the frozen teacher's outputs per (epoch, sample) for later runs (see compressor.distill.cache).
    assistant: the teacher teaches --assistant, which teaches the student. The student starts fresh,
    from timm's pretrained weights (`student_pretrained`) or from a file (`student_init`).
    `omit_classes` leaves classes out of the transfer set; `bias_shift` then restores their share of
    predictions (Hinton et al., 2015, section 3).
    """
    cfg = run.cfg
    options = method_options(cfg)
    kept = read_channels(cfg.channels) if cfg.channels is not None else None
    t_art = load_artifact(cfg.teacher) if cfg.teacher is not None else None
    bundle = load_bundle(cfg, t_art.spec if t_art else None)
    omit_classes(bundle, cfg.omitted())
    cache = _teacher_cache(cfg, t_art, bundle, [])
    t_pred = val_ref = None
    if t_art is not None:
        t_art.model.to(run.device)
        t_pred = _teacher_split(t_art.model, bundle, "test", cache, run.device).argmax(1)
        if cfg.scheme in ("offline", "born-again", "assistant"):
            val_ref = _teacher_split(t_art.model, bundle, "val", cache, run.device).argmax(1)
    arch = student_architecture(cfg, t_art)
    net = _student(arch, cfg.seed, bundle, cfg)
    log(f"distill: {_describe(t_art, t_pred, bundle.test.labels)} -> {arch} ({count_params(net):,} params), "
        f"scheme {cfg.scheme}, method {cfg.method}, " + ", ".join(f"{k}={v}" for k, v in options.items()))
    if cfg.scheme == "online":
        extra = train_online(net, t_art.model, bundle, cfg, options, run.device)
        t_pred = test_logits(t_art.model, bundle, run.device)[0].argmax(1)  # the teacher has learned too
    elif cfg.scheme == "born-again":
        net, extra = _born_again(run, net, t_art, t_pred, val_ref, bundle, kept, options)
    elif cfg.scheme == "assistant":
        extra = _via_assistant(run, net, t_art, t_pred, val_ref, bundle, kept, options)
    else:
        extra = _train_offline(run, net, t_art, bundle, kept, cache, val_ref, options)
    if cfg.bias_shift:
        extra.update(shift_bias(net, bundle, cfg.omitted(), val_ref, run.device))
    metrics = _compare(net, t_art, t_pred, bundle, run.device, omitted=cfg.omitted())
    metrics.update(extra)
    if "accuracy_last_epoch" in metrics and metrics["accuracy_last_epoch"] is None:  # the last epoch was the best
        metrics["accuracy_last_epoch"] = metrics["accuracy"]
    if cfg.control:
        metrics.update(_control(run, arch, bundle, val_ref, t_pred))
        metrics.update(_gain(cfg, options, metrics))
    run.writer.save_model(net, _spec(cfg, arch, bundle, options))
    log(f"distill: test accuracy {metrics['accuracy']:.4f}" +
        (f", agreement {metrics['agreement']:.4f}" if t_pred is not None else "") + f" -> {Path(cfg.out)}")
    return metrics


def method_options(cfg) -> dict:
    """The options the chosen method reads, its defaults filled in; an explicit unused one is an error.

    The online and self schemes distill with kd."""
    given = {k: getattr(cfg, k) for k in METHOD_OPTIONS}
    return resolve_options(cfg.method, given, cfg.model_fields_set)


def student_architecture(cfg, t_art) -> str:
    """--student, or with --scheme born-again and none given, the teacher's architecture."""
    return cfg.student or t_art.spec.architecture


def _student(arch: str, seed: int, bundle, cfg=None) -> torch.nn.Module:
    """A student of `arch`: fresh (seeded), or with `cfg`, started as --student-pretrained or
    --student-init say."""
    seed_everything(seed)
    pretrained = cfg is not None and cfg.student_pretrained
    net = create_model(arch, num_classes=bundle.num_classes, in_chans=bundle.input_shape[0], pretrained=pretrained,
                       **size_kwargs(arch, bundle.image_size))
    check_input_fits(net, bundle, arch)
    if cfg is not None and cfg.student_init:
        fresh = apply_init(net, load_init(cfg.student_init, "--student-init"), cfg.student_init, cfg.reinit_head,
                           flag="--student-init")
        if fresh:
            log(f"distill: --reinit-head: {', '.join(fresh)} start fresh")
    return net


def omit_classes(bundle, omitted: list[int]) -> None:
    """Leave the `omitted` classes' images out of the training split (the transfer set); validation
    and test keep every class. Recorded in the data's identity."""
    if not omitted:
        return
    bad = [c for c in omitted if c >= bundle.num_classes]
    if bad:
        raise CompressorError(f"--omit-classes {','.join(map(str, bad))}: data '{bundle.name}' has classes "
                              f"0-{bundle.num_classes - 1}")
    if len(omitted) == bundle.num_classes:
        raise CompressorError("--omit-classes leaves no class to learn from; omit fewer")
    keep = ~torch.isin(bundle.train.labels, torch.tensor(omitted))
    bundle.train = bundle.train.subset(torch.nonzero(keep).flatten())
    bundle.identity["omit_classes"] = omitted
    names = ", ".join(f"{c} ({bundle.class_names[c]})" for c in omitted)
    log(f"distill: classes {names} left out of the transfer set: {len(bundle.train)} training images remain")


def shift_bias(net, bundle, omitted: list[int], val_ref: torch.Tensor, device) -> dict:
    """Hinton et al. (2015), section 3: raise the omitted classes' logit bias until each gets the share
    of the validation split's predictions that the teacher gives it (bisection per class, a few
    rounds). Returns the shifts and the accuracies before them."""
    head = net.get_submodule(classifier_name(net) or "")
    if not isinstance(getattr(head, "bias", None), torch.Tensor):
        raise CompressorError("--bias-shift needs a classifier with a bias; this student's has none")
    logits = predict(net, bundle.loader("val", 512), device)[0].float()
    target = {c: float((val_ref == c).float().mean()) for c in omitted}
    shift = torch.zeros(logits.shape[1])

    def share(c: int) -> float:
        return float(((logits + shift).argmax(1) == c).float().mean())

    for _ in range(3):  # the classes compete for the same images: settle them together
        for c in omitted:
            lo, hi = 0.0, float(logits.max() - logits.min()) + 1.0
            for _ in range(40):
                shift[c] = (lo + hi) / 2
                lo, hi = (shift[c].item(), hi) if share(c) < target[c] else (lo, shift[c].item())
            shift[c] = hi
    t_logits, labels = test_logits(net, bundle, device)
    before = {"accuracy_before_shift": accuracy(t_logits, labels),
              **_by_class(t_logits, labels, omitted, "_before_shift")}
    with torch.no_grad():
        head.bias += shift.to(head.bias)
    log("distill: --bias-shift: " + ", ".join(f"class {c} +{shift[c]:.3f} (validation share {share(c):.3f}, "
                                               f"teacher's {target[c]:.3f})" for c in omitted))
    return {"bias_shift": {str(c): round(float(shift[c]), 6) for c in omitted}, **before}


def _by_class(logits: torch.Tensor, labels: torch.Tensor, omitted: list[int], suffix: str = "") -> dict:
    """Test accuracy on the omitted classes' images and on the rest."""
    if not omitted:
        return {}
    out = torch.isin(labels, torch.tensor(omitted))
    right = logits.argmax(1) == labels
    return {f"accuracy_omitted{suffix}": float(right[out].float().mean()),
            f"accuracy_rest{suffix}": float(right[~out].float().mean())}


def _spec(cfg, arch: str, bundle, options: dict):
    return make_spec(arch, bundle, stage="distill", kwargs=size_kwargs(arch, bundle.image_size),
                     settings={**cfg.settings(), **options})


GENERATIONS_DIR = "generations"  # born-again: OUT/generations/<k>/ holds generation k's artifact


def _born_again(run: StageRun, net, t_art, t_pred, val_ref, bundle, kept, options: dict):
    """Born-Again Networks (Furlanello et al., 2018): generation 1 is distilled offline from --teacher,
    generation k from generation k - 1, read back from its artifact in OUT/generations/<k - 1>/; each
    student starts fresh (seed + k - 1). Returns the last generation and the per-generation figures
    (with --ensemble, also the accuracy of the generations' averaged probabilities). `t_pred`,
    `val_ref`: --teacher's test and validation predictions; each later teacher is measured as read back."""
    cfg, arch = run.cfg, student_architecture(run.cfg, t_art)
    teacher, t_test, rows, probs, extra = t_art, t_pred, [], [], {}
    for k in range(1, cfg.generations + 1):
        if k > 1:
            net = _student(arch, cfg.seed + k - 1, bundle)
            teacher.model.to(run.device)
            val_ref = _teacher_split(teacher.model, bundle, "val", None, run.device).argmax(1)
            t_test = test_logits(teacher.model, bundle, run.device)[0].argmax(1)
        log(f"distill: born-again generation {k}/{cfg.generations} from {_name(teacher, t_art)}")
        extra = _train_offline(run, net, teacher, bundle, kept if k == 1 else None, None, val_ref, options,
                               loop=f"generation{k}")
        s_logits = test_logits(net, bundle, run.device)[0]
        row = {"generation": k, "teacher": _name(teacher, t_art),
               **_compare(net, teacher, t_test, bundle, run.device, s_logits)}
        probs.append(torch.softmax(s_logits.float(), 1))
        if cfg.ensemble:
            row["ensemble_accuracy"] = accuracy(torch.stack(probs).mean(0), bundle.test.labels)
        rows.append(row)
        log(f"distill: generation {k} test accuracy {row['accuracy']:.4f}" +
            (f", ensemble of generations 1-{k} {row['ensemble_accuracy']:.4f}" if cfg.ensemble else ""))
        gen_dir = run.writer.path(GENERATIONS_DIR) / str(k)
        with ArtifactWriter(gen_dir) as w:
            w.save_model(net, _spec(cfg, arch, bundle, options))
            w.commit({**row, "history": extra.get("history"), "val_accuracy": extra.get("val_accuracy")})
        teacher = load_artifact(gen_dir)  # generation k + 1 reads generation k from its artifact
    extra["generations"] = rows
    if cfg.ensemble:
        extra["ensemble_accuracy"] = rows[-1]["ensemble_accuracy"]
    return net, extra


ASSISTANT_DIR = "assistant"  # --scheme assistant: OUT/assistant/ holds the teacher assistant's artifact


def _via_assistant(run: StageRun, net, t_art, t_pred, val_ref, bundle, kept, options: dict) -> dict:
    """Teacher assistant (Mirzadeh et al., 2020): --teacher teaches a fresh --assistant offline, which
    is written to OUT/assistant/ and read back to teach the student, both with --method. Returns the
    student's training figures and the assistant's (`assistant`)."""
    cfg = run.cfg
    helper = _student(cfg.assistant, cfg.seed, bundle)
    log(f"distill: teacher assistant {cfg.assistant} ({count_params(helper):,} params) from the teacher")
    a_extra = _train_offline(run, helper, t_art, bundle, kept, None, val_ref, options, loop="assistant")
    row = {"architecture": cfg.assistant, **_compare(helper, t_art, t_pred, bundle, run.device, omitted=cfg.omitted())}
    log(f"distill: assistant test accuracy {row['accuracy']:.4f}; now the student from the assistant")
    a_dir = run.writer.path(ASSISTANT_DIR)
    with ArtifactWriter(a_dir) as w:
        w.save_model(helper, _spec(cfg, cfg.assistant, bundle, options))
        w.commit({**row, "history": a_extra.get("history"), "val_accuracy": a_extra.get("val_accuracy")})
    assistant = load_artifact(a_dir)
    assistant.model.to(run.device)
    a_val = _teacher_split(assistant.model, bundle, "val", None, run.device).argmax(1)
    extra = _train_offline(run, net, assistant, bundle, None, None, a_val, options, loop="student")
    return {**extra, "assistant": row}


def _name(teacher, t_art) -> str:
    """'teacher' for --teacher, else the generation's directory relative to the artifact."""
    return "teacher" if teacher is t_art else f"{GENERATIONS_DIR}/{teacher.path.name}"


def _teacher_cache(cfg, t_art, bundle, layers: list[str]):
    if not cfg.cache_teacher:
        return None

    root = Path(cfg.cache_dir) if cfg.cache_dir is not None else Path(cfg.out).expanduser().absolute().parent / "cache"
    return TeacherCache(root / "teacher", cache_key(t_art.path, bundle.identity, cfg.seed, layers), len(bundle.train))


def _teacher_split(teacher, bundle, split: str, cache, device) -> torch.Tensor:
    def compute():
        return predict(teacher, bundle.loader(split, 512), device)[0]

    return cache.split_logits(split, compute) if cache is not None else compute()


def _train_offline(run: StageRun, net, t_art, bundle, kept, cache, val_ref, options: dict,
                   loop: str | None = None) -> dict:
    """The offline and self schemes (and each born-again generation): build the task, train it through
    its phases, report its cost."""
    cfg = run.cfg
    if cfg.scheme == "self":
        task = SelfDistiller(net, stages=stage_layers(net), input_shape=bundle.input_shape,
                             num_classes=bundle.num_classes, temperature=options["temperature"],
                             alpha=options["alpha"])
    else:
        task = build_distiller(cfg.method, net, t_art.model, input_shape=bundle.input_shape, options=options,
                               channels=kept)
    if getattr(task, "pairs", None):
        log(f"distill: layer pairs (teacher, student): {task.pairs}")
    if cache is not None:
        layers_key = task.teacher_layers()
        if layers_key:  # feature methods store their layers too: a cache of their own
            cache = _teacher_cache(cfg, t_art, bundle, layers_key)
        task.cache = cache
    try:
        result = train_task(task, bundle, cfg, device=run.device, stage="distill", checkpoints=run.checkpoints,
                            fingerprint=run.fingerprint(bundle.identity), val_reference=val_ref, loop=loop)
    finally:
        task.close()
    extra = {"val_accuracy": result.best_val_accuracy, "best_epoch": result.best_epoch, "history": result.history,
             "accuracy_last_epoch": last_epoch_accuracy(net, result, bundle, run.device)}
    cost = task.cost(run.device)
    if cost:
        extra["cost"] = cost
        log(f"distill[{cfg.method}]: {cost['seconds_per_step'] * 1000:.0f} ms per step, peak memory "
            f"{cost['peak_memory_mb']:.0f} MB, meta-gradient {cost['meta_gradient']}")
    if cache is not None:
        extra["teacher_cache"] = {"dir": str(cache.dir), "hits": cache.hits, "misses": cache.misses}
        log(f"distill: teacher cache {cache.dir}: {cache.hits} batches read, {cache.misses} computed")
    return extra


def _compare(net, t_art, t_pred, bundle, device, s_logits: torch.Tensor | None = None,
             omitted: list[int] | None = None) -> dict:
    """Test accuracy (and with a teacher, agreement with it; with `omitted` classes, the accuracy on
    them and on the rest); `s_logits`: the student's test logits when already computed."""
    if s_logits is None:
        s_logits, _ = test_logits(net, bundle, device)
    labels = bundle.test.labels
    metrics = {"accuracy": accuracy(s_logits, labels), "params": count_params(net),
               **_by_class(s_logits, labels, omitted or [])}
    if t_pred is not None:
        metrics.update({"teacher_accuracy": float((t_pred == labels).float().mean()),
                        "agreement": float((s_logits.argmax(1) == t_pred).float().mean()),
                        "teacher_params": count_params(t_art.model)})
    return metrics


def _control(run: StageRun, arch: str, bundle, val_ref, t_pred) -> dict:
    """The same student trained alone (alpha = 1), same seed and budget: what distillation must beat."""
    cfg = run.cfg
    alone = _student(arch, cfg.seed, bundle, cfg)
    result = train_task(Supervised(alone), bundle, cfg, device=run.device, stage="distill", desc="control (alpha=1)",
                        loop="control", checkpoints=run.checkpoints, fingerprint=run.fingerprint(bundle.identity),
                        val_reference=val_ref)
    run.writer.save_weights(alone, CONTROL_FILE)
    c_logits, _ = test_logits(alone, bundle, run.device)
    out = {"control_accuracy": accuracy(c_logits, bundle.test.labels), "control_history": result.history,
           **{f"control_{k}": v for k, v in _by_class(c_logits, bundle.test.labels, cfg.omitted()).items()}}
    last = last_epoch_accuracy(alone, result, bundle, run.device)
    out["control_accuracy_last_epoch"] = out["control_accuracy"] if last is None else last
    if t_pred is not None:
        out["control_agreement"] = float((c_logits.argmax(1) == t_pred).float().mean())
    log(f"distill: student alone (alpha=1) test accuracy {out['control_accuracy']:.4f}")
    return out


def _gain(cfg, options: dict, metrics: dict) -> dict:
    """What distillation gained over the student alone, in points; the --min-gain gate, or a warning
    when the teacher made the student worse."""
    acc, alone = metrics["accuracy"], metrics["control_accuracy"]
    gain = round(100 * (acc - alone), 4)
    out: dict = {"gain_points": gain, "min_gain": cfg.min_gain}
    if gain >= 0:
        return out
    what = (f"the distilled student ({acc:.4f}) is {-gain:.2f} points below the student alone ({alone:.4f}) "
            f"with --method {cfg.method}")
    if cfg.min_gain is not None and -gain > cfg.min_gain:
        out.update({"status": "failed", "failure": f"distill: {what}, more than --min-gain {cfg.min_gain:g}"})
    else:
        tries = ([] if cfg.method == "kd" else ["--method kd"]) + \
            (["a smaller --beta"] if options.get("beta") else []) + \
            (["a larger --alpha"] if options.get("alpha", 1) < 1 else []) + ["more --epochs"]
        warn(f"{what}; try {', '.join(tries[:-1])} or {tries[-1]} (--min-gain 0 makes this an error)")
    return out


def _describe(t_art, t_pred, labels) -> str:
    if t_art is None:
        return "no teacher (self-distillation)"
    acc = float((t_pred == labels).float().mean())
    return f"{t_art.spec.architecture} ({count_params(t_art.model):,} params, test acc {acc:.4f})"
