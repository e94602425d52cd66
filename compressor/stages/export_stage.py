"""export: ONNX fp32 (+ int8 QDQ, + fp16), verified against PyTorch, with accuracy, size and latency."""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict

import numpy as np
import torch

from compressor import CompressorError
from compressor.artifacts import MODEL_FILE, SPEC_FILE, load_artifact, zipped_size
from compressor.config import POST_TRAINING_INT8, ExportConfig
from compressor.console import log, warn
from compressor.deploy import qat
from compressor.deploy.choice import Int8Choice, allowed_drop, choose_int8_form, first_within_tie
from compressor.deploy.graph import (convert_fp16, convs_wrapped_in_qdq, error_line, export_onnx, export_qdq,
                                     float_convs, model_files, op_counts)
from compressor.deploy.int8 import LEARNED_FORM
from compressor.deploy.phones import (FILES, delegated_share, gate_types, phone_session, quantize_learned,
                                     quantize_pt2e, write_phone)
from compressor.deploy.runtimes import (OPENVINO_MISSING, OPENVINO_PRECISION, RUNTIMES, VERIFY_BUDGET_S,
                                        OpenVINOSession, cpu_flags, interleaved_ms, latency_ms, openvino_available,
                                        predict_batches, reduced_float_forms, save_openvino_ir, session)
from compressor.models import count_params
from compressor.stages.common import load_bundle, training_sample
from compressor.stages.runner import StageRun, stage

DEPLOY_ROUNDS = 5  # the forms' latencies at --latency-batch: medians of this many rounds, the forms in turn in each
SPARSITY_NOTE = ("ONNX stores weights densely; pruned zeros cost 4 bytes each raw but compress to almost "
                 "nothing, so compare zipped sizes")


