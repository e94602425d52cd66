"""prune: magnitude pruning to a target sparsity, then fine-tuning that keeps the zeros."""

from __future__ import annotations

import time
from pathlib import Path

from compressor import CompressorError
from compressor.artifacts import ArtifactWriter, base_metrics, load_artifact, state_dict_for_saving
from compressor.console import log
from compressor.distill.kd import KD
from compressor.models import count_params
from compressor.prune import apply_masks, global_magnitude_masks, measured_sparsity, prunable_layers
from compressor.stages.common import DataOptions, check_fraction, test_accuracy
from compressor.training import Supervised, TrainConfig, fit, resolve_device


def prune(model_dir: str | Path, *, data: DataOptions, out: str | Path, sparsity: float,
          structured: bool = False, finetune_epochs: int = 1, teacher: str | None = None,
          temperature: float = 4.0, alpha: float = 0.5, train: TrainConfig | None = None,
          device: str = "auto") -> dict:
    """Zero the smallest-magnitude conv/linear weights (one global threshold) and fine-tune.

    With `teacher`, fine-tuning distills (KD with `alpha` on the hard labels; 0.5 = the mean of
    soft and hard targets).
    """
    started = time.time()
    check_fraction("--sparsity", sparsity, high_open=True)
    if structured:
        raise CompressorError("--structured pruning is not implemented yet; drop it for unstructured pruning")
    if finetune_epochs < 0:
        raise CompressorError(f"--finetune-epochs must be 0 or more, got {finetune_epochs}")
    train = train or TrainConfig(lr=0.01)
    train.epochs = finetune_epochs
    train.validate()
    dev = resolve_device(device)
    art = load_artifact(model_dir)
    t_art = load_artifact(teacher) if teacher else None
    bundle = data.load(art.spec)
    model = art.model
    acc_before = test_accuracy(model, bundle, dev)
    with ArtifactWriter(out) as writer:
        layers = prunable_layers(model)
        masks = global_magnitude_masks(layers, sparsity)
        apply_masks(layers, masks)
        acc_pruned = test_accuracy(model, bundle, dev)
        log(f"prune: {len(layers)} layers to {sparsity:.0%} sparsity: test accuracy {acc_before:.4f} -> {acc_pruned:.4f} "
            f"before fine-tuning")
        task = KD(model, t_art.model, temperature=temperature, alpha=alpha) if t_art else Supervised(model)
        result = fit(task, bundle, train, device=dev, desc="prune finetune", stage="prune",
                     after_step=lambda: apply_masks(layers, masks))
        apply_masks(layers, masks)
        acc = test_accuracy(model, bundle, dev)
        overall, per_layer = measured_sparsity(state_dict_for_saving(model), list(layers))
        settings = dict(art.spec.get("settings", {}))
        settings["prune"] = {"source": str(Path(model_dir).absolute()), "sparsity": sparsity, "structured": structured,
                             "teacher": teacher, "temperature": temperature, "alpha": alpha, **vars(train)}
        writer.save_model(model, {**art.spec, "stage": "prune", "settings": settings})
        nonzero = sum(int((m.weight != 0).sum()) for m in layers.values())
        metrics = {"accuracy": acc, "params": count_params(model), "sparsity": overall,
                   "sparsity_per_layer": per_layer, "nonzero_weights": nonzero,
                   "accuracy_before": acc_before, "accuracy_pruned_no_finetune": acc_pruned,
                   "val_accuracy": result.best_val_accuracy, "history": result.history,
                   **base_metrics(train.seed, started)}
        writer.commit(metrics)
    log(f"prune: measured sparsity {overall:.4f}, test accuracy {acc:.4f} -> {Path(out)}")
    return metrics
