"""export: ONNX fp32 (+ int8 QDQ, + fp16), verified against PyTorch, with accuracy, size and latency."""

from __future__ import annotations

import shutil

import numpy as np
import torch

from compressor.artifacts import MODEL_FILE, SPEC_FILE, load_artifact, zipped_size
from compressor.config import ExportConfig
from compressor.console import log
from compressor.export import (convert_fp16, convs_wrapped_in_qdq, export_onnx, latency_ms, op_counts, ort_predict,
                               quantize_int8, session)
from compressor.models import count_params
from compressor.stages.runner import StageRun, stage

SPARSITY_NOTE = ("ONNX stores weights densely; pruned zeros cost 4 bytes each raw but compress to almost "
                 "nothing, so compare zipped sizes")


@stage("export", ExportConfig)
def export(run: StageRun) -> dict:
    """Export to ONNX (and int8, fp16); verify; write the artifact.

    `fp32_stem`: keep the first Conv (on an input of at most 4 channels) and its MaxPool in float32
    in the int8 model, where onnxruntime's int8 kernel is slowest (see compressor.export.fp32_stem).

    Verification: onnx.checker; onnxruntime vs PyTorch max abs difference at batch 1 and 8; accuracy
    of every exported model on the test split; fp32/int8 agreement; latency (median of repeated
    runs, warm-up excluded) at batch 1 and `latency_batch`. With `max_drop`, an int8 model that
    loses more than that many accuracy points is still written, marked failed, and an error raised.
    """
    cfg = run.cfg
    art = load_artifact(cfg.model_dir)
    bundle = cfg.load_data(art.spec)
    model = art.model.cpu().eval()
    shape = art.spec.input_shape
    x8, _ = next(iter(bundle.loader("test", 8)))
    with torch.no_grad():
        ref = model(x8).numpy()
    test = list(bundle.loader("test", 256))
    labels = np.concatenate([y.numpy() for _, y in test])
    writer = run.writer
    shutil.copy2(art.path / MODEL_FILE, writer.path(MODEL_FILE))
    writer.write_json(SPEC_FILE, art.spec.model_copy(update={"stage": "export"}).to_json())
    variants, kept_fp32, n_calib = _write_variants(cfg, model, shape, bundle, writer)
    metrics: dict = {"params": count_params(model), "accuracy_torch": art.metrics.get("accuracy"),
                     "latency_batch": cfg.latency_batch, "sparsity_note": SPARSITY_NOTE}
    preds = {kind: _verify(kind, path, test, labels, x8, ref, shape, cfg.latency_batch, metrics)
             for kind, path in variants.items()}
    metrics["accuracy"] = metrics["accuracy_fp32"]
    failure = None
    if cfg.int8:
        failure = _int8_metrics(cfg, variants["int8"], preds, kept_fp32, n_calib, metrics)
    metrics.update({"status": "failed" if failure else "ok", "failure": failure, "max_drop": cfg.max_drop,
                    "min_speedup": cfg.min_speedup})
    return metrics


def _write_variants(cfg, model, shape, bundle, writer):
    fp32 = writer.path("model.onnx")
    export_onnx(model, fp32, shape)
    variants, kept_fp32, n_calib = {"fp32": fp32}, [], 0
    if cfg.int8:
        calib = [xb.numpy() for xb, _ in _take(bundle.loader("train", 64, seed=cfg.seed), cfg.calibration_batches)]
        n_calib = len(calib)
        variants["int8"] = writer.path("model.int8.onnx")
        kept_fp32 = quantize_int8(fp32, variants["int8"], calib, per_channel=cfg.per_channel,
                                  method=cfg.calibration_method, keep_stem_fp32=cfg.fp32_stem)
        if cfg.fp32_stem and not kept_fp32:
            log("export: --fp32-stem: no Conv on a <=4-channel input followed by a MaxPool; all int8")
    if cfg.fp16:
        variants["fp16"] = writer.path("model.fp16.onnx")
        convert_fp16(fp32, variants["fp16"])
    return variants, kept_fp32, n_calib