@stage("export", ExportConfig)
def export(run: StageRun) -> dict:
    """Export to ONNX (and int8, fp16; OpenVINO IR); verify; name each runtime's deploy form; write the artifact.

    int8: every quantization choice left at auto (stem, activation type, per-channel) is timed on every
    runtime and scored on the calibration images from the fastest on (`choose_int8_form`); each
    runtime's int8 file (model.int8.onnx for the first, model.int8.xml for OpenVINO) is the form
    fastest on it within `max_drop` points, and every candidate is recorded in metrics.json
    (`int8_candidates`, `int8_form`, `int8_choice`: the first runtime's; each runtime's under `runtimes`).
    A form a runtime cannot compile or run is recorded among its candidates with its `error` and
    skipped; the export fails only when the first runtime runs none. OpenVINO's candidates include
    NNCF's own quantization; where NNCF's file, chosen on the calibration images, loses more than the
    budget on the test split, the best QDQ form is shipped instead (`int8_fallback`).

    Verification, on every runtime measured: onnx.checker; the runtime vs PyTorch max abs difference
    at batch 1 and 8; accuracy of every exported model on the test split; fp32/int8 agreement;
    latency at batch 1 (median of 100 runs, fewer past VERIFY_BUDGET_S seconds; warm-up excluded) and at
    `latency_batch` (the median of DEPLOY_ROUNDS rounds that time every form in turn: `_time_forms`).
    fp32 is float32 on every runtime; where OpenVINO reports bf16 or fp16 support on this CPU, those are
    measured as forms of their own (the fp32 IR run in that precision). The flat keys (accuracy_int8,
    latency_ms_fp32, ...) are the first runtime's; `runtimes` holds each one's, with `forms` (those measured)
    and `deploy_form`/`deploy_file`: the fastest form at `latency_batch` within the accuracy budget (`max_drop`,
    1 point when unset; of forms within 3 % of it, the more precise: float32, then bf16 or fp16, then int8), the file
    to ship on that runtime. One warning line says where int8 is slower than fp32
    or loses more.

    An int8 model that loses more than the budget on any runtime (`max_drop`, 1 point when unset) is
    still written, marked failed, and an error raised; the same with `min_speedup`.
    """
    cfg = run.cfg
    runtimes = resolve_runtimes(cfg.runtime)
    threads = torch.get_num_threads()
    art = load_artifact(cfg.model_dir)
    learned = bool(art.spec.quantization)  # a `compress quantize` artifact: its int8 form and ranges are learned
    if learned:
        cfg = _learned_int8(cfg)
    bundle = load_bundle(cfg, art.spec)
    model = art.model.cpu().eval()
    shape = art.spec.input_shape
    x8, _ = next(iter(bundle.loader("test", 8)))
    with torch.no_grad(), qat.float_mode(model):
        ref = model(x8).numpy()
    with torch.no_grad():  # int8 is verified against the fake-quantized model
        refs = {"fp32": ref, "int8": model(x8).numpy() if learned else ref}
    test = list(bundle.loader("test", 256))
    labels = np.concatenate([y.numpy() for _, y in test])
    writer = run.writer
    shutil.copy2(art.path / MODEL_FILE, writer.path(MODEL_FILE))
    writer.write_json(SPEC_FILE, art.spec.model_copy(update={"stage": "export"}).to_json())
    metrics: dict = {"params": count_params(model), "accuracy_torch": art.metrics.get("accuracy"),
                     "latency_batch": cfg.latency_batch, "threads": threads, "runtime": runtimes[0],
                     "sparsity_note": SPARSITY_NOTE}
    calib = calibration_images(cfg, bundle) if cfg.int8 and not learned else []  # every post-training int8 file's
    variants, choices = _write_variants(cfg, model, shape, calib, writer, runtimes, threads, metrics,
                                        art.spec.quantization)
    limit = allowed_drop(cfg.max_drop)
    per_runtime: dict[str, dict] = {}
    for rt in runtimes:
        r = per_runtime[rt] = {}
        files = {kind: path for kind, path in variants.items() if kind != "int8"}
        choice = choices.get(rt)
        if choice is not None:
            r.update({"int8_form": asdict(choice.form) if choice.form else None, "fp32_nodes": choice.fp32_nodes,
                      "int8_choice": _why(choice, rt, cfg), "int8_candidates": choice.candidates})
            if choice.path is not None:
                files["int8"] = choice.path
            else:
                r["error_int8"] = r["int8_choice"]
        if rt == "openvino":
            files = {**_openvino_files(files, writer), **({"int8": files["int8"]} if "int8" in files else {})}
        forms = [(kind, path, "fp32") for kind, path in files.items()]
        forms[1:1] = [(p, files["fp32"], p) for p in reduced_float_forms(rt)]  # bf16/fp16: the fp32 file, run so
        preds = {}
        for kind, path, precision in forms:
            try:
                preds[kind] = _verify(rt, kind, path, precision, threads, test, labels, x8, refs.get(kind, ref),
                                      shape, r)
            except CompressorError as e:  # a form this runtime refuses: recorded, never the end of the export
                if kind == "fp32":
                    raise
                r[f"error_{kind}"] = str(e)
                warn(f"export: {kind} on {rt} not measured: {e}")
        if "int8" in preds and choice.fallback is not None:
            if 100 * (r["accuracy_fp32"] - r["accuracy_int8"]) > limit:
                preds["int8"] = _fall_back(rt, choice, r, limit, lambda: _verify(
                    rt, "int8", choice.path, "fp32", threads, test, labels, x8, refs["int8"], shape, r),
                    preds["int8"])
            for leftover in model_files(choice.fallback):  # already moved into place where it was shipped
                leftover.unlink(missing_ok=True)
        r["forms"] = list(preds)
        _time_forms(rt, [f for f in forms if f[0] in preds], threads, shape, cfg.latency_batch, r)
        if "int8" in preds:
            if learned:  # the int8 file against the fake-quantized PyTorch model it was written from
                r["int8_vs_torch_points"] = round(100 * (r["accuracy_int8"] - art.metrics["accuracy"]), 4)
            r["speedup_int8"] = round(r["latency_ms_fp32"] / r["latency_ms_int8"], 3)
            r["agreement_fp32_int8"] = float((preds["int8"] == preds["fp32"]).mean())
        _deploy_form(rt, r, {kind: path for kind, path, _ in forms}, limit, cfg.latency_batch)
    if cfg.int8 and "int8" not in per_runtime[runtimes[0]]["forms"]:  # it compiled, then failed to verify
        raise CompressorError(per_runtime[runtimes[0]]["error_int8"])
    metrics.update(per_runtime[runtimes[0]])
    metrics["runtimes"] = per_runtime
    metrics["cpu_flags"] = cpu_flags()
    metrics["accuracy"] = metrics["accuracy_fp32"]
    failure = None
    if cfg.int8:
        fastest = min((rt for rt in runtimes if "int8" in per_runtime[rt]["forms"]),
                      key=lambda rt: per_runtime[rt]["latency_ms_int8"])
        metrics["fastest_runtime_int8"] = fastest
        failure = _int8_metrics(cfg, variants["int8"], choices[runtimes[0]].fp32_nodes, metrics, learned)
    targets = cfg.target.split(",")[1:]  # the phone targets, measured beside the ONNX files
    if targets:
        def predictions():
            with torch.no_grad():
                return np.concatenate([model(x).argmax(1).numpy() for x, _ in test])

        torch_preds = {"int8": predictions()}
        with qat.float_mode(model):  # a quantized artifact's fp32 files: its weights without the rounding
            torch_preds["fp32"] = predictions() if learned else torch_preds["int8"]
        metrics["targets"] = {t: _phone(t, model, shape, writer, threads, test, labels, torch_preds, x8, refs,
                                        [x for x, _ in calib], limit, learned) for t in targets}
        lost = [f"int8 on {name} loses {t['accuracy_drop_points']:.2f} accuracy points (fp32 "
                f"{t['accuracy_fp32']:.4f}, int8 {t['accuracy_int8']:.4f}), more than the {limit:g}-point budget; "
                f"ship its deploy form {t['deploy_form']} ({t['deploy_file']})"
                for name, t in metrics["targets"].items() if (t.get("accuracy_drop_points") or 0) > limit]
        failure = "; ".join([failure] * bool(failure) + lost) or None
    metrics.update({"status": "failed" if failure else "ok", "failure": failure, "max_drop": cfg.max_drop,
                    "min_speedup": cfg.min_speedup, "accuracy_budget_points": limit})
    return metrics


