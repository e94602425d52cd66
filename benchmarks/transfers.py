"""The two transfers the studies name: Hinton's classes absent from the transfer set, and the teacher
assistant.

    python benchmarks/transfers.py                         # both, about 40 minutes on 2 cores
    python benchmarks/transfers.py --only absent --teacher RUN/teach   # reuse a quickstart teacher

absent (Hinton et al., 2015, section 3), on Fashion-MNIST: the quickstart's teacher (resnet18, 5 epochs
on 54,000 images; taught here unless --teacher names one) and the quickstart's student settings
(convtiny, kd, T = 4, alpha = 0.5, 15 epochs, the first 10,000 training images), with class 3
("Dress") left out of those 10,000:

    compress distill --teacher T --student convtiny --data fashion-mnist --train-size 10000 \\
        --temperature 4 --alpha 0.5 --epochs 15 --lr 0.05 --omit-classes 3 --bias-shift --control --out WORK/omit3
    compress distill ... (the same without --omit-classes, --bias-shift, --control) --out WORK/all

assistant (Mirzadeh et al., 2020), on scikit-learn's digits as a 32-px image folder: a resnet18 teacher
(15 epochs), the convverytiny student distilled directly (kd) and through a convtiny assistant
(`--scheme assistant --assistant convtiny`), and convtiny distilled directly, over --seeds.

Results differ between machines; on one machine they repeat.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from deploy_zoo import write_csv  # noqa: E402  (the CSV with machine and commit columns)

QUICKSTART_STUDENT = ["--student", "convtiny", "--data", "fashion-mnist", "--train-size", "10000", "--temperature", "4",
                      "--alpha", "0.5", "--epochs", "15", "--lr", "0.05"]
DIGITS = ["--data", "imagefolder", "--image-size", "32", "--workers", "0", "--scale", "0.5", "--hflip", "0",
          "--epochs", "15", "--batch-size", "32", "--lr", "0.05"]


def compress(*args, out: Path) -> dict:
    if not (out / "metrics.json").is_file():
        subprocess.run(["compress", *map(str, args), "--out", str(out), "--quiet"], check=True,
                       stdout=subprocess.DEVNULL)
    return json.loads((out / "metrics.json").read_text())


def rest_accuracy(artifact: Path, omitted: list[int]) -> float:
    """Test accuracy of an artifact on the classes other than `omitted`."""
    import torch

    from compressor.artifacts import load_artifact
    from compressor.data import load_data
    from compressor.training import predict

    art = load_artifact(artifact)
    data = load_data(art.spec.data["name"], art.spec.data.get("root"), image_size=art.spec.input_shape[-1])
    data.use_normalization(art.spec.mean, art.spec.std)
    logits, labels = predict(art.model, data.loader("test", 512), "cpu")
    keep = ~torch.isin(labels, torch.tensor(omitted))
    return float((logits.argmax(1) == labels)[keep].float().mean())


def absent(a) -> list[dict]:
    teacher = a.teacher or a.work / "fashion-teach"
    if a.teacher is None:
        compress("teach", "--model", "resnet18", "--data", "fashion-mnist", "--epochs", "5", "--lr", "0.05",
                 out=teacher)
    omit = compress("distill", "--teacher", teacher, *QUICKSTART_STUDENT, "--omit-classes", "3", "--bias-shift",
                    "--control", out=a.work / "fashion-omit3")
    full = compress("distill", "--teacher", teacher, *QUICKSTART_STUDENT, out=a.work / "fashion-all")
    full_rest = rest_accuracy(a.work / "fashion-all", [3])
    rows = [{"student": "alone, without class 3", "accuracy": omit["control_accuracy"],
             "class_3": omit["control_accuracy_omitted"], "other_classes": omit["control_accuracy_rest"]},
            {"student": "kd, without class 3", "accuracy": omit["accuracy_before_shift"],
             "class_3": omit["accuracy_omitted_before_shift"], "other_classes": omit["accuracy_rest_before_shift"]},
            {"student": f"kd, without class 3, bias +{omit['bias_shift']['3']:.2f}", "accuracy": omit["accuracy"],
             "class_3": omit["accuracy_omitted"], "other_classes": omit["accuracy_rest"]},
            {"student": "kd, every class", "accuracy": full["accuracy"], "class_3": None, "other_classes": full_rest}]
    print("\nFashion-MNIST, class 3 (Dress) left out of the 10,000-image transfer set; teacher test accuracy "
          f"{omit['teacher_accuracy']:.4f}\n")
    print("| student | test accuracy | on class 3 | on the other classes |\n|---|---|---|---|")
    for r in rows:
        c3 = "" if r["class_3"] is None else f"{r['class_3']:.4f}"
        print(f"| {r['student']} | {r['accuracy']:.4f} | {c3} | {r['other_classes']:.4f} |")
    return [{"experiment": "absent class 3", **r} for r in rows]


def assistant(a) -> list[dict]:
    from helpers import write_digits_folder

    root = a.work / "digits-data"
    if not (root / "val").is_dir():
        write_digits_folder(root)
    teacher = a.work / "digits-teach"
    t = compress("teach", "--model", "resnet18", *DIGITS, "--data-root", root, out=teacher)
    runs: dict[str, list[dict]] = {}
    for seed in a.seeds:
        common = ["--teacher", teacher, *DIGITS, "--data-root", root, "--method", "kd", "--seed", seed]
        runs.setdefault("convverytiny, direct", []).append(
            compress("distill", *common, "--student", "convverytiny", out=a.work / f"digits-direct-s{seed}"))
        runs.setdefault("convverytiny, through a convtiny assistant", []).append(
            compress("distill", *common, "--student", "convverytiny", "--scheme", "assistant", "--assistant",
                     "convtiny", out=a.work / f"digits-assistant-s{seed}"))
        runs.setdefault("convtiny, direct", []).append(
            compress("distill", *common, "--student", "convtiny", out=a.work / f"digits-convtiny-s{seed}"))
    print(f"\nscikit-learn digits (1,437 train / 360 test, 32 px); resnet18 teacher {t['accuracy']:.4f}; "
          f"seeds {a.seeds}\n")
    print("| student | test accuracy (mean ± std) | agreement with the teacher |\n|---|---|---|")
    rows = []
    for name, ms in runs.items():
        acc = [m["accuracy"] for m in ms]
        agr = [m["agreement"] for m in ms]
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        print(f"| {name} | {statistics.mean(acc):.4f} ± {sd:.4f} | {statistics.mean(agr):.4f} |")
        rows.append({"experiment": "teacher assistant", "student": name, "accuracy": statistics.mean(acc),
                     "accuracy_std": sd, "agreement": statistics.mean(agr), "seeds": len(acc),
                     "teacher_accuracy": t["accuracy"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["absent", "assistant"], default=None)
    ap.add_argument("--teacher", type=Path, default=None, help="absent: a Fashion-MNIST teacher artifact to reuse")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="assistant: the students' seeds")
    ap.add_argument("--work", type=Path, default=Path("runs/transfers"))
    ap.add_argument("--csv", type=Path, default=None)
    a = ap.parse_args()
    rows = []
    if a.only in (None, "absent"):
        rows += absent(a)
    if a.only in (None, "assistant"):
        rows += assistant(a)
    if a.csv:
        write_csv(a.csv, rows)


if __name__ == "__main__":
    main()
