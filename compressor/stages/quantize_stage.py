"""quantize: quantization-aware fine-tuning, distilled from the float model (or a teacher); its
artifact is the fake-quantized model that `export` writes as int8 QDQ from the learned ranges."""

from __future__ import annotations

import copy
from pathlib import Path

from compressor import CompressorError
from compressor.artifacts import load_artifact
from compressor.config import QuantizeConfig
from compressor.console import log
from compressor.deploy import qat
from compressor.distill import build_distiller
from compressor.models import count_params
from compressor.stages.common import load_bundle, test_accuracy
from compressor.stages.distill_stage import method_options
from compressor.stages.runner import StageRun, stage
from compressor.training import train_task


@stage("quantize", QuantizeConfig, trains=True)
def quantize(run: StageRun) -> dict:
    """Fold BatchNorms, simulate int8 where the export quantizes (see `compressor.deploy.qat`),
    initialise the ranges on `calibration_batches` training batches, then fine-tune `epochs` epochs,
    distilling with `method` from the teacher: by default the float model itself. Structured-pruned
    models keep their widths; a sparse model's zero weights stay zero.

    metrics.json: `accuracy` (the fake-quantized model, what the int8 files compute),
    `accuracy_float` (the model read), `accuracy_calibrated` (int8 from the calibration alone, before
    fine-tuning: what post-training quantization in this scheme gives), `accuracy_float_weights`
    (the fine-tuned weights without rounding)."""
    cfg = run.cfg
    art = load_artifact(cfg.model_dir)
    if art.spec.quantization:
        raise CompressorError(f"{cfg.model_dir} is already quantized (by compress quantize); quantize its float "
                              "model instead")
    bundle = load_bundle(cfg, art.spec)
    model, shape = art.model, art.spec.input_shape
    teacher = load_artifact(cfg.teacher).model if cfg.teacher else copy.deepcopy(model)
    acc_float = test_accuracy(model, bundle, run.device)
    model = model.cpu()
    structure = qat.prepare(model, shape)
    keep_zeros = qat.KeepZeros(model)
    qat.calibrate(model, (x for x, _ in bundle.loader("train", 64, seed=cfg.seed,
                                                      limit=64 * cfg.calibration_batches)), "cpu")
    acc_calibrated = test_accuracy(model, bundle, run.device)
    log(f"quantize: {len(structure['quantized'])} layers in int8, {len(structure['folded'])} BatchNorms folded; "
        f"test accuracy {acc_float:.4f} (float) -> {acc_calibrated:.4f} (int8, calibrated) before fine-tuning")
    options = method_options(cfg)
    task = build_distiller(cfg.method, model, teacher, input_shape=shape, options=options)
    try:
        result = train_task(task, bundle, cfg, device=run.device, stage="quantize", desc="quantize finetune",
                            checkpoints=run.checkpoints, fingerprint=run.fingerprint(bundle.identity),
                            after_step=keep_zeros or None)
    finally:
        getattr(task, "close", lambda: None)()
    model = model.cpu()
    qat.freeze_ranges(model)
    settings = {**art.spec.settings, "quantize": {**cfg.settings(), **options}}
    spec = art.spec.model_copy(update={"stage": "quantize", "quantization": structure, "settings": settings},
                               deep=True)
    run.writer.save_model(model, spec)
    acc = test_accuracy(model, bundle, run.device)
    with qat.float_mode(model):
        acc_float_weights = test_accuracy(model, bundle, run.device)
    metrics = {"accuracy": acc, "accuracy_float": acc_float, "accuracy_calibrated": acc_calibrated,
               "accuracy_float_weights": acc_float_weights, "params": count_params(model),
               "quantized_layers": len(structure["quantized"]), "float_layers": structure["float"],
               "folded_batchnorms": len(structure["folded"]), "scheme": structure["scheme"],
               "sparse_layers_kept": sorted(keep_zeros.masks), "ranges": qat.ranges(model),
               "val_accuracy": result.best_val_accuracy, "history": result.history,
               "size_bytes": run.writer.model_sizes["size_bytes"], "zipped_bytes": run.writer.model_sizes["zipped_bytes"]}
    cost = task.cost(run.device)
    if cost:
        metrics["cost"] = cost
    log(f"quantize: test accuracy {acc_float:.4f} (float) -> {acc_calibrated:.4f} (calibrated int8) -> {acc:.4f} "
        f"(int8 after {cfg.epochs} epochs of {cfg.method} from {'the float model' if not cfg.teacher else cfg.teacher}) "
        f"-> {Path(cfg.out)}")
    return metrics
