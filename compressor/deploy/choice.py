"""The int8 form chosen by measuring: every candidate form quantized, timed on each runtime in
interleaved rounds, scored on the calibration images from the fastest on; the fastest within the
accuracy budget is kept, per runtime."""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from compressor import CompressorError
from compressor.console import progress
from compressor.deploy.graph import error_line, float_convs, input_shape_of
from compressor.deploy.int8 import (LAYERS_FORM, NNCF_FORM, Int8Form, check_calibration_method, has_int8_stem_choice,
                                    nncf_available, preprocess, quantize_nncf, quantize_preprocessed, write_int8)
from compressor.deploy.runtimes import fast_ms, pass_times, session

TIE = 0.03  # latencies within 3 % of the fastest count as equal: the first form listed of those wins
SLOW = 1.5  # a form over 1.5x the fastest's first-round latency on a runtime is timed once there, not every round
K = TypeVar("K")
AUTO_DROP_POINTS = 1.0  # the accuracy a candidate form may lose on the calibration images when --max-drop is unset


def first_within_tie(latency_ms: dict[K, float]) -> K:
    """Of forms and their latencies, listed in the order of preference (deploy forms: fp32 first, then the
    reduced floats, int8 last), the first within TIE of the fastest. Closer than that the timings cannot
    order them, so noise does not flip the choice and the same model names the same form from one run to
    the next."""
    fastest = min(latency_ms.values())
    return next(form for form, ms in latency_ms.items() if ms <= fastest * (1 + TIE))


def allowed_drop(max_drop: float | None) -> float:
    """The points of calibration accuracy an int8 form may lose: --max-drop, else AUTO_DROP_POINTS."""
    return AUTO_DROP_POINTS if max_drop is None else max_drop


@dataclass
class Int8Choice:
    """The int8 form kept for one runtime, the file it was written to, the nodes it leaves float32,
    and every candidate measured (empty when every choice was given). Where the runtime could run
    none of the forms, `form` and `path` are None and `error` says why (the first form's reason)."""

    form: Int8Form | None
    path: Path | None
    fp32_nodes: list[str]
    candidates: list[dict]
    error: str | None = None
    fallback: Path | None = None  # where the form is NNCF's: the best QDQ form, written beside it (hidden)
    fallback_form: Int8Form | None = None


def _refusal(e: Exception, path: Path) -> str:
    """Why a runtime refused a candidate file, without the temporary file's name."""
    msg = str(e) if isinstance(e, CompressorError) else error_line(e)
    return msg.split(f"{path}: ", 1)[-1]


