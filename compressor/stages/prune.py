"""prune: magnitude pruning to a target sparsity, then fine-tuning that keeps the zeros; or
structured pruning that physically removes channels."""

from __future__ import annotations

import time
from pathlib import Path

from compressor import CompressorError
from compressor.artifacts import (ArtifactWriter, base_metrics, load_artifact, recorded_model_sizes,
                                  state_dict_for_saving)
from compressor.checkpoint import Checkpoints
from compressor.console import log
from compressor.distill import build_distiller
from compressor.export import onnx_latency
from compressor.models import count_params
from compressor.prune import (GradualMasker, default_exclusions, measured_sparsity, plan_structured, prunable_layers,
                              remove_channels)
from compressor.stages.common import DataOptions, check_fraction, test_accuracy
from compressor.training import Supervised, TrainConfig, fit, resolve_device


def prune(model_dir: str | Path, *, data: DataOptions, out: str | Path, sparsity: float,
          structured: bool = False, schedule: str = "gradual", scope: str = "global", include_all: bool = False,
          importance: str = "magnitude", channels: str | None = None, finetune_epochs: int = 1,
          teacher: str | None = None, method: str = "kd", temperature: float = 4.0, alpha: float = 0.5,
          train: TrainConfig | None = None, resume: bool = False, device: str = "auto") -> dict:
    """Prune the model in `model_dir` and fine-tune it; write the pruned artifact.

    Args:
        sparsity: unstructured: fraction of conv/linear weights set to zero; structured: fraction
            of each prunable convolution's output channels removed.
        schedule: oneshot, or gradual (Zhu & Gupta's cubic ramp over the first 3/4 of fine-tuning).
        scope: global (one magnitude threshold across layers) or layer (the same fraction per layer).
        include_all: also prune the first convolution and the classifier (excluded by default).
        importance: structured only: magnitude (filter L2 norm) or discriminability (the scores
            `select` wrote for this model, passed as `channels`: least discriminative go first).
        teacher: fine-tune while distilling from this artifact with `method` (kd with alpha 0.5:
            the mean of the teacher's soft targets and the hard labels).
        resume: continue an interrupted fine-tuning of the same command from its checkpoint.
    """
    started = time.time()
    check_fraction("--sparsity", sparsity, high_open=True)
    if finetune_epochs < 0:
        raise CompressorError(f"--finetune-epochs must be 0 or more, got {finetune_epochs}")
    if importance == "discriminability" and not channels:
        raise CompressorError("--importance discriminability needs --channels SELECT_DIR (the scores select wrote)")
    train = train or TrainConfig(lr=0.01)
    train.epochs = finetune_epochs
    train.validate()
    dev = resolve_device(device)
    art = load_artifact(model_dir)
    t_art = load_artifact(teacher) if teacher else None
    bundle = data.load(art.spec)
    model = art.model
    shape = art.spec["input_shape"]
    exclude = () if include_all else default_exclusions(model)
    acc_before, params_before = test_accuracy(model, bundle, dev), count_params(model)
    size_before = recorded_model_sizes(art.path, art.metrics)
    metrics: dict = {}
    ckpt = Checkpoints(out, "prune", resume)
    fingerprint = {"source": str(Path(model_dir).absolute()), "sparsity": sparsity, "structured": structured,
                   "schedule": schedule, "scope": scope, "include_all": include_all, "importance": importance,
                   "channels": channels, "teacher": teacher, "method": method, "temperature": temperature,
                   "alpha": alpha, "train": vars(train), "data": bundle.identity}
    with ArtifactWriter(out) as writer:
        spec = {**art.spec, "stage": "prune"}
        if structured:
            scores = _scores(channels) if channels else None
            latency_before = onnx_latency(model, shape, writer.dir)
            plan = plan_structured(model.cpu(), shape, sparsity, importance, scores, exclude)
            remove_channels(model, shape, plan)
            spec["structured_pruning"] = spec.get("structured_pruning", []) + [plan]
            metrics["channels_removed"] = {p["layer"]: f"{len(p['removed'])}/{p['channels']}" for p in plan}
            after_step = None
        else:
            layers = prunable_layers(model, exclude)
            steps = max(1, finetune_epochs * len(bundle.loader("train", train.batch_size)))
            masker = GradualMasker(layers, sparsity, steps if finetune_epochs else 0, scope, schedule)
            after_step = masker
        acc_pruned = test_accuracy(model, bundle, dev)
        log(f"prune: {'channels' if structured else 'weights'} at {sparsity:.0%} "
            f"({'structured' if structured else f'{schedule}, {scope}'}): test accuracy {acc_before:.4f} -> "
            f"{acc_pruned:.4f} before fine-tuning" + ("" if structured or schedule == "oneshot" else " (first step)"))
        task = (build_distiller(method, model, t_art.model, input_shape=shape, temperature=temperature, alpha=alpha)
                if t_art else Supervised(model))
        try:
            result = fit(task, bundle, train, device=dev, desc="prune finetune", stage="prune", after_step=after_step,
                         checkpoint=ckpt.fit("main", fingerprint))
        finally:
            getattr(task, "close", lambda: None)()
        model = model.cpu()
        if not structured:
            masker.finish()
        acc = test_accuracy(model, bundle, dev)
        state = state_dict_for_saving(model)
        names = list(prunable_layers(model, exclude))
        overall, per_layer = measured_sparsity(state, names)
        settings = dict(art.spec.get("settings", {}))
        settings["prune"] = {"source": str(Path(model_dir).absolute()), "sparsity": sparsity, "structured": structured,
                             "schedule": schedule, "scope": scope, "include_all": include_all, "excluded": list(exclude),
                             "importance": importance, "channels": channels, "teacher": teacher, "method": method,
                             "temperature": temperature, "alpha": alpha, **vars(train)}
        spec["settings"] = settings
        writer.save_model(model, spec)
        size_after = (writer.model_sizes["size_bytes"], writer.model_sizes["zipped_bytes"])
        metrics.update({"accuracy": acc, "params": count_params(model), "params_before": params_before,
                        "sparsity": overall, "sparsity_per_layer": per_layer,
                        "nonzero_weights": sum(int((state[f"{n}.weight"] != 0).sum()) for n in names),
                        "size_bytes_before": size_before[0], "size_bytes": size_after[0],
                        "zipped_bytes_before": size_before[1], "zipped_bytes": size_after[1],
                        "accuracy_before": acc_before, "accuracy_pruned_no_finetune": acc_pruned,
                        "val_accuracy": result.best_val_accuracy, "history": result.history})
        if structured:
            metrics["latency_ms_before"] = latency_before
            metrics["latency_ms"] = onnx_latency(model, shape, writer.dir)
        metrics.update(base_metrics(train.seed, started))
        writer.commit(metrics)
    ckpt.clear()
    log(f"prune: measured sparsity {overall:.4f}, params {params_before:,} -> {metrics['params']:,}, "
        f"zipped {size_before[1]:,} -> {size_after[1]:,} bytes, test accuracy {acc:.4f} -> {Path(out)}")
    return metrics


def _scores(select_dir: str) -> dict[str, list[float]]:
    from compressor.artifacts import read_json

    art = load_artifact(select_dir, with_model=False)
    return {e["name"]: e["scores"] for e in read_json(art.path / "channels.json")["layers"]}
