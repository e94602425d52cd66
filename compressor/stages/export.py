"""export: ONNX fp32 (+ int8 QDQ, + fp16), verified against PyTorch, with accuracy, size and latency."""

from __future__ import annotations

import shutil
from dataclasses import asdict

import numpy as np
import torch

from compressor import CompressorError
from compressor.artifacts import MODEL_FILE, SPEC_FILE, load_artifact, zipped_size
from compressor.config import ExportConfig
from compressor.console import log
from compressor.export import (OPENVINO_MISSING, RUNTIMES, VERIFY_BUDGET_S, Int8Choice, OpenVINOSession, allowed_drop,
                               choose_int8_form, convert_fp16, convs_wrapped_in_qdq, export_onnx, latency_ms, op_counts,
                               openvino_available, predict_batches, save_openvino_ir, session)
from compressor.models import count_params
from compressor.stages.runner import StageRun, stage

SPARSITY_NOTE = ("ONNX stores weights densely; pruned zeros cost 4 bytes each raw but compress to almost "
                 "nothing, so compare zipped sizes")


@stage("export", ExportConfig)
def export(run: StageRun) -> dict:
    """Export to ONNX (and int8, fp16; OpenVINO IR); verify; write the artifact.

    int8: every quantization choice left at auto (stem, activation type, per-channel) is timed on every
    runtime and scored on the calibration images from the fastest on (`choose_int8_form`); each
    runtime's int8 file (model.int8.onnx for the first, model.int8.xml for OpenVINO) is the form
    fastest on it within `max_drop` points, and every candidate is recorded in metrics.json
    (`int8_candidates`, `int8_form`, `int8_choice`: the first runtime's; each runtime's under `runtimes`).

    Verification, on every runtime measured: onnx.checker; the runtime vs PyTorch max abs difference
    at batch 1 and 8; accuracy of every exported model on the test split; fp32/int8 agreement;
    latency (median of 30 runs, 100 at batch 1, fewer past VERIFY_BUDGET_S seconds; warm-up excluded)
    at batch 1 and `latency_batch`. The flat keys (accuracy_int8, latency_ms_fp32, ...) are the first
    runtime's; `runtimes` holds each one's.
    With `max_drop`, an int8 model that loses more than that many accuracy points is still written,
    marked failed, and an error raised; the same with `min_speedup`.
    """
    cfg = run.cfg
    runtimes = resolve_runtimes(cfg.runtime)
    threads = torch.get_num_threads()
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
    metrics: dict = {"params": count_params(model), "accuracy_torch": art.metrics.get("accuracy"),
                     "latency_batch": cfg.latency_batch, "threads": threads, "runtime": runtimes[0],
                     "sparsity_note": SPARSITY_NOTE}
    variants, choices = _write_variants(cfg, model, shape, bundle, writer, runtimes, threads, metrics)
    per_runtime: dict[str, dict] = {}
    preds: dict[str, dict] = {}
    for rt in runtimes:
        files = dict(variants)
        per_runtime[rt], preds[rt] = {}, {}
        if rt in choices:
            files["int8"] = choices[rt].path
            per_runtime[rt].update({"int8_form": asdict(choices[rt].form), "fp32_nodes": choices[rt].fp32_nodes,
                                    "int8_choice": _why(choices[rt].candidates, rt, cfg),
                                    "int8_candidates": choices[rt].candidates})
        if rt == "openvino":
            files = _openvino_files(files, writer)
            if rt in choices and choices[rt].path != variants["int8"]:
                choices[rt].path.unlink()  # the ONNX quantized for OpenVINO alone: its IR now holds it
        for kind, path in files.items():
            preds[rt][kind] = _verify(rt, kind, path, threads, test, labels, x8, ref, shape, cfg.latency_batch,
                                      per_runtime[rt])
        if cfg.int8:
            r = per_runtime[rt]
            r["speedup_int8"] = round(r["latency_ms_fp32"] / r["latency_ms_int8"], 3)
            r["agreement_fp32_int8"] = float((preds[rt]["int8"] == preds[rt]["fp32"]).mean())
    metrics.update(per_runtime[runtimes[0]])
    metrics["runtimes"] = per_runtime
    metrics["accuracy"] = metrics["accuracy_fp32"]
    failure = None
    if cfg.int8:
        fastest = min(runtimes, key=lambda rt: per_runtime[rt]["latency_ms_int8"])
        metrics["fastest_runtime_int8"] = fastest
        failure = _int8_metrics(cfg, variants["int8"], choices[runtimes[0]].fp32_nodes, metrics)
    metrics.update({"status": "failed" if failure else "ok", "failure": failure, "max_drop": cfg.max_drop,
                    "min_speedup": cfg.min_speedup})
    return metrics


def resolve_runtimes(choice: str) -> list[str]:
    """The runtimes to measure on; the first gives the flat figures and decides the gates."""
    if choice == "auto":
        return ["onnxruntime"] + (["openvino"] if openvino_available() else [])
    if choice in ("openvino", "all") and not openvino_available():
        raise CompressorError(OPENVINO_MISSING)
    return list(RUNTIMES) if choice == "all" else [choice]


