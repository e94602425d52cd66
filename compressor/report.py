"""Summaries of a run directory: the stage table (accuracy, params, zipped size, latency) and
report.md with the studies' tables and pictures (hard/soft accuracy, right/wrong cross table,
images where the student beats its teacher, learning curves)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import torch

from compressor import CompressorError
from compressor.artifacts import (CONTROL_FILE, METRICS_FILE, MODEL_FILE, SPEC_FILE, atomic_write_bytes, load_artifact,
                                  load_state_dict, read_json, recorded_model_sizes)
from compressor.data import load_data
from compressor.models import ModelSpec, build_from_spec
from compressor.provenance import lineage_line, locate_input
from compressor.tables import Table, fmt
from compressor.training import predict

ORDER = ("teach", "select", "distill", "prune", "quantize", "export")


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
               "status": m.get("status", "ok"), "deploy_form": m.get("deploy_form"),
               # what the stage started from: prune's model before pruning, quantize's float model, export's PyTorch model
               "input_accuracy": m.get("accuracy_before", m.get("accuracy_float", m.get("accuracy_torch"))),
               "accuracy_calibrated": m.get("accuracy_calibrated")}
        if "zipped_bytes_int8" in m:
            row["zipped_bytes"] = m["zipped_bytes_int8"]
        elif "zipped_bytes_fp32" in m:
            row["zipped_bytes"] = m["zipped_bytes_fp32"]
        elif "zipped_bytes" in m or (d / MODEL_FILE).is_file():
            row["zipped_bytes"] = recorded_model_sizes(d, m)[1]
        rows.append(row)
        for rt, values in list((m.get("runtimes") or {}).items())[1:]:  # export: the other runtimes' figures
            rows.append({**{k: None for k in row}, "stage": f"{d.name} ({rt})", "status": row["status"],
                         "input_accuracy": row["input_accuracy"], "accuracy": values.get("accuracy_fp32"),
                         "accuracy_int8": values.get("accuracy_int8"),
                         "latency_ms_fp32": values.get("latency_ms_fp32"),
                         "latency_ms_int8": values.get("latency_ms_int8"), "deploy_form": values.get("deploy_form")})
        for target, values in (m.get("targets") or {}).items():  # export --target: the phone files, batch 1
            forms = values.get("forms", [])
            rows.append({**{k: None for k in row}, "stage": f"{d.name} ({target})", "status": row["status"],
                         "input_accuracy": row["input_accuracy"], "batch": 1, "deploy_form": values.get("deploy_form"),
                         "accuracy": values.get("accuracy_fp32"), "accuracy_int8": values.get("accuracy_int8"),
                         "latency_ms_fp32": values.get("latency_ms_fp32_batch1"),
                         "latency_ms_int8": values.get("latency_ms_int8_batch1"),
                         "zipped_bytes": values.get("zipped_bytes_int8" if "int8" in forms else "zipped_bytes_fp32")})
        if (m.get("runtimes") and len(m["runtimes"]) > 1) or m.get("targets"):
            row["stage"] = f"{d.name} ({m.get('runtime', 'onnxruntime')})"
    return rows


def summary_table(rows: list[dict], title: str = "") -> Table:
    """Stage, accuracy, params, zipped size, int8 accuracy and latency; distillation and pruning notes."""
    t = Table(["stage", "accuracy", "params", "zipped", "int8 acc", "int8 ms", "fp32 ms", "notes"], title=title, text_last=True,
              caption="accuracy: test split; zipped: model.safetensors, or the int8 ONNX for export, compressed with "
                      "zip (deflate); ms: CPU latency at batch 64 on onnxruntime (on the runtime in brackets where "
                      "export measured several; phone runtimes at batch 1), median of repeated runs after warm-up; "
                      "alone: the student trained without the teacher; deploy: the form to ship on that runtime "
                      "(the fastest within the accuracy budget)")
    for r in rows:
        notes = []
        if r["agreement"] is not None:
            notes.append(f"agreement {r['agreement']:.4f}")
        if r["control_accuracy"] is not None:
            notes.append(f"alone {r['control_accuracy']:.4f}")
        if r["sparsity"] is not None:
            notes.append(f"sparsity {r['sparsity']:.3f}")
        if r.get("deploy_form"):
            notes.append(f"deploy {r['deploy_form']}")
        if r.get("batch"):
            notes.append(f"ms at batch {r['batch']}")
        if r.get("accuracy_calibrated") is not None:
            notes.append(f"int8 before fine-tuning {r['accuracy_calibrated']:.4f}")
        notes.extend(worse_notes(r))
        if r["status"] != "ok":
            notes.append(str(r["status"]).upper())
        t.add(r["stage"], fmt(r["accuracy"], "{:.4f}"), fmt(r["params"], "{:,}"), _size(r["zipped_bytes"]),
              fmt(r["accuracy_int8"], "{:.4f}"), fmt(r["latency_ms_int8"], "{:.2f}"), fmt(r["latency_ms_fp32"], "{:.2f}"),
              ", ".join(notes))
    return t


def worse_notes(row: dict) -> list[str]:
    """Marks for a stage whose result is below its input (prune, export: the int8 model where there is
    one) or below the student trained alone (distill --control)."""
    shipped = row["accuracy_int8"] if row.get("accuracy_int8") is not None else row["accuracy"]
    notes = []
    if shipped is None:
        return notes
    if row.get("input_accuracy") is not None and shipped < row["input_accuracy"]:
        notes.append(f"WORSE than its input ({row['input_accuracy']:.4f})")
    if row.get("control_accuracy") is not None and shipped < row["control_accuracy"]:
        notes.append("WORSE than the student alone")
    return notes


def accuracy_table(acc: list[dict]) -> Table:
    t = Table(["model", "hard labels", "teacher's labels"], title="accuracy on the test split",
              caption="Hard: agreement with the ground truth. Soft: agreement with the teacher's prediction.")
    for r in acc:
        t.add(r["model"], f"{r['hard']:.4f}", f"{r['soft']:.4f}")
    return t


def cross_table(cross: list[dict], names: list[str]) -> Table:
    t = Table(names + ["count"] + [f"p({n})" for n in names], left=len(names),
              title="right/wrong cross table (count; mean probability of the predicted class)")
    for r in cross:
        t.add(*(r["cell"][n] for n in names), f"{r['count']:,}",
              *(fmt(r["mean_confidence"][n], "{:.3f}") for n in names))
    return t


def _size(n) -> str:
    if n is None:
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# ---------------------------------------------------------------------------------------------
# report.md: the tables and pictures the distillation studies read their results through


@dataclass
class ModelOutputs:
    name: str
    probs: torch.Tensor  # (N, classes) softmax on the test split

    @property
    def pred(self) -> torch.Tensor:
        return self.probs.argmax(1)

    @property
    def confidence(self) -> torch.Tensor:
        """Probability of the predicted class."""
        return self.probs.max(1).values


def _find(run: Path, kind: str) -> Path | None:
    dirs = [d for d in stage_dirs(run) if d.name.split("-")[0] == kind]
    return dirs[0] if dirs else None


def test_outputs(run_dir: str | Path, device: str = "cpu") -> tuple[list[ModelOutputs], torch.Tensor, object, list]:
    """Test-split probabilities of the teacher, the student alone (if distill ran with --control)
    and the distilled student; plus labels, the data (for test images) and class names."""
    run = Path(run_dir).expanduser()
    distill_dir = _find(run, "distill")
    if distill_dir is None:
        raise CompressorError(f"{run} has no distill stage; a report compares teacher and student")
    student = load_artifact(distill_dir)
    teacher = load_artifact(locate_input(distill_dir, student.spec, "teacher", fallback=_find(run, "teach")))
    ident = student.spec.data
    data = load_data(ident.get("name", "synthetic"), ident.get("root"), image_size=student.spec.input_shape[-1])
    models = [("teacher", teacher.model, teacher.spec), ("student alone", None, student.spec),
              ("distilled student", student.model, student.spec)]
    if (distill_dir / CONTROL_FILE).is_file():
        alone = build_from_spec(student.spec)
        alone.load_state_dict(load_state_dict(distill_dir / CONTROL_FILE))
        models[1] = ("student alone", alone.eval(), student.spec)
    outs, labels = [], None
    for name, model, spec in models:
        if model is None:
            continue
        data.use_normalization(spec.mean, spec.std)
        logits, labels = predict(model, data.loader("test", 512), device)
        outs.append(ModelOutputs(name, torch.softmax(logits.float(), 1)))
    return outs, labels, data, data.class_names


def accuracy_rows(outs: list[ModelOutputs], labels: torch.Tensor) -> list[dict]:
    teacher = outs[0].pred
    return [{"model": o.name, "hard": float((o.pred == labels).float().mean()),
             "soft": float((o.pred == teacher).float().mean())} for o in outs]


def cross_rows(outs: list[ModelOutputs], labels: torch.Tensor) -> list[dict]:
    """One row per right/wrong combination: count and each model's mean predicted-class probability."""
    right = [o.pred == labels for o in outs]
    rows = []
    for combo in itertools.product((True, False), repeat=len(outs)):
        sel = torch.ones_like(labels, dtype=torch.bool)
        for r, want in zip(right, combo):
            sel &= r if want else ~r
        n = int(sel.sum())
        rows.append({"cell": {o.name: ("right" if c else "wrong") for o, c in zip(outs, combo)}, "count": n,
                     "mean_confidence": {o.name: (float(o.confidence[sel].mean()) if n else None) for o in outs}})
    return rows


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path) -> None:
    """Write the figure to a temporary name, then rename it into place; close the figure."""
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    pyplot().close(fig)
    tmp.replace(path)


