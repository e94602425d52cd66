"""Post-training int8 against quantization-aware fine-tuning (`compress quantize`), with and
without the float model as teacher, on the deploy zoo's models (Fashion-MNIST, 32 px):

    python benchmarks/qat.py                                   # efficientnet_b0 and mobilenetv3_small_100, 3 seeds
    python benchmarks/qat.py --models mobilenetv3_small_100 --seeds 0 --csv benchmarks/results/qat.csv

    python benchmarks/qat.py --models quickstart               # the quickstart's pruned student

Each model is taught as benchmarks/deploy_zoo.py teaches it (the same cache, --work), then:

    compress export  TEACH --data fashion-mnist --image-size 32 --int8 --runtime all --out WORK/ptq
    compress quantize TEACH --data fashion-mnist --train-size N --seed S [--alpha 1] --out WORK/qat-...
    compress export  WORK/qat-... --data fashion-mnist --runtime all --out WORK/qat-...-export

`quickstart` is the student `compress run recipes/quickstart.yaml` pruned (--quickstart, its run
directory; run the recipe first): the same three commands on RUN/prune, at the dataset's own 28 px and
on the recipe's 10,000-image transfer set (its quantize stage's train_size), under RUN/qat-bench.

"labels" is quantize with --alpha 1 (the hard labels alone: no teacher term); "distilled" is its
default (kd from the float model). Per runtime the table gives the fp32 accuracy of the model that
was quantized, the int8 accuracy (mean ± std over the seeds) and the int8 latency at batch 64
against that runtime's float32. Results differ between machines; on one machine they repeat.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from deploy_zoo import teach, write_csv  # noqa: E402  (the zoo's cached teachers, its CSV)

VARIANTS = {"labels": ["--alpha", "1"], "distilled": []}


def compress(*args) -> None:
    res = subprocess.run(["compress", *map(str, args), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    if res.returncode not in (0, 1):  # 1: an export marked failed (over its accuracy budget) still has figures
        raise SystemExit(f"compress {' '.join(map(str, args[:2]))} failed: {res.stderr.strip().splitlines()[-1:]}")


def metrics(path: Path) -> dict:
    return json.loads((path / "metrics.json").read_text())


def export(src: Path, out: Path, *extra) -> dict:
    if not (out / "metrics.json").is_file():
        compress("export", src, "--data", "fashion-mnist", "--runtime", "all", *extra, "--out", out)
    return metrics(out)


QUICKSTART = "quickstart"  # not a zoo family: the quickstart recipe's pruned student
QUICKSTART_TRAIN_SIZE = 10000  # recipes/quickstart.yaml's transfer set (its quantize stage's train_size)


def add_zoo_arguments(ap: argparse.ArgumentParser) -> None:
    """The deploy zoo's models as this benchmark teaches and quantizes them (`zoo_dir` finds them)."""
    ap.add_argument("--models", nargs="+", default=["efficientnet_b0", "mobilenetv3_small_100"],
                    help=f"deploy zoo families, or {QUICKSTART}")
    ap.add_argument("--qat-epochs", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--train-size", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=3, help="the teachers' epochs (as deploy_zoo.py)")
    ap.add_argument("--lr", type=float, default=0.05, help="the teachers' learning rate (as deploy_zoo.py)")
    ap.add_argument("--work", type=Path, default=Path("runs/deploy-zoo"))
    ap.add_argument("--csv", type=Path, default=None)


def zoo_dir(a, model: str) -> Path:
    return a.work / f"{model}-{a.image_size}px-{a.train_size}-e{a.epochs}-lr{a.lr}"


def subject(a, model: str) -> tuple[Path, Path, list, int]:
    """Where a model's runs go, the float model quantized, the data flags of its exports and its
    quantize --train-size: a zoo family taught here (cached), or the quickstart's pruned student."""
    if model == QUICKSTART:
        src = a.quickstart / "prune"
        if not (src / "metrics.json").is_file():
            raise SystemExit(f"{src}: no pruned student; run compress run recipes/quickstart.yaml first")
        return a.quickstart / "qat-bench", src, [], QUICKSTART_TRAIN_SIZE
    base = zoo_dir(a, model)
    teach(model, base / "teach", a)
    return base, base / "teach", ["--image-size", a.image_size], a.train_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_zoo_arguments(ap)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--quickstart", type=Path, default=Path("runs/fashion-mnist-quickstart"),
                    help="the quickstart recipe's run directory (for --models quickstart)")
    a = ap.parse_args()
    from compressor.deploy.runtimes import machine_summary

    rows = []
    for model in a.models:
        base, src, data, train_size = subject(a, model)
        runs = {"post-training": [export(src, base / "export", *data, "--int8")]}
        for variant in a.variants:
            flags = VARIANTS[variant]
            for seed in a.seeds:
                q = base / f"qat-{variant}-e{a.qat_epochs}-s{seed}"
                if not (q / "metrics.json").is_file():
                    compress("quantize", src, "--data", "fashion-mnist", *data, "--train-size", train_size,
                             "--epochs", a.qat_epochs, "--seed", seed, *flags, "--out", q)
                runs.setdefault(variant, []).append(export(q, q.with_name(q.name + "-export"), *data))
                print(f"{model}: {variant} seed {seed} done", file=sys.stderr)
        for variant, ms in runs.items():
            for rt in ms[0]["runtimes"]:
                fp32 = runs["post-training"][0]["runtimes"][rt]["accuracy_fp32"]  # the taught model, float32
                accs = [m["runtimes"][rt]["accuracy_int8"] for m in ms]
                ratio = [m["runtimes"][rt]["latency_ms_int8"] / m["runtimes"][rt]["latency_ms_fp32"] for m in ms]
                rows.append({"model": model, "runtime": rt, "int8": variant, "seeds": len(ms), "fp32_accuracy": fp32,
                             "int8_accuracy_mean": statistics.mean(accs),
                             "int8_accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                             "int8_accuracy_by_seed": " ".join(f"{x:.4f}" for x in accs),
                             "drop_points": round(100 * (fp32 - statistics.mean(accs)), 2),
                             "int8_ms_batch64": statistics.median(m["runtimes"][rt]["latency_ms_int8"] for m in ms),
                             "vs_fp32_batch64": round(statistics.median(ratio), 3)})
    print(machine_summary())
    quickstart = f" ({QUICKSTART}: {QUICKSTART_TRAIN_SIZE} images, 28 px)" if QUICKSTART in a.models else ""
    print(f"\nFashion-MNIST, {a.train_size} training images, {a.image_size} px{quickstart}; quantize {a.qat_epochs} epochs; "
          f"test split (10,000 images); seeds {a.seeds}\n")
    print("| model | runtime | int8 | fp32 acc | int8 acc (mean ± std) | drop (points) | int8 ms at 64 | × fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['runtime']} | {r['int8']} | {r['fp32_accuracy']:.4f} | "
              f"{r['int8_accuracy_mean']:.4f} ± {r['int8_accuracy_std']:.4f} | {r['drop_points']:+.2f} | "
              f"{r['int8_ms_batch64']:.2f} | {r['vs_fp32_batch64']:.2f} |")
    if a.csv:
        write_csv(a.csv, rows)


if __name__ == "__main__":
    main()