def _fall_back(runtime: str, choice: Int8Choice, r: dict, limit: float, verify, nncf_pred):
    """NNCF's file, chosen on the calibration images, lost more than `limit` points on the test split:
    verify the best QDQ form (chosen on the same images) the same way and ship it instead, unless it
    loses as much or more (then NNCF's stays, with its figures); return the shipped file's predictions."""
    lost = round(100 * (r["accuracy_fp32"] - r["accuracy_int8"]), 4)
    nncf_figures = {k: v for k, v in r.items() if "int8" in k}
    aside = [p.with_name(f".{p.name}.nncf") for p in model_files(choice.path)]
    for src, dst in zip(model_files(choice.path), aside):
        os.replace(src, dst)
    for src, dst in zip(model_files(choice.fallback), model_files(choice.path)):
        os.replace(src, dst)
    pred = verify()
    fallback_lost = round(100 * (r["accuracy_fp32"] - r["accuracy_int8"]), 4)
    if fallback_lost >= lost:
        for src, dst in zip(aside, model_files(choice.path)):
            os.replace(src, dst)
        r.update(nncf_figures)
        r["int8_fallback"] = {"rejected": asdict(choice.fallback_form), "test_drop_points": fallback_lost}
        warn(f"int8 on {runtime}: {choice.form.label()} lost {lost:.2f} accuracy points on the test split; the best "
             f"QDQ form lost {fallback_lost:.2f}, so it stays")
        return nncf_pred
    for leftover in aside:
        leftover.unlink(missing_ok=True)
    chosen = asdict(choice.fallback_form)
    for row in r["int8_candidates"]:
        row["chosen"] = all(row.get(k) == v for k, v in chosen.items())
    r.update(int8_form=chosen, int8_fallback={"from": asdict(choice.form), "test_drop_points": lost},
             int8_choice=f"{choice.fallback_form.label()}: {choice.form.label()} lost {lost:.2f} points on the test "
                         f"split, more than {limit:g}")
    warn(f"int8 on {runtime}: {choice.form.label()} lost {lost:.2f} accuracy points on the test split; shipping "
         f"{choice.fallback_form.label()} instead ({fallback_lost:.2f})")
    choice.form = choice.fallback_form
    return pred


