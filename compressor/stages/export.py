"""export: ONNX fp32 (+ int8 QDQ, + fp16), verified against PyTorch, with accuracy, size and latency."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch

from compressor import CompressorError
from compressor.artifacts import MODEL_FILE, ArtifactWriter, base_metrics, load_artifact, zipped_size
from compressor.console import log
from compressor.export import (check_calibration_method, convert_fp16, convs_wrapped_in_qdq, export_onnx, latency_ms,
                               op_counts, ort_predict, quantize_int8, session)
from compressor.models import count_params
from compressor.stages.common import DataOptions
from compressor.training import resolve_device

SPARSITY_NOTE = ("ONNX stores weights densely; pruned zeros cost 4 bytes each raw but compress to almost "
                 "nothing, so compare zipped sizes")


def export(model_dir: str | Path, *, data: DataOptions, out: str | Path, onnx: bool = True, int8: bool = False,
           fp16: bool = False, calibration_batches: int = 8, calibration_method: str = "minmax",
           per_channel: bool = True, quant_format: str = "qdq", max_drop: float | None = None,
           latency_batch: int = 64, fp32_stem: bool = False, seed: int = 0, device: str = "auto") -> dict:
    """Export to ONNX (and int8, fp16); verify; write the artifact.

    `fp32_stem`: keep the first Conv (on an input of at most 4 channels) and its MaxPool in float32
    in the int8 model, where onnxruntime's int8 kernel is slowest (see compressor.export.fp32_stem).

    Verification: onnx.checker; onnxruntime vs PyTorch max abs difference at batch 1 and 8; accuracy
    of every exported model on the test split; fp32/int8 agreement; latency (median of repeated
    runs, warm-up excluded) at batch 1 and `latency_batch`. With `max_drop`, an int8 model that
    loses more than that many accuracy points is still written, marked failed, and an error raised.
    """
    started = time.time()
    if not onnx:
        raise CompressorError("export writes ONNX; pass --onnx")
    if calibration_batches < 1:
        raise CompressorError(f"--calibration-batches must be at least 1, got {calibration_batches}")
    check_calibration_method(calibration_method)
    if quant_format != "qdq":
        raise CompressorError(f"--format must be qdq (QuantizeLinear/DequantizeLinear pairs), got '{quant_format}'")
    if max_drop is not None and max_drop < 0:
        raise CompressorError(f"--max-drop must be 0 or more points, got {max_drop}")
    if max_drop is not None and not int8:
        raise CompressorError("--max-drop gates the int8 model; pass --int8 too")
    if latency_batch < 1:
        raise CompressorError(f"--latency-batch must be at least 1, got {latency_batch}")
    resolve_device(device)
    art = load_artifact(model_dir)
    bundle = data.load(art.spec)
    model = art.model.cpu().eval()
    shape = art.spec["input_shape"]
    x8, _ = next(iter(bundle.loader("test", 8)))
    with torch.no_grad():
        ref = model(x8).numpy()
    test = list(bundle.loader("test", 256))
    labels = np.concatenate([y.numpy() for _, y in test])
    failure = None
    with ArtifactWriter(out) as writer:
        shutil.copy2(art.path / MODEL_FILE, writer.path(MODEL_FILE))
        writer.write_json("model.json", {**art.spec, "stage": "export"})
        fp32 = writer.path("model.onnx")
        export_onnx(model, fp32, shape)
        variants = {"fp32": fp32}
        if int8:
            calib = [xb.numpy() for xb, _ in _take(bundle.loader("train", 64, seed=seed), calibration_batches)]
            variants["int8"] = writer.path("model.int8.onnx")
            kept_fp32 = quantize_int8(fp32, variants["int8"], calib, per_channel=per_channel,
                                      method=calibration_method, keep_stem_fp32=fp32_stem)
            if fp32_stem and not kept_fp32:
                log("export: --fp32-stem: no Conv on a <=4-channel input followed by a MaxPool; all int8")
        if fp16:
            variants["fp16"] = writer.path("model.fp16.onnx")
            convert_fp16(fp32, variants["fp16"])
        metrics: dict = {"params": count_params(model), "accuracy_torch": art.metrics.get("accuracy"),
                         "latency_batch": latency_batch, "sparsity_note": SPARSITY_NOTE}
        preds = {}
        for kind, path in variants.items():
            sess = session(path)
            logits, _ = ort_predict(sess, test)
            preds[kind] = logits.argmax(1)
            metrics.update({
                f"accuracy_{kind}": float((preds[kind] == labels).mean()),
                f"max_abs_diff_{kind}": _max_diff(sess, x8.numpy(), ref, batch=8),
                f"max_abs_diff_{kind}_batch1": _max_diff(sess, x8[:1].numpy(), ref[:1], batch=1),
                f"latency_ms_{kind}": latency_ms(sess, shape, latency_batch),
                f"latency_ms_{kind}_batch1": latency_ms(sess, shape, 1, runs=100),
                f"size_bytes_{kind}": path.stat().st_size, f"zipped_bytes_{kind}": zipped_size(path)})
            log(f"export: {kind}: accuracy {metrics[f'accuracy_{kind}']:.4f}, max abs diff vs PyTorch "
                f"{metrics[f'max_abs_diff_{kind}']:.2e}, latency {metrics[f'latency_ms_{kind}']:.2f} ms at batch "
                f"{latency_batch} ({metrics[f'latency_ms_{kind}_batch1']:.3f} ms at 1), zipped "
                f"{metrics[f'zipped_bytes_{kind}']:,} bytes")
        metrics["accuracy"] = metrics["accuracy_fp32"]
        if int8:
            ops = op_counts(variants["int8"])
            acc32, acc8 = metrics["accuracy_fp32"], metrics["accuracy_int8"]
            metrics.update({
                "agreement_fp32_int8": float((preds["int8"] == preds["fp32"]).mean()),
                "qdq_ops": {k: v for k, v in ops.items() if k in ("QuantizeLinear", "DequantizeLinear")},
                "convs_wrapped_in_qdq": convs_wrapped_in_qdq(variants["int8"], skip=kept_fp32),
                "fp32_nodes": kept_fp32, "calibration_batches": len(calib),
                "calibration_method": calibration_method, "per_channel": per_channel,
                "accuracy_drop_points": round(100 * (acc32 - acc8), 4)})
            if max_drop is not None and metrics["accuracy_drop_points"] > max_drop:
                failure = (f"int8 model loses {metrics['accuracy_drop_points']:.2f} accuracy points "
                           f"(fp32 {acc32:.4f}, int8 {acc8:.4f}), more than --max-drop {max_drop}")
        metrics.update({"status": "failed" if failure else "ok", "failure": failure, "max_drop": max_drop,
                        **base_metrics(seed, started)})
        writer.commit(metrics)
    if failure:
        raise CompressorError(f"{failure}; artifact written to {out} and marked failed")
    return metrics


def _max_diff(sess, x: np.ndarray, ref: np.ndarray, batch: int) -> float:
    out = sess.run(["logits"], {"input": x[:batch]})[0]
    return float(np.abs(out - ref[:batch]).max())


def _take(loader, n: int):
    for i, batch in enumerate(loader):
        if i >= n:
            return
        yield batch