def _write_variants(cfg, model, shape, bundle, writer, runtimes: list[str], threads: int,
                    metrics: dict) -> tuple[dict, dict[str, Int8Choice]]:
    fp32 = writer.path("model.onnx")
    export_onnx(model, fp32, shape)
    variants, choices = {"fp32": fp32}, {}
    if cfg.int8:
        calib = [(xb.numpy(), yb.numpy())  # the images standing for the training split (a sample of every class)
                 for xb, yb in bundle.loader("train", 64, seed=cfg.seed, limit=64 * cfg.calibration_batches)]
        variants["int8"] = writer.path("model.int8.onnx")
        # the first runtime's form is model.int8.onnx; another's is an ONNX file only until its own format is written
        outputs = {rt: variants["int8"] if i == 0 else writer.path(f".model.int8.{rt}.onnx")
                   for i, rt in enumerate(runtimes)}
        choices = choose_int8_form(fp32, outputs, calib, stem=cfg.stem, activations=cfg.activations,
                                   per_channel=cfg.per_channel, method=cfg.calibration_method, threads=threads,
                                   batch=cfg.latency_batch, max_drop=cfg.max_drop)
        for rt, c in choices.items():
            log(f"export: int8 form on {rt}: {c.form.label()} ({_why(c.candidates, rt, cfg)})")
        first = choices[runtimes[0]]
        metrics.update({"calibration_batches": len(calib), "calibration_method": cfg.calibration_method,
                        "per_channel": first.form.per_channel})
        if cfg.stem == "fp32" and not first.fp32_nodes:
            log("export: --stem fp32: no Conv on a <=4-channel input followed by a MaxPool; all int8")
    if cfg.fp16:
        variants["fp16"] = writer.path("model.fp16.onnx")
        convert_fp16(fp32, variants["fp16"])
    return variants, choices


def _why(candidates: list[dict], runtime: str, cfg) -> str:
    if not candidates:
        return "every choice given"
    limit = allowed_drop(cfg.max_drop)
    chosen = next(c for c in candidates if c.get("chosen"))
    if not chosen["within_drop"]:
        return (f"no candidate within {limit} points on the calibration images; kept the most accurate of "
                f"{len(candidates)}")
    return (f"fastest of {len(candidates)} candidates within {limit} points on the calibration images: "
            f"{chosen['latency_ms']:.2f} ms at batch {cfg.latency_batch} on {runtime}")


def _openvino_files(variants: dict, writer) -> dict:
    """The IR of the fp32 and int8 ONNX models (fp16 stays ONNX-only), written into the artifact."""
    files = {}
    for kind in ("fp32", "int8"):
        if kind in variants:
            xml = writer.path("model.xml" if kind == "fp32" else f"model.{kind}.xml")
            save_openvino_ir(variants[kind], xml)
            files[kind] = xml
    return files


def _verify(runtime: str, kind: str, path, threads: int, test, labels, x8, ref, shape, latency_batch: int,
            metrics: dict):
    """Accuracy, difference from PyTorch, latency and sizes of one exported model on one runtime."""
    sess = session(path, threads, runtime)
    logits, _ = predict_batches(sess, test, f"export: {kind} on {runtime}")
    pred = logits.argmax(1)
    size = path.stat().st_size + (path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0)
    metrics.update({
        f"accuracy_{kind}": float((pred == labels).mean()),
        f"max_abs_diff_{kind}": _max_diff(sess, x8.numpy(), ref, batch=8),
        f"max_abs_diff_{kind}_batch1": _max_diff(sess, x8[:1].numpy(), ref[:1], batch=1),
        f"latency_ms_{kind}": latency_ms(sess, shape, latency_batch, budget_s=VERIFY_BUDGET_S),
        f"latency_ms_{kind}_batch1": latency_ms(sess, shape, 1, runs=100, budget_s=VERIFY_BUDGET_S),
        f"size_bytes_{kind}": size, f"zipped_bytes_{kind}": zipped_size(path) if path.suffix == ".onnx" else None})
    if isinstance(sess, OpenVINOSession):
        metrics[f"inference_precision_{kind}"] = sess.precision
    log(f"export: {kind} on {runtime}: accuracy {metrics[f'accuracy_{kind}']:.4f}, max abs diff vs PyTorch "
        f"{metrics[f'max_abs_diff_{kind}']:.2e}, latency {metrics[f'latency_ms_{kind}']:.2f} ms at batch "
        f"{latency_batch} ({metrics[f'latency_ms_{kind}_batch1']:.3f} ms at 1), {size:,} bytes")
    return pred


def _int8_metrics(cfg, int8_path, kept_fp32, metrics: dict) -> str | None:
    """The int8 model's checks; the failure message when it loses more than --max-drop points or is
    less than --min-speedup times as fast as fp32 (first runtime)."""
    ops = op_counts(int8_path)
    acc32, acc8 = metrics["accuracy_fp32"], metrics["accuracy_int8"]
    metrics.update({
        "qdq_ops": {k: v for k, v in ops.items() if k in ("QuantizeLinear", "DequantizeLinear")},
        "convs_wrapped_in_qdq": convs_wrapped_in_qdq(int8_path, skip=kept_fp32),
        "fp32_nodes": kept_fp32, "accuracy_drop_points": round(100 * (acc32 - acc8), 4)})
    failures = []
    if cfg.max_drop is not None and metrics["accuracy_drop_points"] > cfg.max_drop:
        failures.append(f"int8 model loses {metrics['accuracy_drop_points']:.2f} accuracy points "
                        f"(fp32 {acc32:.4f}, int8 {acc8:.4f}), more than --max-drop {cfg.max_drop}")
    if cfg.min_speedup is not None and metrics["speedup_int8"] < cfg.min_speedup:
        failures.append(f"int8 model is {metrics['speedup_int8']:.2f}x as fast as fp32 at batch {cfg.latency_batch} "
                        f"({metrics['latency_ms_int8']:.2f} vs {metrics['latency_ms_fp32']:.2f} ms, "
                        f"{metrics['runtime']}), less than --min-speedup {cfg.min_speedup}")
    return "; ".join(failures) or None


def _max_diff(sess, x: np.ndarray, ref: np.ndarray, batch: int) -> float:
    out = sess(x[:batch])
    return float(np.abs(out - ref[:batch]).max())
