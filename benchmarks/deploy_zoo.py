"""What `compress export` makes of the model families users ship to CPUs: each runtime's float32,
reduced-float and int8 forms, and the deploy form it chooses.

    python benchmarks/deploy_zoo.py                       # the five families, about an hour on 2 cores
    python benchmarks/deploy_zoo.py --models resnet18     # one
    python benchmarks/deploy_zoo.py --models mobilenetv3_small_100 --target onnx,executorch,litert  # and phones

Each model is taught on --train-size Fashion-MNIST images at --image-size px for --epochs epochs
(`compress teach`; cached under --work and reused when present), then exported with the default flags
but --int8 and --runtime all:

    compress export WORK/MODEL/teach --data fashion-mnist --image-size 32 --int8 --runtime all --out WORK/MODEL/export

Where post-training int8 misses the export's accuracy budget (it exits 1 and says to run `compress
quantize`), the zoo does what the error says and what a recipe's `quantize: {auto: true}` stage does:
quantization-aware fine-tuning with the default flags (2 epochs on the same images, distilled from the
model's float self; cached), then the export of that:

    compress quantize WORK/MODEL/teach --data fashion-mnist --image-size 32 --train-size 20000 --out WORK/MODEL/quantize
    compress export WORK/MODEL/quantize --data fashion-mnist --image-size 32 --runtime all --out WORK/MODEL/quantize-export

Its int8 rows (`int8` column `quantize`) give the accuracy drop against the taught model's float32 and
the latency against the float32 file of the same network timed in turn in that export. --no-escalate
leaves the post-training rows alone.

With --target the export also writes and runs the phone files (ExecuTorch .pte, LiteRT .tflite; their
extras installed), measured at batch 1 only, as a phone runs them. The table gives, per runtime and form, the test accuracy, the latency at batch 1 and 64 (medians,
warm-up excluded, this machine's threads), and the deploy form; the header names the CPU's flags and
the runtimes' versions. Results differ between machines (other kernels, other default precisions); on
one machine the accuracies repeat. The rows are also written as CSV (--csv).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

from compressor.deploy.phones import delegated_share

FAMILIES = ("resnet18", "regnetx_002", "mobilenetv2_050", "mobilenetv3_small_100", "efficientnet_b0")


def teach(model: str, out: Path, a) -> None:
    if (out / "metrics.json").is_file():
        return  # cached: taught before with these settings (the directory name holds them)
    subprocess.run(["compress", "teach", "--model", model, "--data", "fashion-mnist", "--image-size", str(a.image_size),
                    "--train-size", str(a.train_size), "--epochs", str(a.epochs), "--lr", str(a.lr), "--quiet",
                    "--out", str(out)], check=True, stdout=subprocess.DEVNULL)


def quantize(teacher: Path, out: Path, a) -> None:
    if (out / "metrics.json").is_file():
        return  # cached
    subprocess.run(["compress", "quantize", str(teacher), "--data", "fashion-mnist", "--image-size", str(a.image_size),
                    "--train-size", str(a.train_size), "--quiet", "--out", str(out)], check=True,
                   stdout=subprocess.DEVNULL)


def export(teacher: Path, out: Path, a) -> tuple[dict, int]:
    res = subprocess.run(["compress", "export", str(teacher), "--data", "fashion-mnist", "--image-size",
                          str(a.image_size), "--int8", "--runtime", "all", "--target", a.target, "--quiet",
                          "--out", str(out)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if not (out / "metrics.json").is_file():
        raise SystemExit(f"export of {teacher} wrote nothing: {res.stderr.strip().splitlines()[-1:]}")
    return json.loads((out / "metrics.json").read_text()), res.returncode


def write_csv(path: Path, rows: list[dict]) -> None:
    """The rows as CSV, their keys as the header, plus the machine (CPU, flags, runtime versions) and
    the commit they were measured at (benchmarks/results/*.csv; the docs render them)."""
    from compressor.deploy.runtimes import machine_summary

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    rows = [{**r, "machine": machine_summary(), "commit": commit} for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))  # every row's keys
        w.writeheader()
        w.writerows(rows)


def rows_of(model: str, m: dict, rc: int) -> list[dict]:
    rows = []
    for rt, r in m["runtimes"].items():
        fp32 = r["accuracy_fp32"]
        for form in r.get("forms", ["fp32", "int8"]):
            if f"accuracy_{form}" not in r:
                continue
            rows.append({"model": model, "runtime": rt, "form": form, "int8": "post-training" if form == "int8" else "",
                         "precision": r.get(f"precision_{form}", form),
                         "accuracy": r[f"accuracy_{form}"], "drop_points": round(100 * (fp32 - r[f"accuracy_{form}"]), 2),
                         "ms_batch1": r[f"latency_ms_{form}_batch1"], "ms_batch64": r[f"latency_ms_{form}"],
                         "vs_fp32_batch64": round(r[f"latency_ms_{form}"] / r["latency_ms_fp32"], 3),
                         "deploy": r.get("deploy_form") == form, "int8_form": _form(r) if form == "int8" else "",
                         "exit": rc})
    for target, r in m.get("targets", {}).items():  # phone files: batch 1 only
        for form in r.get("forms", []):
            rows.append({"model": model, "runtime": target, "form": form, "precision": form,
                         "accuracy": r[f"accuracy_{form}"],
                         "drop_points": round(100 * (r["accuracy_fp32"] - r[f"accuracy_{form}"]), 2),
                         "ms_batch1": r[f"latency_ms_{form}_batch1"], "ms_batch64": "",
                         "vs_fp32_batch1": round(r[f"latency_ms_{form}_batch1"] / r["latency_ms_fp32_batch1"], 3),
                         "deploy": r.get("deploy_form") == form,
                         "delegation": f"XNNPACK took {delegated_share(r[f'delegation_{form}'])} operators",
                         "exit": rc})
    return rows


def quantized_rows(model: str, taught: dict, m: dict, rc: int) -> list[dict]:
    """The int8 rows of a quantized model's export: accuracy against the taught model's float32, latency
    at batch 64 against the float32 file the same export timed in turn, and whether that export names
    int8 its deploy form on that runtime."""
    rows = []
    for rt, r in m["runtimes"].items():
        if "accuracy_int8" not in r:
            continue
        t = taught["runtimes"][rt]
        drop = round(100 * (t["accuracy_fp32"] - r["accuracy_int8"]), 2)
        rows.append({"model": model, "runtime": rt, "form": "int8", "int8": "quantize", "precision": "int8",
                     "accuracy": r["accuracy_int8"], "drop_points": drop, "ms_batch1": r["latency_ms_int8_batch1"],
                     "ms_batch64": r["latency_ms_int8"],
                     # against the float32 file of the same export (the same network as the taught model's,
                     # timed in turn with the int8 file; the taught model's was timed in another export)
                     "vs_fp32_batch64": round(r["latency_ms_int8"] / r["latency_ms_fp32"], 3),
                     "deploy": r.get("deploy_form") == "int8",
                     "int8_form": _form(r), "exit": rc})
    return rows


def _form(r: dict) -> str:
    f = r.get("int8_form") or {}
    return ", ".join(f"{k}={v}" for k, v in f.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(FAMILIES))
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--train-size", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--target", default="onnx", help="export's --target: onnx, or onnx plus executorch and/or litert")
    ap.add_argument("--work", type=Path, default=Path("runs/deploy-zoo"), help="cache of the taught models and exports")
    ap.add_argument("--csv", type=Path, default=None, help="also write the rows here")
    ap.add_argument("--no-escalate", dest="escalate", action="store_false",
                    help="where post-training int8 misses the budget, stop there (default: quantize and export that)")
    a = ap.parse_args()
    from compressor.deploy.runtimes import machine_summary

    rows = []
    for model in a.models:
        base = a.work / f"{model}-{a.image_size}px-{a.train_size}-e{a.epochs}-lr{a.lr}"
        teach(model, base / "teach", a)
        m, rc = export(base / "teach", base / "export", a)
        rows += rows_of(model, m, rc)
        print(f"{model}: exported (exit {rc})", file=sys.stderr)
        if rc and a.escalate and m.get("failure"):  # post-training int8 over its budget: quantize, as the error says
            quantize(base / "teach", base / "quantize", a)
            q, qrc = export(base / "quantize", base / "quantize-export", a)
            rows += quantized_rows(model, m, q, qrc)
            print(f"{model}: quantized and exported (exit {qrc})", file=sys.stderr)
    print(machine_summary())
    print(f"\nFashion-MNIST, {a.train_size} training images, {a.epochs} epochs, {a.image_size} px; test split "
          f"(10,000 images); latency median ms, {m['threads']} threads\n")
    print("| model | runtime | form | accuracy (drop, points) | ms at batch 1 | ms at batch 64 | × fp32 | deploy |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:  # × fp32 at batch 64; phone files at batch 1
        b64, ratio = ((f"{r['ms_batch64']:.2f}", f"{r['vs_fp32_batch64']:.2f}") if r["ms_batch64"] != "" else
                      ("—", f"{r['vs_fp32_batch1']:.2f} (batch 1)"))
        form = f"{r['form']} (quantize)" if r.get("int8") == "quantize" else r["form"]
        print(f"| {r['model']} | {r['runtime']} | {form} | {r['accuracy']:.4f} ({r['drop_points']:+.2f}) | "
              f"{r['ms_batch1']:.3f} | {b64} | {ratio} | {'**deploy**' if r['deploy'] else ''} |")
    if a.csv:
        write_csv(a.csv, rows)


if __name__ == "__main__":
    main()