def _deploy_form(runtime: str, r: dict, files: dict, limit: float, batch: int) -> None:
    """Name the form to ship on `runtime`: the fastest at `batch` of those measured whose test accuracy
    is within `limit` points of fp32's (fp32 itself always is), the first listed of those within TIE of it
    (`first_within_tie`); warn where int8 is slower than fp32 or loses more than `limit`."""
    fp32_acc = r["accuracy_fp32"]
    best = first_within_tie({k: r[f"latency_ms_{k}"] for k in r["forms"]
                        if 100 * (fp32_acc - r[f"accuracy_{k}"]) <= limit})
    ov_hint = runtime == "openvino" and best in OPENVINO_PRECISION and best != "fp32"  # the fp32 IR, run so
    hint = f" with INFERENCE_PRECISION_HINT {OPENVINO_PRECISION[best]}" if ov_hint else ""
    r.update({"deploy_form": best, "deploy_file": files[best].name + hint,
              "deploy_speedup": round(r["latency_ms_fp32"] / r[f"latency_ms_{best}"], 3)})
    log(f"export: deploy form on {runtime}: {best}: {r['deploy_file']} ({r[f'latency_ms_{best}']:.2f} ms at batch "
        f"{batch}, {r['deploy_speedup']:.2f}x fp32's speed; accuracy {r[f'accuracy_{best}']:.4f})")
    if "int8" not in r["forms"]:
        return
    drop = 100 * (fp32_acc - r["accuracy_int8"])
    slow = r["latency_ms_int8"] >= r["latency_ms_fp32"]
    if slow or drop > limit:
        what = (f"is not faster than fp32 ({r['latency_ms_int8']:.2f} vs {r['latency_ms_fp32']:.2f} ms at batch {batch})"
                if slow else f"loses {drop:.2f} accuracy points ({fp32_acc:.4f} -> {r['accuracy_int8']:.4f})")
        warn(f"int8 on {runtime} {what}; ship {best} ({r['deploy_file']}, {r[f'latency_ms_{best}']:.2f} ms, "
             f"accuracy {r[f'accuracy_{best}']:.4f})")


def resolve_runtimes(choice: str) -> list[str]:
    """The runtimes to measure on; the first gives the flat figures and decides the gates."""
    if choice == "auto":
        return ["onnxruntime"] + (["openvino"] if openvino_available() else [])
    if choice in ("openvino", "all") and not openvino_available():
        raise CompressorError(OPENVINO_MISSING)
    return list(RUNTIMES) if choice == "all" else [choice]


def _learned_int8(cfg):
    """A quantized artifact's export: int8 always, in the form quantize trained; no calibration."""
    given = sorted(set(POST_TRAINING_INT8) & cfg.model_fields_set)
    if given:
        raise CompressorError(f"{', '.join(cfg.flag_of(g) for g in given)}: {cfg.model_dir} was quantized by compress "
                              "quantize; its int8 form and ranges are the ones it learned")
    if not cfg.int8:
        log("export: a quantized model (compress quantize): writing its int8 files too")
    return cfg.model_copy(update={"int8": True})


def _write_learned(model, shape, outputs: dict) -> dict[str, Int8Choice]:
    """The QDQ file of a fake-quantized model (its scales and zero points as learned): model.int8.onnx,
    and OpenVINO's IR of it."""
    qdq = outputs.get("onnxruntime") or outputs["openvino"].with_suffix(".onnx")
    export_qdq(model, qdq, shape)
    if "openvino" in outputs:
        save_openvino_ir(qdq, outputs["openvino"])
    kept = float_convs(qdq)
    if "onnxruntime" not in outputs:
        qdq.unlink()
    return {rt: Int8Choice(LEARNED_FORM, path, kept, []) for rt, path in outputs.items()}


def calibration_images(cfg, bundle) -> list[tuple[np.ndarray, np.ndarray]]:
    """The images post-training int8 is calibrated on (`common.training_sample`): `calibration_batches`
    batches of 64 in the order `seed` gives, with their labels."""
    return training_sample(bundle, cfg.seed, cfg.calibration_batches)


def layers_writer(model, shape, calibration):
    """A function writing the post-training form of compress quantize's scheme (LAYERS_FORM) to a path:
    BatchNorm folded, ranges from the calibration images, no fine-tuning."""
    return lambda path: qat.write_calibrated(model, shape, [torch.from_numpy(x) for x, _ in calibration], path)


