"""export: ONNX fp32 (+ int8 QDQ), verified against PyTorch, with accuracy, size and latency."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch

from compressor import CompressorError
from compressor.artifacts import MODEL_FILE, ArtifactWriter, base_metrics, load_artifact
from compressor.console import log
from compressor.export import convs_wrapped_in_qdq, export_onnx, latency_ms, op_counts, ort_predict, \
    quantize_int8, session, zipped_size
from compressor.models import count_params
from compressor.stages.common import DataOptions
from compressor.training import resolve_device


def export(model_dir: str | Path, *, data: DataOptions, out: str | Path, onnx: bool = True, int8: bool = False,
           calibration_batches: int = 8, max_drop: float | None = None, latency_batch: int = 64,
           seed: int = 0, device: str = "auto") -> dict:
    """Export to ONNX (and int8); verify; write the artifact. With `max_drop`, an int8 model that
    loses more than that many accuracy points is still written, marked failed, and an error raised."""
    started = time.time()
    if not onnx:
        raise CompressorError("export writes ONNX; pass --onnx")
    if calibration_batches < 1:
        raise CompressorError(f"--calibration-batches must be at least 1, got {calibration_batches}")
    if max_drop is not None and max_drop < 0:
        raise CompressorError(f"--max-drop must be 0 or more points, got {max_drop}")
    if max_drop is not None and not int8:
        raise CompressorError("--max-drop gates the int8 model; pass --int8 too")
    resolve_device(device)
    art = load_artifact(model_dir)
    bundle = data.load(art.spec)
    model = art.model.cpu().eval()
    shape = art.spec["input_shape"]
    failure = None
    with ArtifactWriter(out) as writer:
        shutil.copy2(art.path / MODEL_FILE, writer.path(MODEL_FILE))
        writer.write_json("model.json", {**art.spec, "stage": "export"})
        fp32 = writer.path("model.onnx")
        export_onnx(model, fp32, shape)
        sess32 = session(fp32)
        # verification on real inputs: onnxruntime vs PyTorch
        x, _ = next(iter(bundle.loader("test", 64)))
        with torch.no_grad():
            ref = model(x).numpy()
        max_abs = float(np.abs(sess32.run(["logits"], {"input": x.numpy()})[0] - ref).max())
        log(f"export: ONNX fp32 vs PyTorch max abs diff {max_abs:.2e}")
        logits32, labels = ort_predict(sess32, bundle.loader("test", 256))
        acc32 = float((logits32.argmax(1) == labels).mean())
        metrics = {"accuracy": acc32, "params": count_params(model), "accuracy_fp32": acc32,
                   "accuracy_torch": art.metrics.get("accuracy"), "max_abs_diff_fp32": max_abs,
                   "latency_ms_fp32": latency_ms(sess32, shape, latency_batch), "latency_batch": latency_batch,
                   "size_bytes_fp32": fp32.stat().st_size, "zipped_bytes_fp32": zipped_size(fp32)}
        if int8:
            calib = [xb.numpy() for xb, _ in _take(bundle.loader("train", 64, seed=seed), calibration_batches)]
            q = writer.path("model.int8.onnx")
            quantize_int8(fp32, q, calib)
            sess8 = session(q)
            logits8, _ = ort_predict(sess8, bundle.loader("test", 256))
            acc8 = float((logits8.argmax(1) == labels).mean())
            ops = op_counts(q)
            metrics.update({
                "accuracy_int8": acc8, "agreement_fp32_int8": float((logits8.argmax(1) == logits32.argmax(1)).mean()),
                "max_abs_diff_int8": float(np.abs(sess8.run(["logits"], {"input": x.numpy()})[0] - ref).max()),
                "latency_ms_int8": latency_ms(sess8, shape, latency_batch),
                "size_bytes_int8": q.stat().st_size, "zipped_bytes_int8": zipped_size(q),
                "qdq_ops": {k: v for k, v in ops.items() if k in ("QuantizeLinear", "DequantizeLinear")},
                "convs_wrapped_in_qdq": convs_wrapped_in_qdq(q), "calibration_batches": len(calib),
                "accuracy_drop_points": round(100 * (acc32 - acc8), 4)})
            log(f"export: int8 accuracy {acc8:.4f} (fp32 {acc32:.4f}), latency {metrics['latency_ms_int8']:.2f} ms "
                f"vs {metrics['latency_ms_fp32']:.2f} ms at batch {latency_batch}")
            if max_drop is not None and metrics["accuracy_drop_points"] > max_drop:
                failure = (f"int8 model loses {metrics['accuracy_drop_points']:.2f} accuracy points "
                           f"(fp32 {acc32:.4f}, int8 {acc8:.4f}), more than --max-drop {max_drop}")
        metrics.update({"status": "failed" if failure else "ok", "failure": failure, "max_drop": max_drop,
                        **base_metrics(seed, started)})
        writer.commit(metrics)
    if failure:
        raise CompressorError(f"{failure}; artifact written to {out} and marked failed")
    return metrics


def _take(loader, n: int):
    for i, batch in enumerate(loader):
        if i >= n:
            return
        yield batch