def image_grid(outs: list[ModelOutputs], labels, data, class_names: list[str], path: Path, limit: int = 24) -> int:
    """Test images the distilled student gets right and the teacher wrong, both predictions as captions."""
    plt = pyplot()
    teacher, student = outs[0], outs[-1]
    idx = torch.nonzero((student.pred == labels) & (teacher.pred != labels)).flatten()
    shown = idx[:limit].tolist()
    cols = 6
    rows = max(1, (len(shown) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.9, rows * 2.2), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, i in zip(axes.flat, data.test_images(shown), shown):
        ax.imshow(img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy(),
                  cmap="gray" if img.shape[0] == 1 else None)
        ax.set_title(f"teacher: {class_names[int(teacher.pred[i])]}\nstudent: {class_names[int(student.pred[i])]}",
                     fontsize=7, color="black")
    fig.suptitle(f"distilled student right, teacher wrong: {len(idx)} test images ({len(shown)} shown); "
                 "the student's label is the true one", fontsize=9)
    fig.tight_layout()
    save_png(fig, path)
    return len(idx)


def learning_curves(run: Path, path: Path) -> list[str]:
    """Train loss and validation accuracy per epoch for every stage that trained."""
    plt = pyplot()
    curves = []
    for d in stage_dirs(run):
        m = read_json(d / METRICS_FILE)
        if m.get("history"):
            curves.append((d.name, m["history"]))
        if m.get("control_history"):
            curves.append((f"{d.name} (student alone)", m["control_history"]))
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, hist in curves:
        ep = [r["epoch"] for r in hist]
        a.plot(ep, [r["train_loss"] for r in hist], marker="o", ms=3, label=name)
        b.plot(ep, [r["val_accuracy"] for r in hist], marker="o", ms=3, label=name)
    a.set(title="training loss (sum of the stage's losses)", xlabel="epoch", ylabel="loss")
    b.set(title="validation accuracy", xlabel="epoch", ylabel="accuracy")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    b.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)
    return [name for name, _ in curves]