def _write_variants(cfg, model, shape, calib, writer, runtimes: list[str], threads: int, metrics: dict,
                    structure: dict) -> tuple[dict, dict[str, Int8Choice]]:
    fp32 = writer.path("model.onnx")
    with qat.float_mode(model):  # a quantized artifact's fp32 file: its weights without the rounding
        export_onnx(model, fp32, shape)
    variants, choices = {"fp32": fp32}, {}
    if cfg.int8 and structure:
        outputs = {rt: writer.path("model.int8.onnx" if rt == "onnxruntime" else "model.int8.xml") for rt in runtimes}
        variants["int8"] = outputs[runtimes[0]]
        choices = _write_learned(model, shape, outputs)
        metrics["per_channel"] = True
        log(f"export: int8 form {LEARNED_FORM.label()}")
    elif cfg.int8:
        # onnxruntime's form is model.int8.onnx, OpenVINO's its IR model.int8.xml (+ .bin)
        outputs = {rt: writer.path("model.int8.onnx" if rt == "onnxruntime" else "model.int8.xml") for rt in runtimes}
        variants["int8"] = outputs[runtimes[0]]
        choices = choose_int8_form(fp32, outputs, calib, stem=cfg.stem, activations=cfg.activations,
                                   per_channel=cfg.per_channel, method=cfg.calibration_method, threads=threads,
                                   batch=cfg.latency_batch, max_drop=cfg.max_drop,
                                   write_layers=layers_writer(model, shape, calib))
        for rt, c in choices.items():
            if c.form is None:
                warn(f"export: no int8 file for {rt}: {_why(c, rt, cfg)}")
            else:
                log(f"export: int8 form on {rt}: {c.form.label()} ({_why(c, rt, cfg)})")
        first = choices[runtimes[0]]
        if first.form is None:  # what the user asked for runs nowhere it was asked to
            raise CompressorError(f"no int8 file: {_why(first, runtimes[0], cfg)}")
        metrics.update({"calibration_batches": len(calib), "calibration_method": cfg.calibration_method,
                        "per_channel": first.form.per_channel})
        if cfg.stem == "fp32" and not first.fp32_nodes:
            log("export: --stem fp32: no Conv on a <=4-channel input followed by a MaxPool; all int8")
    if cfg.fp16:
        variants["fp16"] = writer.path("model.fp16.onnx")
        convert_fp16(fp32, variants["fp16"])
    return variants, choices


def _why(choice: Int8Choice, runtime: str, cfg) -> str:
    candidates = choice.candidates
    refused = sum("error" in c for c in candidates)
    said = f"; {refused} refused by {runtime}" if refused else ""
    if choice.form is None:
        return f"{runtime} runs none of the {len(candidates)} int8 forms measured: {choice.error}"
    if choice.form is LEARNED_FORM:
        return "the ranges compress quantize learned"
    if not candidates:
        return "every choice given"
    limit = allowed_drop(cfg.max_drop)
    chosen = next(c for c in candidates if c.get("chosen"))
    if not chosen["within_drop"]:
        return (f"no candidate within {limit} points on the calibration images; kept the most accurate of "
                f"{len(candidates) - refused}{said}")
    return (f"fastest of {len(candidates) - refused} candidates within {limit} points on the calibration images: "
            f"{chosen['latency_ms']:.2f} ms at batch {cfg.latency_batch} on {runtime}{said}")


def _openvino_files(variants: dict, writer) -> dict:
    """The IR of the fp32 ONNX model (fp16 stays ONNX-only; int8 is written as IR where it is chosen)."""
    xml = writer.path("model.xml")
    save_openvino_ir(variants["fp32"], xml)
    return {"fp32": xml}


def _verify(runtime: str, kind: str, path, precision: str, threads: int, test, labels, x8, ref, shape,
            metrics: dict):
    """Accuracy, difference from PyTorch, latency at batch 1 and sizes of one exported model on one runtime, its
    float layers run in `precision` (OpenVINO's bf16/fp16 forms run the fp32 file so)."""
    sess = session(path, threads, runtime, precision)
    logits, _ = predict_batches(sess, test, f"export: {kind} on {runtime}")
    pred = logits.argmax(1)
    size = sum(p.stat().st_size for p in model_files(path))
    metrics.update({
        f"accuracy_{kind}": float((pred == labels).mean()),
        f"max_abs_diff_{kind}": _max_diff(sess, x8.numpy(), ref, batch=8),
        f"max_abs_diff_{kind}_batch1": _max_diff_one_at_a_time(session(path, threads, runtime, precision, static=False),
                                                               x8.numpy(), ref),
        f"latency_ms_{kind}_batch1": latency_ms(sess, shape, 1, runs=100, budget_s=VERIFY_BUDGET_S),
        f"size_bytes_{kind}": size, f"zipped_bytes_{kind}": zipped_size(path) if path.suffix == ".onnx" else None})
    if isinstance(sess, OpenVINOSession):
        metrics[f"inference_precision_{kind}"] = sess.precision  # what OpenVINO says it ran the float layers in
    log(f"export: {kind} on {runtime}: accuracy {metrics[f'accuracy_{kind}']:.4f}, max abs diff vs PyTorch "
        f"{metrics[f'max_abs_diff_{kind}']:.2e}, latency {metrics[f'latency_ms_{kind}_batch1']:.3f} ms at batch 1, "
        f"{size:,} bytes")
    return pred


