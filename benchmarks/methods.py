"""Every distillation method on the same data, budget and seeds: one table, mean ± std over seeds.

    python benchmarks/methods.py --teacher runs/fashion-mnist-quickstart/teach --epochs 15 --train-size 10000 \
        --seeds 0,1,2 --reuse --quiet

Without --teacher it first trains one (timm resnet18, --teacher-epochs). Rows: the teacher, the
student trained alone (alpha = 1) on the transfer set, each method, and the student trained alone on
the full training set with the same epochs (the number a user compares a distilled student with).
For each: test accuracy of the best epoch (by validation accuracy: the weights the stage keeps) and
of the last epoch, mean ± sample std over the seeds. The table is printed as measured, whatever the
ranking, and written to OUT/results.md and OUT/results.json. A method the student cannot take (lit
needs as many stages as the teacher) is a row saying why; give it its own run with --student.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from compressor import CompressorError
from compressor.console import set_quiet
from compressor.distill import METHODS
from compressor.stages import distill, teach


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--teacher", default=None, help="teacher artifact dir (default: train one)")
    p.add_argument("--teacher-model", default="resnet18")
    p.add_argument("--teacher-epochs", type=int, default=5)
    p.add_argument("--student", default="convtiny")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--train-size", type=int, default=10000, help="student-side transfer set size")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; each row is the mean ± std over them")
    p.add_argument("--no-full-data", action="store_true", help="leave out the full-training-set student-alone row")
    p.add_argument("--out", default="runs/bench-methods")
    p.add_argument("--reuse", action="store_true",
                   help="reuse a finished run in OUT when its settings and compressor's code version match (rerun "
                        "only what is missing or stale)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    set_quiet(a.quiet)
    seeds = [int(s) for s in a.seeds.split(",")]
    out = Path(a.out)
    teacher = Path(a.teacher) if a.teacher else out / "teacher"
    data = {"data": a.data, "data_root": a.data_root, "image_size": a.image_size}
    if not a.teacher:
        teach(**data, model=a.teacher_model, out=teacher, epochs=a.teacher_epochs, lr=0.05, seed=seeds[0])
    runs = [("student alone (alpha=1)", "kd", {"alpha": 1.0}, a.train_size)]
    runs += [(m, m, {}, a.train_size) for m in a.methods.split(",")]
    if not a.no_full_data:
        runs.append(("student alone, full training set", "kd", {"alpha": 1.0}, None))
    rows, teacher_acc = [], None
    for label, method, extra, train_size in runs:
        per_seed, refused = [], None
        for seed in seeds:
            name = "alone-full" if train_size is None else label.split()[0].replace("student", "alone")
            run_dir = out / f"{name}-seed{seed}"
            want = {"teacher": str(teacher.absolute()), "student": a.student, "method": method, "epochs": a.epochs,
                    "lr": a.lr, "seed": seed, **extra}
            m = _finished(run_dir, want, train_size) if a.reuse else None
            if m is None:
                try:
                    m = distill(teacher=teacher, student=a.student, **data, train_size=train_size, out=run_dir,
                                method=method, epochs=a.epochs, lr=a.lr, seed=seed, **extra)
                except CompressorError as e:  # e.g. lit with a student of another depth: said in the row
                    refused = str(e)
                    break
                _record(out, run_dir)
            per_seed.append(m)
            teacher_acc = m["teacher_accuracy"]
        if refused is not None:
            print(f"{label}: refused: {refused}", file=sys.stderr)
            rows.append({"method": label, "seeds": seeds, "refused": refused, "best": None, "last": None,
                         "agreement": None, "wall_time_s": None})
            continue
        rows.append({"method": label, "seeds": seeds,
                     "best": _spread([m["accuracy"] for m in per_seed]),
                     "last": _spread([m.get("accuracy_last_epoch", m["accuracy"]) for m in per_seed]),
                     "agreement": _spread([m["agreement"] for m in per_seed]),
                     "wall_time_s": statistics.median(m["wall_time_s"] for m in per_seed)})
    arch = json.loads((teacher / "model.json").read_text())["architecture"]
    rows.insert(0, {"method": f"teacher ({arch})", "seeds": [], "best": _spread([teacher_acc]),
                    "last": None, "agreement": None, "wall_time_s": None})
    cmd = "python benchmarks/methods.py " + " ".join(sys.argv[1:] if argv is None else argv)
    full = "" if a.no_full_data else " (the full-set row: every training image)"
    lines = [f"`{cmd}` — {a.student} student, {a.epochs} epochs, {a.train_size} training images{full}, seeds "
             f"{a.seeds}; mean ± std over the seeds",
             "", "| method | test accuracy, best epoch | test accuracy, last epoch | agreement with teacher | "
                 "wall time (s, median) |", "|---|---|---|---|---|"]
    for r in rows:
        if r.get("refused"):
            lines.append(f"| {r['method']} | refused: {r['refused'].replace('|', '/')} | | | |")
            continue
        wall = "" if r["wall_time_s"] is None else f"{r['wall_time_s']:.0f}"
        lines.append(f"| {r['method']} | {_fmt(r['best'])} | {_fmt(r['last'])} | {_fmt(r['agreement'])} | {wall} |")
    table = "\n".join(lines)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(rows, indent=2))


def _spread(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def _fmt(s: dict | None) -> str:
    if s is None:
        return ""
    return f"{s['mean']:.4f}" + (f" ± {s['std']:.4f}" if len(s["values"]) > 1 else "")


CODE_FILE = "code_versions.json"  # OUT/: the code version each run was made with (--reuse)


def _record(out: Path, run_dir: Path) -> None:
    from compressor.artifacts import atomic_write_json
    from compressor.recipe import code_version

    path = out / CODE_FILE
    done = json.loads(path.read_text()) if path.is_file() else {}
    done[run_dir.name] = code_version()
    atomic_write_json(path, done)


def _finished(run_dir: Path, want: dict, train_size: int | None) -> dict | None:
    """The metrics of a complete earlier run with the same settings and code, else None."""
    from compressor.recipe import code_version

    codes = run_dir.parent / CODE_FILE
    if not (run_dir / "metrics.json").is_file() or not codes.is_file():
        return None
    if json.loads(codes.read_text()).get(run_dir.name) != code_version():
        return None
    spec = json.loads((run_dir / "model.json").read_text())
    settings = spec["settings"]
    if any(settings.get(k) != v for k, v in want.items()) or spec["data"].get("train_size") != train_size:
        return None
    return json.loads((run_dir / "metrics.json").read_text())


if __name__ == "__main__":
    main()