def choose_int8_form(fp32_path: Path, outputs: dict[str, Path], calibration: list[tuple[np.ndarray, np.ndarray]],
                     stem: str = "auto", activations: str = "auto", per_channel: bool | None = None,
                     method: str = "minmax", threads: int | None = None, batch: int = 64,
                     max_drop: float | None = None, rounds: int = 3, runs: int = 10,
                     budget_s: float = 0.5, write_layers=None, stage: str = "export") -> dict[str, Int8Choice]:
    """Quantize every form the choices left open ("auto" / None) once, time each on every runtime of
    `outputs` (latency at `batch`, `rounds` interleaved rounds, one session alive at a time), and
    write to each runtime's path the form fastest on that runtime whose accuracy on the calibration
    images (against their labels) is within `max_drop` points of fp32's (AUTO_DROP_POINTS when
    None); with none within, the most accurate. On OpenVINO a form's accuracy is the lower of its
    static-shape batches and of one image at a time in the file as read (dynamic batch), the way
    `compile_model(path)` serves single requests: OpenVINO computes some int8 files wrongly that way.
    The runtimes may choose different forms: their kernels differ (onnxruntime's int8 convolution of
    a 1-channel image is slow, OpenVINO's is not, so the stem can be float32 for one and int8 for the
    other). Forms
    within TIE of the fastest count as equally fast, and the first listed wins (stem int8 before fp32,
    u8 before s8, per-channel before per-tensor), so noise does not flip the choice. Where a path of
    `outputs` is an OpenVINO IR (.xml), every choice is left open and NNCF is installed, NNCF's own
    quantization of the model (`NNCF_FORM`) is one more candidate there (on OpenVINO alone); an ONNX
    form chosen for an .xml path is written as its IR. With every choice open and `write_layers` (a
    function writing that QDQ file to a path), `LAYERS_FORM` is one more candidate on every runtime.

    Little is measured that would not change the choice (at 224 px each pass is a second or more): a
    form over SLOW times the fastest in the first round is not timed again on that runtime (its
    `latency_rounds` says how often it was; it is chosen only if every faster form fails the drop,
    then on that one timing), and accuracy is scored from the fastest form on, up to
    the fastest within the drop and those within TIE of it (the others' `calibration_accuracy`,
    `drop_points` and `within_drop` are None). Each round times `runs` passes, fewer where they would
    take more than `budget_s` seconds, at least 3; a form's latency is its fast passes over the rounds
    (`fast_ms`), which a neighbour's burst on a shared machine does not move.
    """
    if not calibration:
        raise CompressorError("int8 quantization needs at least one calibration batch")
    check_calibration_method(method)
    xs = [x for x, _ in calibration]
    labels = np.concatenate([y for _, y in calibration])
    runtimes = list(outputs)
    first = Path(outputs[runtimes[0]])
    with tempfile.TemporaryDirectory(dir=first.parent) as tmp:
        tmp = Path(tmp)
        pre = preprocess(fp32_path, tmp)
        stems = [stem] if stem != "auto" else (["int8", "fp32"] if has_int8_stem_choice(pre) else ["int8"])
        acts = [activations] if activations != "auto" else ["u8", "s8"]
        chans = [per_channel] if per_channel is not None else [True, False]
        forms = [Int8Form(s, a, c) for s in stems for a in acts for c in chans]
        all_open = (stem, activations, per_channel) == ("auto", "auto", None)
        forms += [LAYERS_FORM] if all_open and write_layers is not None else []
        with_nncf = nncf_available() and all_open and any(Path(p).suffix == ".xml" for p in outputs.values())
        if len(forms) == 1:
            only = tmp / "candidate0.onnx"
            excluded = quantize_preprocessed(pre, only, xs, forms[0], method)
            choices = {}
            for rt in runtimes:
                try:
                    session(only, threads, rt)
                except Exception as e:  # noqa: BLE001 - a runtime that cannot compile the form: recorded
                    row = {**asdict(forms[0]), "fp32_nodes": excluded, "error": _refusal(e, only)}
                    choices[rt] = Int8Choice(None, None, excluded, [row], error=row["error"])
                    continue
                write_int8(only, Path(outputs[rt]))
                choices[rt] = Int8Choice(forms[0], Path(outputs[rt]), excluded, [])
            return choices

        def calibration_accuracy(path: Path, runtime: str) -> tuple[float, float | None]:
            """Accuracy on the calibration images; on OpenVINO also one image at a time in the file as
            read (its batch dynamic), as `compile_model(path)` serves requests: the lower counts."""
            sess = session(path, threads, runtime)
            acc = float((np.concatenate([sess(x) for x in xs]).argmax(1) == labels).mean())
            if runtime != "openvino":
                return acc, None
            loaded = session(path, threads, runtime, static=False)
            one = np.concatenate([loaded(x[i:i + 1]) for x in xs for i in range(len(x))])
            acc_one = float((one.argmax(1) == labels).mean())
            return min(acc, acc_one), acc_one

        def score(row: dict, path: Path, runtime: str, fp32_acc: float) -> bool:
            """Score one candidate on the calibration images into its row; False where it fails to run."""
            try:
                acc, as_read = calibration_accuracy(path, runtime)
            except Exception as e:  # noqa: BLE001 - compiled, then failed to run: not a candidate either
                row.update(error=_refusal(e, path), latency_ms=None)
                return False
            drop = round(100 * (fp32_acc - acc), 4)
            row.update(calibration_accuracy=acc, drop_points=drop, within_drop=drop <= limit)
            if as_read is not None:
                row["calibration_accuracy_batch1_dynamic"] = as_read
            return True

        paths, excluded = [], []
        n_onnx = len(forms)
        forms += [NNCF_FORM] if with_nncf else []
        n, limit = len(forms), allowed_drop(max_drop)
        steps = n + rounds * n * len(runtimes) + len(runtimes) * (1 + n)  # at most: rounds and scores are skipped
        with progress(f"{stage}: {n} int8 candidates", steps) as bar:
            for i, form in enumerate(forms):
                if form.quantizer == "nncf":
                    paths.append(tmp / f"candidate{i}.xml")
                    quantize_nncf(fp32_path, paths[-1], xs)
                    excluded.append([])
                elif form.quantizer == "layers":
                    paths.append(tmp / f"candidate{i}.onnx")
                    write_layers(paths[-1])
                    excluded.append(float_convs(paths[-1]))
                else:
                    paths.append(tmp / f"candidate{i}.onnx")
                    excluded.append(quantize_preprocessed(pre, paths[-1], xs, form, method,
                                                           ranges=tmp / f"ranges-{form.stem}.json"))
                bar.advance(1, f"quantized {form.label()}")

            def applies(i: int, rt: str) -> bool:  # an IR candidate is OpenVINO's alone, for its IR output
                return i < n_onnx or (rt == "openvino" and Path(outputs[rt]).suffix == ".xml")

            shape = input_shape_of(fp32_path)
            times = {rt: [[] for _ in forms] for rt in runtimes}
            errors: dict[str, dict[int, str]] = {rt: {} for rt in runtimes}  # forms a runtime cannot compile or run
            first: dict[str, dict[int, float]] = {}  # each form's first-round latency per runtime, after round 1
            for r in range(rounds):
                if r == 1:
                    first = {rt: {i: fast_ms(t[:1]) for i, t in enumerate(times[rt]) if t} for rt in runtimes}
                for i, path in enumerate(paths):
                    for rt in runtimes:
                        if (not applies(i, rt) or i in errors[rt]
                                or (r and first[rt][i] > SLOW * min(first[rt].values()))):
                            continue  # refused, or far slower than the fastest: not timed again on this runtime
                        try:
                            sess = session(path, threads, rt)  # one live session at a time: idle threads spin
                            times[rt][i].append(pass_times(sess, shape, batch, runs=runs, warmup=2, budget_s=budget_s))
                        except Exception as e:  # noqa: BLE001 - not a candidate on this runtime; never the end of the export
                            errors[rt][i] = _refusal(e, path)
                        sess = None
                        bar.advance(1, f"latency round {r + 1}/{rounds}")
            choices = {}
            for rt in runtimes:
                rows = [{**asdict(form), "calibration_accuracy": None, "drop_points": None, "fp32_nodes": nodes,
                         "latency_ms": fast_ms(t) if t else None, "latency_rounds": len(t),
                         "within_drop": None, **({"error": errors[rt][i]} if i in errors[rt] else {})}
                        for i, (form, nodes, t) in enumerate(zip(forms, excluded, times[rt]))]
                rows = [row if applies(i, rt) else None for i, row in enumerate(rows)]  # placeholders: indices stay
                fp32_acc, _ = calibration_accuracy(fp32_path, rt)
                bar.advance(1, f"accuracy on {rt}")
                fastest = None  # the fastest form within the drop; forms are scored from the fastest on
                for i in sorted((i for i in range(n) if rows[i] and "error" not in rows[i]),
                                key=lambda i: rows[i]["latency_ms"]):
                    if fastest is not None and rows[i]["latency_ms"] > fastest * (1 + TIE):
                        break  # slower than the fastest form within the drop: never chosen, never scored
                    if not score(rows[i], paths[i], rt, fp32_acc):
                        continue
                    if fastest is None and rows[i]["within_drop"]:
                        fastest = rows[i]["latency_ms"]
                    bar.advance(1, f"accuracy on {rt}")
                ran = [i for i in range(n) if rows[i] and "error" not in rows[i]]
                if not ran:
                    choices[rt] = Int8Choice(None, None, [], [row for row in rows if row], error=rows[0]["error"])
                    continue
                if fastest is not None:  # among forms within TIE of the fastest, the first listed (this close is noise)
                    best = first_within_tie({i: rows[i]["latency_ms"] for i in ran if rows[i]["within_drop"]})
                else:  # none within: every form that runs was scored; the most accurate
                    best = max(ran, key=lambda i: rows[i]["calibration_accuracy"])
                rows[best]["chosen"] = True
                write_int8(paths[best], Path(outputs[rt]))
                choices[rt] = Int8Choice(forms[best], Path(outputs[rt]), excluded[best], [row for row in rows if row])
                if forms[best].quantizer == "nncf":  # the QDQ form to ship should NNCF's lose more on the test split
                    qdq = [i for i in sorted(range(n_onnx), key=lambda i: rows[i]["latency_ms"] or float("inf"))
                           if "error" not in rows[i]]
                    for i in qdq:
                        if (rows[i]["calibration_accuracy"] is not None or score(rows[i], paths[i], rt, fp32_acc)) \
                                and rows[i]["within_drop"]:
                            break
                    scored = [i for i in qdq if rows[i].get("calibration_accuracy") is not None]
                    if scored:
                        alt = next((i for i in scored if rows[i]["within_drop"]),
                                   max(scored, key=lambda i: rows[i]["calibration_accuracy"]))
                        out = Path(outputs[rt])
                        fallback = out.with_name(f".{out.stem}.fallback{out.suffix}")
                        write_int8(paths[alt], fallback)
                        choices[rt].fallback, choices[rt].fallback_form = fallback, forms[alt]
            bar.complete("done")
        return choices