def _time_forms(runtime: str, forms: list[tuple[str, object, str]], threads: int, shape, batch: int,
                metrics: dict) -> None:
    """Each (form, file, precision)'s latency at `batch` into `metrics`: the median over DEPLOY_ROUNDS
    rounds, the forms timed in turn in every round, one session alive at a time. The deploy form is
    chosen on these figures, and forms timed one after another compare through the machine's drift
    between them (on a 2-core VM a pruned MobileNetV3-Small's OpenVINO int8 file read 1.94x its float32
    file timed so, 1.43x in interleaved rounds; another's int8 read faster than float32 and ran slower)."""
    times = interleaved_ms([lambda p=path, q=precision: session(p, threads, runtime, q) for _, path, precision in forms],
                           shape, batch, DEPLOY_ROUNDS, budget_s=VERIFY_BUDGET_S / DEPLOY_ROUNDS)
    metrics.update({f"latency_ms_{kind}": float(np.median(t)) for (kind, _, _), t in zip(forms, times)})
    log(f"export: latency on {runtime} at batch {batch} (median of {DEPLOY_ROUNDS} interleaved rounds): "
        + ", ".join(f"{kind} {metrics[f'latency_ms_{kind}']:.2f} ms" for kind, _, _ in forms))


def _int8_metrics(cfg, int8_path, kept_fp32, metrics: dict, learned: bool) -> str | None:
    """The int8 model's checks; the failure message when an int8 file (on any runtime) loses more
    than --max-drop points (1 point when unset: a default never ships a broken int8 model with exit 0),
    or is less than --min-speedup times as fast as fp32 (first runtime)."""
    if int8_path.suffix == ".onnx":  # the QDQ graph (with --runtime openvino alone: an IR)
        ops = op_counts(int8_path)
        metrics.update({"qdq_ops": {k: v for k, v in ops.items() if k in ("QuantizeLinear", "DequantizeLinear")},
                        "convs_wrapped_in_qdq": convs_wrapped_in_qdq(int8_path, skip=kept_fp32)})
    metrics.update({
        "fp32_nodes": kept_fp32,
        "accuracy_drop_points": round(100 * (metrics["accuracy_fp32"] - metrics["accuracy_int8"]), 4)})
    limit = allowed_drop(cfg.max_drop)
    budget = f"--max-drop {cfg.max_drop}" if cfg.max_drop is not None else f"the {limit:g}-point budget (--max-drop unset)"
    failures = []
    for rt, r in metrics["runtimes"].items():
        if "int8" not in r["forms"]:
            continue
        drop = round(100 * (r["accuracy_fp32"] - r["accuracy_int8"]), 4)
        r["accuracy_drop_points"] = drop
        if drop > limit:
            failures.append(f"int8 on {rt} loses {drop:.2f} accuracy points (fp32 {r['accuracy_fp32']:.4f}, int8 "
                            f"{r['accuracy_int8']:.4f}), more than {budget}; {_remedy(learned)}, or ship {rt}'s deploy "
                            f"form {r['deploy_form']} ({r['deploy_file']})")
    if cfg.min_speedup is not None and metrics["speedup_int8"] < cfg.min_speedup:
        failures.append(f"int8 model is {metrics['speedup_int8']:.2f}x as fast as fp32 at batch {cfg.latency_batch} "
                        f"({metrics['latency_ms_int8']:.2f} vs {metrics['latency_ms_fp32']:.2f} ms, "
                        f"{metrics['runtime']}), less than --min-speedup {cfg.min_speedup}")
    return "; ".join(failures) or None


def _remedy(learned: bool) -> str:
    if learned:
        return "fine-tune it longer (compress quantize --epochs)"
    return ("run compress quantize on the model (int8 fine-tuning, distilled from it, recovers what calibration loses) "
            "and export that; or try --calibration-method percentile or more --calibration-batches")


