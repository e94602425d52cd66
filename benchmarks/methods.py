"""Every distillation method on the same data, budget and seed: one table.

    python benchmarks/methods.py --teacher runs/fashion-mnist-quickstart/teach --epochs 15 --train-size 10000

Without --teacher it first trains one (timm resnet18, --teacher-epochs). Rows: the teacher, the
student trained alone (alpha = 1), then each method. The table is printed as measured, whatever
the ranking, and written to OUT/results.md and OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from compressor.console import set_quiet
from compressor.distill import METHODS
from compressor.stages import distill, teach


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--teacher", default=None, help="teacher artifact dir (default: train one)")
    p.add_argument("--teacher-model", default="resnet18")
    p.add_argument("--teacher-epochs", type=int, default=5)
    p.add_argument("--student", default="convtiny")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--train-size", type=int, default=10000, help="student-side transfer set size")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench-methods")
    p.add_argument("--reuse", action="store_true",
                   help="reuse a method's finished run in OUT when its settings match (rerun only what is missing)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    set_quiet(a.quiet)
    out = Path(a.out)
    teacher = Path(a.teacher) if a.teacher else out / "teacher"
    if not a.teacher:
        teach(data=a.data, data_root=a.data_root, model=a.teacher_model, out=teacher, epochs=a.teacher_epochs,
              lr=0.05, seed=a.seed)
    data = {"data": a.data, "data_root": a.data_root, "train_size": a.train_size}
    rows = []
    runs = [("student alone (alpha=1)", "kd", {"alpha": 1.0})] + [(m, m, {}) for m in a.methods.split(",")]
    for label, method, extra in runs:
        run_dir = out / label.split()[0].replace("student", "alone")
        want = {"teacher": str(teacher.absolute()), "student": a.student, "method": method, "epochs": a.epochs,
                "lr": a.lr, "seed": a.seed, **extra}
        m = _finished(run_dir, want, a.train_size) if a.reuse else None
        if m is None:
            m = distill(teacher=teacher, student=a.student, **data, out=run_dir, method=method, epochs=a.epochs,
                        lr=a.lr, seed=a.seed, **extra)
        rows.append({"method": label, "accuracy": m["accuracy"], "agreement": m["agreement"],
                     "wall_time_s": m["wall_time_s"]})
        teacher_acc = m["teacher_accuracy"]
    rows.insert(0, {"method": f"teacher ({json.loads((teacher / 'model.json').read_text())['architecture']})",
                    "accuracy": teacher_acc, "agreement": 1.0, "wall_time_s": None})
    cmd = "python benchmarks/methods.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [f"`{cmd}` — {a.student} student, {a.epochs} epochs, {a.train_size} training images, seed {a.seed}",
             "", "| method | test accuracy | agreement with teacher | wall time (s) |", "|---|---|---|---|"]
    # wall time: the whole distill stage (training, per-epoch validation, test evaluation)
    for r in rows:
        wall = "" if r["wall_time_s"] is None else f"{r['wall_time_s']:.0f}"
        lines.append(f"| {r['method']} | {r['accuracy']:.4f} | {r['agreement']:.4f} | {wall} |")
    table = "\n".join(lines)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(rows, indent=2))


def _finished(run_dir: Path, want: dict, train_size: int) -> dict | None:
    """The metrics of a complete earlier run with the same settings, else None."""
    if not (run_dir / "metrics.json").is_file():
        return None
    spec = json.loads((run_dir / "model.json").read_text())
    settings = spec["settings"]
    if any(settings.get(k) != v for k, v in want.items()) or spec["data"].get("train_size") != train_size:
        return None
    return json.loads((run_dir / "metrics.json").read_text())


if __name__ == "__main__":
    main()
