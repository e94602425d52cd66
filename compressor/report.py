"""Summaries of a run directory: one row per stage with accuracy, params, zipped size, latency."""

from __future__ import annotations

from pathlib import Path

from compressor import CompressorError
from compressor.artifacts import METRICS_FILE, MODEL_FILE, read_json, zipped_size

ORDER = ("teach", "select", "distill", "prune", "export")


def stage_dirs(run_dir: str | Path) -> list[Path]:
    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise CompressorError(f"run directory {run} does not exist")
    dirs = [d for d in run.iterdir() if d.is_dir() and (d / METRICS_FILE).is_file() and not d.name.startswith(".")]
    if not dirs:
        raise CompressorError(f"{run} holds no complete stage artifacts (directories with {METRICS_FILE})")

    def rank(d: Path):
        base = d.name.split("-")[0]
        return (ORDER.index(base) if base in ORDER else len(ORDER), d.name)

    return sorted(dirs, key=rank)


def summary_rows(run_dir: str | Path) -> list[dict]:
    rows = []
    for d in stage_dirs(run_dir):
        m = read_json(d / METRICS_FILE)
        row = {"stage": d.name, "accuracy": m.get("accuracy"), "params": m.get("params"),
               "teacher_accuracy": m.get("teacher_accuracy"), "agreement": m.get("agreement"),
               "control_accuracy": m.get("control_accuracy"), "sparsity": m.get("sparsity"),
               "zipped_bytes": None, "accuracy_int8": m.get("accuracy_int8"),
               "latency_ms_fp32": m.get("latency_ms_fp32"), "latency_ms_int8": m.get("latency_ms_int8"),
               "status": m.get("status", "ok")}
        if "zipped_bytes_int8" in m:
            row["zipped_bytes"] = m["zipped_bytes_int8"]
        elif "zipped_bytes_fp32" in m:
            row["zipped_bytes"] = m["zipped_bytes_fp32"]
        elif "zipped_bytes" in m:  # recorded when the stage wrote model.safetensors
            row["zipped_bytes"] = m["zipped_bytes"]
        elif (d / MODEL_FILE).is_file():  # artifacts written before sizes were recorded
            row["zipped_bytes"] = zipped_size(d / MODEL_FILE)
        rows.append(row)
    return rows


def summary_table(rows: list[dict], title: str):
    """Stage, accuracy, params, zipped size, int8 accuracy and latency; distillation and pruning notes."""
    from rich.table import Table

    t = Table(title=title)
    for col in ("stage", "accuracy", "params", "zipped", "int8 acc", "int8 ms", "fp32 ms", "notes"):
        t.add_column(col, justify="left" if col in ("stage", "notes") else "right")

    def f(v, fmt):
        return "" if v is None else fmt.format(v)

    for r in rows:
        notes = []
        if r["agreement"] is not None:
            notes.append(f"agreement {r['agreement']:.4f}")
        if r["control_accuracy"] is not None:
            notes.append(f"alone {r['control_accuracy']:.4f}")
        if r["sparsity"] is not None:
            notes.append(f"sparsity {r['sparsity']:.3f}")
        if r["status"] != "ok":
            notes.append(str(r["status"]).upper())
        t.add_row(r["stage"], f(r["accuracy"], "{:.4f}"), f(r["params"], "{:,}"), _size(r["zipped_bytes"]),
                  f(r["accuracy_int8"], "{:.4f}"), f(r["latency_ms_int8"], "{:.2f}"), f(r["latency_ms_fp32"], "{:.2f}"),
                  ", ".join(notes))
    t.caption = ("accuracy: test split; zipped: model.safetensors, or the int8 ONNX for export; "
                 "ms: onnxruntime CPU latency at batch 64; alone: the student trained without the teacher")
    return t


def _size(n) -> str:
    if n is None:
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