PHONE_INT8_FORMS = ("all layers", "squeeze-excitation gates in float32")  # the second only for models with gates
LEARNED_PHONE_FORM = "the layers and ranges compress quantize learned"


def _phone_programs(target: str, model, shape, calib: list, learned: bool) -> dict:
    """The PyTorch programs a phone target's files are written from: fp32 (a quantized artifact's
    without its rounding), and the int8 forms to try in order, each a function returning (quantized
    program, quantizer): a quantized artifact's learned layers and ranges; else, on the calibration
    images, every layer, then (for a model with squeeze-and-excitation gates) those gates in float32."""
    if learned:
        return {"fp32": qat.float_copy(model).eval(), "int8": [(LEARNED_PHONE_FORM,
                                                                lambda: quantize_learned(target, model, shape))]}
    gates = gate_types(model)
    forms = list(zip(PHONE_INT8_FORMS, [(), gates]))[:1 + bool(gates)]
    return {"fp32": model, "int8": [(form, lambda floats=floats: quantize_pt2e(target, model, shape, calib, floats))
                                    for form, floats in forms] if calib else []}


def _phone(target: str, model, shape, writer, threads: int, test, labels, torch_preds: dict, x8, refs: dict,
           calib: list, limit: float, learned: bool) -> dict:
    """A phone target's files (`phones.FILES`): fp32, and int8 (by PT2E on the calibration images where
    `calib` is given; from the learned ranges for a quantized artifact), each run here by the target's
    runtime: test accuracy, agreement with PyTorch (`torch_preds`, per kind: a quantized artifact's int8
    file against the fake-quantized model), latency at batch 1, sizes, what the XNNPACK delegate took;
    the deploy form: the fastest at batch 1 within `limit` points of fp32. A post-training int8 file that
    loses more than `limit` (or that the converter refuses) is written again with the model's squeeze-and-excitation
    gates left in float32, where it has any, and the first within the budget (else the more accurate) is
    kept: `int8_form`, with every try in `int8_candidates`."""
    r: dict = {"batch": 1}
    programs = _phone_programs(target, model, shape, calib, learned)
    files = {kind: writer.path(name) for kind, name in FILES[target].items() if kind == "fp32" or programs["int8"]}

    def within_budget(accuracy: float) -> bool:  # against this target's fp32 file
        return 100 * (r["accuracy_fp32"] - accuracy) <= limit

    for kind, path in list(files.items()):
        if kind == "int8" and "fp32" not in files:  # nothing to measure it against: not shipped on this target
            del files[kind]
            continue
        forms = [(None, lambda: (programs["fp32"], None))] if kind == "fp32" else programs["int8"]
        tried: list = []  # (figures or error, the file's path) per form tried
        for i, (form, make) in enumerate(forms):
            where = path if i == 0 else path.with_name(f"{path.stem}.{i}{path.suffix}")  # kept apart until chosen
            try:
                program, quantizer = make()
                figures = _phone_file(target, kind, program, quantizer, where, threads, shape, test, labels,
                                      torch_preds[kind], x8, refs[kind])
            except Exception as e:  # noqa: BLE001 - a converter or runtime that refuses this model: recorded, never the end
                where.unlink(missing_ok=True)
                tried.append(({"form": form, "error": error_line(e) if not isinstance(e, CompressorError) else str(e)},
                              where))
                continue
            tried.append(({"form": form, **figures}, where))
            if kind == "fp32" or within_budget(figures["accuracy"]):
                break
            if i + 1 < len(forms):
                log(f"export: int8 on {target} loses {100 * (r['accuracy_fp32'] - figures['accuracy']):.2f} points; "
                    f"trying {forms[i + 1][0]}")
        done = [(t, w) for t, w in tried if "error" not in t]
        if not done:
            r[f"error_{kind}"] = tried[0][0]["error"]
            warn(f"export: {kind} on {target} not written: {r[f'error_{kind}']}")
            del files[kind]
            continue
        chosen, where = next(((t, w) for t, w in done if kind == "fp32" or within_budget(t["accuracy"])),
                             max(done, key=lambda tw: tw[0]["accuracy"]))
        for _, w in done:
            if w != where:
                w.unlink(missing_ok=True)
        os.replace(where, path)
        if kind == "int8":
            r["int8_form"] = chosen["form"]
            r["int8_candidates"] = [{k: v for k, v in t.items() if k in ("form", "error", "accuracy", "latency_ms_batch1")}
                                    for t, _ in tried]
        d = chosen["delegation"]
        r.update({f"accuracy_{kind}": chosen["accuracy"], f"agreement_torch_{kind}": chosen["agreement_torch"],
                  f"max_abs_diff_{kind}_batch1": chosen["max_abs_diff_batch1"],
                  f"latency_ms_{kind}_batch1": chosen["latency_ms_batch1"], f"size_bytes_{kind}": chosen["size_bytes"],
                  f"zipped_bytes_{kind}": chosen["zipped_bytes"], f"delegation_{kind}": d})
        named = f" ({chosen['form']})" if len(forms) > 1 else ""
        log(f"export: {kind} on {target}{named}: "
            f"accuracy {r[f'accuracy_{kind}']:.4f}, agreement with PyTorch "
            f"{r[f'agreement_torch_{kind}']:.4f}, latency {r[f'latency_ms_{kind}_batch1']:.3f} ms at batch 1, "
            f"{r[f'size_bytes_{kind}']:,} bytes; XNNPACK took {delegated_share(d)} operators "
            f"({d['partitions']} partitions)")
    r["forms"] = list(files)
    if "fp32" not in files:  # nothing written: the int8 file, with nothing to measure it against, was skipped
        return r
    if "int8" in files:
        r["accuracy_drop_points"] = round(100 * (r["accuracy_fp32"] - r["accuracy_int8"]), 4)
        if learned:  # the int8 file against the fake-quantized PyTorch model it was written from
            torch_accuracy = float((torch_preds["int8"] == labels).mean())
            r["int8_vs_torch_points"] = round(100 * (r["accuracy_int8"] - torch_accuracy), 4)
    best = first_within_tie({k: r[f"latency_ms_{k}_batch1"] for k in r["forms"] if within_budget(r[f"accuracy_{k}"])})
    r.update({"deploy_form": best, "deploy_file": files[best].name,
              "deploy_speedup": round(r["latency_ms_fp32_batch1"] / r[f"latency_ms_{best}_batch1"], 3)})
    log(f"export: deploy form on {target}: {best}: {files[best].name} ({r[f'latency_ms_{best}_batch1']:.3f} ms at "
        f"batch 1, {r['deploy_speedup']:.2f}x fp32's speed; accuracy {r[f'accuracy_{best}']:.4f})")
    if "int8" in files and r["latency_ms_int8_batch1"] >= r["latency_ms_fp32_batch1"]:
        warn(f"int8 on {target} is not faster than fp32 ({r['latency_ms_int8_batch1']:.3f} vs "
             f"{r['latency_ms_fp32_batch1']:.3f} ms at batch 1); ship {best} ({files[best].name})")
    return r


