"""Time the same temperature x alpha sweep without and with the teacher-output cache.

    python benchmarks/sweep_cache.py --teacher runs/fashion-mnist-quickstart/teach

Both sweeps start from empty directories (the cached one fills its cache in its first point), use
the same seed on the CPU, and must give identical accuracies. Writes OUT/results.md and .json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from compressor.console import log
from compressor.recipe import parse_recipe
from compressor.sweep import point_name, run_sweep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True, help="teacher artifact directory (e.g. the quickstart's teach)")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--student", default="convtiny")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-size", type=int, default=10000)
    ap.add_argument("--temperatures", default="1,3,8")
    ap.add_argument("--alphas", default="0,0.25,0.5")
    ap.add_argument("--out", default="runs/bench-sweep-cache")
    a = ap.parse_args()
    out = Path(a.out)
    recipe = parse_recipe({"name": "bench-sweep-cache", "seed": 0, "device": "cpu", "data": {"name": a.data},
                           "stages": [{"distill": {"student": a.student, "teacher": str(Path(a.teacher).absolute()),
                                                   "epochs": a.epochs, "train_size": a.train_size}}]}, "benchmark")
    grid = {"temperature": [float(t) for t in a.temperatures.split(",")],
            "alpha": [float(x) for x in a.alphas.split(",")]}
    timings, results = {}, {}
    for label, cache in (("no cache", False), ("cache", True)):
        run_dir = out / label.replace(" ", "-")
        shutil.rmtree(run_dir, ignore_errors=True)
        t0 = time.perf_counter()
        results[label] = run_sweep(recipe, run_dir, grid, cache_teacher=cache)
        timings[label] = time.perf_counter() - t0
        log(f"benchmark: sweep with {label}: {timings[label]:.1f} s")
    acc = {label: [(p["point"], p["test_accuracy"], p["at"][str(a.epochs)]["hard"]) for p in r["points"]]
           for label, r in results.items()}
    identical = acc["no cache"] == acc["cache"]
    ratio = timings["cache"] / timings["no cache"]
    lines = [f"# Teacher-output cache: {len(grid['temperature'])}x{len(grid['alpha'])} sweep, {a.student} from "
             f"{a.teacher}, {a.epochs} epochs on {a.train_size} images", "",
             "| sweep | wall time (s) |", "|---|---|",
             f"| without cache | {timings['no cache']:.1f} |", f"| with cache | {timings['cache']:.1f} |", "",
             f"Ratio {ratio:.2f}; test and validation accuracies identical at every point: {identical}.", "",
             "| point | test accuracy (no cache) | test accuracy (cache) |", "|---|---|---|"]
    for (pt, acc_a, _), (_, acc_b, _) in zip(acc["no cache"], acc["cache"]):
        lines.append(f"| {point_name(pt)} | {acc_a:.4f} | {acc_b:.4f} |")
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps({"seconds": timings, "ratio": ratio, "identical": identical,
                                                  "accuracies": acc}, indent=2))
    print(text)
    if not identical:
        raise SystemExit("accuracies differ between the cached and uncached sweeps")


if __name__ == "__main__":
    main()