def _verify(kind: str, path, test, labels, x8, ref, shape, latency_batch: int, metrics: dict):
    """Accuracy, difference from PyTorch, latency and sizes of one exported model (into `metrics`)."""
    sess = session(path)
    logits, _ = ort_predict(sess, test)
    pred = logits.argmax(1)
    metrics.update({
        f"accuracy_{kind}": float((pred == labels).mean()),
        f"max_abs_diff_{kind}": _max_diff(sess, x8.numpy(), ref, batch=8),
        f"max_abs_diff_{kind}_batch1": _max_diff(sess, x8[:1].numpy(), ref[:1], batch=1),
        f"latency_ms_{kind}": latency_ms(sess, shape, latency_batch),
        f"latency_ms_{kind}_batch1": latency_ms(sess, shape, 1, runs=100),
        f"size_bytes_{kind}": path.stat().st_size, f"zipped_bytes_{kind}": zipped_size(path)})
    log(f"export: {kind}: accuracy {metrics[f'accuracy_{kind}']:.4f}, max abs diff vs PyTorch "
        f"{metrics[f'max_abs_diff_{kind}']:.2e}, latency {metrics[f'latency_ms_{kind}']:.2f} ms at batch "
        f"{latency_batch} ({metrics[f'latency_ms_{kind}_batch1']:.3f} ms at 1), zipped "
        f"{metrics[f'zipped_bytes_{kind}']:,} bytes")
    return pred


def _int8_metrics(cfg, int8_path, preds, kept_fp32, n_calib, metrics: dict) -> str | None:
    """The int8 model's checks; the failure message when it loses more than --max-drop points or is
    less than --min-speedup times as fast as fp32."""
    ops = op_counts(int8_path)
    acc32, acc8 = metrics["accuracy_fp32"], metrics["accuracy_int8"]
    metrics.update({
        "agreement_fp32_int8": float((preds["int8"] == preds["fp32"]).mean()),
        "qdq_ops": {k: v for k, v in ops.items() if k in ("QuantizeLinear", "DequantizeLinear")},
        "convs_wrapped_in_qdq": convs_wrapped_in_qdq(int8_path, skip=kept_fp32),
        "fp32_nodes": kept_fp32, "calibration_batches": n_calib, "calibration_method": cfg.calibration_method,
        "per_channel": cfg.per_channel, "accuracy_drop_points": round(100 * (acc32 - acc8), 4)})
    metrics["speedup_int8"] = round(metrics["latency_ms_fp32"] / metrics["latency_ms_int8"], 3)
    failures = []
    if cfg.max_drop is not None and metrics["accuracy_drop_points"] > cfg.max_drop:
        failures.append(f"int8 model loses {metrics['accuracy_drop_points']:.2f} accuracy points "
                        f"(fp32 {acc32:.4f}, int8 {acc8:.4f}), more than --max-drop {cfg.max_drop}")
    if cfg.min_speedup is not None and metrics["speedup_int8"] < cfg.min_speedup:
        failures.append(f"int8 model is {metrics['speedup_int8']:.2f}x as fast as fp32 at batch {cfg.latency_batch} "
                        f"({metrics['latency_ms_int8']:.2f} vs {metrics['latency_ms_fp32']:.2f} ms, onnxruntime), "
                        f"less than --min-speedup {cfg.min_speedup}")
    return "; ".join(failures) or None


def _max_diff(sess, x: np.ndarray, ref: np.ndarray, batch: int) -> float:
    out = sess.run(["logits"], {"input": x[:batch]})[0]
    return float(np.abs(out - ref[:batch]).max())


def _take(loader, n: int):
    for i, batch in enumerate(loader):
        if i >= n:
            return
        yield batch