def _phone_file(target: str, kind: str, program, quantizer, path, threads: int, shape, test, labels, torch_pred, x8,
                ref) -> dict:
    """`program` written as `target`'s file at `path` and run by its runtime: its figures (keys without
    the form's suffix) and `delegation`, what XNNPACK took."""
    d = write_phone(target, program, path, shape, quantizer)
    sess = phone_session(target, path, threads, shape)
    logits, _ = predict_batches(sess, test, f"export: {kind} on {target}")
    pred = logits.argmax(1)
    return {"accuracy": float((pred == labels).mean()), "agreement_torch": float((pred == torch_pred).mean()),
            "max_abs_diff_batch1": _max_diff(sess, x8.numpy(), ref, batch=len(x8)),
            "latency_ms_batch1": latency_ms(sess, shape, 1, runs=100, budget_s=VERIFY_BUDGET_S),
            "size_bytes": path.stat().st_size, "zipped_bytes": zipped_size(path), "delegation": d}


def _max_diff(sess, x: np.ndarray, ref: np.ndarray, batch: int) -> float:
    out = sess(x[:batch])
    return float(np.abs(out - ref[:batch]).max())


def _max_diff_one_at_a_time(sess, x: np.ndarray, ref: np.ndarray) -> float:
    """Largest difference from `ref` over the images of `x` run one at a time in the file as read
    (OpenVINO: its batch dynamic, as `compile_model(path)` serves single requests)."""
    return max(_max_diff(sess, x[i:i + 1], ref[i:i + 1], batch=1) for i in range(len(x)))