def latency_curve(run: Path, path: Path) -> list[str]:
    """Test accuracy against measured latency along each --target-latency prune's steps (before and
    after each step's fine-tuning); the stages drawn, none when no prune had a latency budget."""
    budgets = [(d.name, m["latency_budget"]) for d in stage_dirs(run)
               if (m := read_json(d / METRICS_FILE)).get("latency_budget")]
    if not budgets:
        return []
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, b in budgets:
        xs = [b["latency_ms_before"]] + [s["latency_ms"] for s in b["steps"]]
        first = read_json(run / name / METRICS_FILE)["accuracy_before"]
        ax.plot(xs, [first] + [s["accuracy"] for s in b["steps"]], marker="o", label=f"{name}: fine-tuned")
        ax.plot(xs[1:], [s["accuracy_cut"] for s in b["steps"]], marker="x", ls=":", label=f"{name}: just cut")
        ax.axvline(b["target_ms"], color="grey", ls="--", lw=1)
    ax.set(title=f"accuracy and latency ({budgets[0][1]['runtime']}, {budgets[0][1]['form']}, "
                 f"batch {budgets[0][1]['batch']})", xlabel="ms, measured on this CPU", ylabel="test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)
    return [name for name, _ in budgets]


def write_report(run_dir: str | Path, device: str = "cpu") -> dict:
    """Write report.md, images.png and curves.png into the run directory; return the tables."""
    run = Path(run_dir).expanduser()
    summary = summary_rows(run)
    curves = learning_curves(run, run / "curves.png")
    lineage = run_lineage(run)
    md = [f"# Report: {run.name}", ""] + ([f"Lineage: {lineage_line(lineage)}", ""] if lineage else [])
    acc, cross, n_grid = [], [], None
    if _find(run, "distill") is None:
        md += ["(No distill stage in this run: the teacher/student tables need one.)", ""]
    else:
        outs, labels, data, class_names = test_outputs(run, device)
        acc, cross = accuracy_rows(outs, labels), cross_rows(outs, labels)
        n_grid = image_grid(outs, labels, data, class_names, run / "images.png")
        md += _model_sections(outs, labels, acc, cross, n_grid)
    md += ["## Learning curves", "", f"Stages: {', '.join(curves) or 'none recorded'}.", "",
           "![curves](curves.png)", ""]
    if latency_curve(run, run / "latency.png"):
        md += ["## Accuracy and latency", "", "Each step of pruning to a latency budget: the latency measured and "
               "the test accuracy just after the cut and after fine-tuning; the dashed line is the budget.", "",
               "![latency](latency.png)", ""]
    md += ["## Size and latency", "", summary_table(summary).markdown()]
    atomic_write_bytes(run / "report.md", ("\n".join(md) + "\n").encode())
    return {"accuracy": acc, "cross": cross, "student_right_teacher_wrong": n_grid, "curves": curves,
            "summary": summary, "lineage": lineage, "report": str(run / "report.md")}


def run_lineage(run: Path) -> list[dict]:
    """The lineage of the run's last model artifact (teacher to export), as its model.json records it."""
    for d in reversed(stage_dirs(run)):
        if (d / SPEC_FILE).is_file():
            return ModelSpec.read(read_json(d / SPEC_FILE), d / SPEC_FILE).lineage
    return []


def _model_sections(outs, labels, acc, cross, n_grid) -> list[str]:
    names = [o.name for o in outs]
    md = [f"Test split: {len(labels):,} images.", ""]
    if "student alone" not in names:
        md += ["(No student-alone model: run distill with `--control` / `control: true` to compare with it.)", ""]
    md += ["## Accuracy on hard and soft labels", "", accuracy_table(acc).markdown(), "## Right and wrong, model by model",
           "", "Count of test images in each cell, and each model's mean probability for the class it predicted.", "",
           cross_table(cross, names).markdown()]
    md += ["", "## Where the distilled student beats its teacher", "",
           f"{n_grid} test images where the distilled student is right and the teacher wrong "
           "(captions: both predictions; the student's is the true class).", "", "![images](images.png)", ""]
    return md
