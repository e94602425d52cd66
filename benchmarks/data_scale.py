"""Streaming folder data at scale: memory, start-up and throughput of `compress teach --data imagefolder`.

    python benchmarks/data_scale.py                      # N = 2,000 and 8,000, --image-size 64

For each N, writes a folder of N photograph-like JPEGs at 256x256 (smooth random colour fields with
shapes and grain; 10 classes, plus a val/ split of N/10), then runs one epoch of

    compress teach --data imagefolder --data-root DIR --image-size 64 --model convtiny --epochs 1

in a fresh process and reports the peak memory of its whole process tree (the command and its
DataLoader workers: proportional set size, sampled every 50 ms from /proc), the seconds from the process's start to the
end of its first training step, and its training images/s. Then, in this process, it times our
loader (`DataBundle.loader`, one epoch over the train split) against a torchvision `ImageFolder` +
`DataLoader` with the same timm transform, batch size and worker count, in alternating rounds.

Acceptance (issue #11): peak memory grows by less than 300 MB from 2,000 to 8,000 images; the first
step ends within 15 s at 8,000; our loader reaches at least 0.95x torchvision's images/s.
Writes OUT/results.json and prints a table. Figures differ between machines.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

CLASSES = 10


def write_folder(root: Path, n: int, size: int = 256, seed: int = 0) -> Path:
    """root/train/<class>/*.jpg (n images) and root/val/<class>/*.jpg (n/10), photograph-like."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    for split, count in (("train", n), ("val", max(CLASSES, n // 10))):
        for i in range(count):
            c = i % CLASSES
            d = root / split / f"class{c:02d}"
            d.mkdir(parents=True, exist_ok=True)
            path = d / f"{split}{i:06d}.jpg"
            if path.exists():
                continue
            field = rng.random((8, 8, 3)) * 0.6 + np.array([c / CLASSES, 0.5, 1 - c / CLASSES]) * 0.4
            img = Image.fromarray((field * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
            draw = ImageDraw.Draw(img)
            for _ in range(3):
                x, y, r = rng.integers(0, size, 2).tolist() + [int(rng.integers(10, 60))]
                box = [x - r, y - r, x + r, y + r]
                colour = tuple(int(v) for v in rng.integers(0, 255, 3))
                (draw.ellipse if c % 2 else draw.rectangle)(box, fill=colour)
            img = img.filter(ImageFilter.GaussianBlur(1.0))
            grain = rng.normal(0, 6, (size, size, 3))
            img = Image.fromarray(np.clip(np.asarray(img) + grain, 0, 255).astype(np.uint8))
            img.save(path, quality=90)
    return root


def tree_pss_mb(pid: int) -> float:
    """Proportional resident memory (PSS: a page shared by k processes counts 1/k in each) of a
    process and all its descendants, from /proc. Plain RSS would count the pages forked DataLoader
    workers share with their parent once per worker."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(ln.split()[1]) for ln in f if ln.startswith("Pss:"))
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack += [int(c) for c in f.read().split()]
        except (OSError, StopIteration, ValueError):
            continue
    return total / 1024


def run_teach(root: Path, out: Path, image_size: int, workers: int | None) -> dict:
    cmd = [sys.executable, "-m", "compressor.cli.main", "teach", "--data", "imagefolder", "--data-root", str(root),
           "--image-size", str(image_size), "--model", "convtiny", "--epochs", "1", "--out", str(out), "--json",
           "--quiet"] + (["--workers", str(workers)] if workers is not None else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0.0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_pss_mb(proc.pid))
            time.sleep(0.05)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    stdout, stderr = proc.communicate()
    t.join()
    if proc.returncode != 0:
        raise SystemExit(f"teach failed on {root}:\n{stderr[-2000:]}")
    m = json.loads(stdout)
    first = m["history"][0]
    return {"peak_pss_mb": round(peak[0], 1), "first_step_s": first.get("first_step_s"),
            "images_per_s": first["images_per_s"], "wall_time_s": m["wall_time_s"]}


def loader_rates(root: Path, image_size: int, workers: int, batch_size: int, rounds: int) -> dict:
    """Images/s of one epoch of our train loader and of torchvision's ImageFolder + DataLoader."""
    import torch
    from torchvision.datasets import ImageFolder

    from compressor.data import load_data
    from compressor.data.folder import transform

    bundle = load_data("imagefolder", root, image_size=image_size, workers=workers)
    ours = bundle.loader("train", batch_size, train=True, seed=0)
    tv_set = ImageFolder(str(root / "train"), transform=transform(bundle, train=True))
    tv = torch.utils.data.DataLoader(tv_set, batch_size=batch_size, shuffle=True, num_workers=workers,
                                     pin_memory=torch.cuda.is_available())

    def epoch(loader) -> float:
        t0, n = time.perf_counter(), 0
        for x, _ in loader:
            n += len(x)
        return n / (time.perf_counter() - t0)

    best = {"ours": 0.0, "torchvision": 0.0}
    for r in range(rounds):
        ours.set_epoch(r + 1)
        for name, loader in (("ours", ours), ("torchvision", tv)) if r % 2 == 0 else (("torchvision", tv), ("ours", ours)):
            best[name] = max(best[name], epoch(loader))
    return {"ours_images_per_s": round(best["ours"], 1), "torchvision_images_per_s": round(best["torchvision"], 1),
            "ratio": round(best["ours"] / best["torchvision"], 3), "workers": workers, "rounds": rounds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="2000,8000", help="image counts, comma-separated")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: compress's own choice)")
    ap.add_argument("--rounds", type=int, default=6, help="alternating loader rounds (best of each is kept)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--data-dir", default=None, help="keep the generated folders here (default: a temporary dir)")
    ap.add_argument("--out", default="runs/bench-data-scale")
    args = ap.parse_args()
    from compressor.data.folder import default_workers

    workers = default_workers() if args.workers is None else args.workers
    sizes = [int(s) for s in args.sizes.split(",")]
    base = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="data-scale-"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"machine": {"cpus": os.cpu_count(), "workers": workers}, "runs": []}
    for n in sizes:
        t0 = time.time()
        root = write_folder(base / f"n{n}", n)
        print(f"{n} images in {root} ({time.time() - t0:.0f} s to write)", file=sys.stderr)
        r = run_teach(root, out / f"teach-{n}", args.image_size, args.workers)
        results["runs"].append({"images": n, **r})
        print(f"  teach: {r}", file=sys.stderr)
    results["loader"] = loader_rates(base / f"n{sizes[0]}", args.image_size, workers, args.batch_size, args.rounds)
    runs = results["runs"]
    results["acceptance"] = {
        "memory_growth_mb": round(runs[-1]["peak_pss_mb"] - runs[0]["peak_pss_mb"], 1),
        "memory_growth_ok": runs[-1]["peak_pss_mb"] - runs[0]["peak_pss_mb"] < 300,
        "first_step_ok": runs[-1]["first_step_s"] is not None and runs[-1]["first_step_s"] <= 15,
        "loader_ok": results["loader"]["ratio"] >= 0.95}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print("| images | peak memory (MB, PSS of the process tree) | first step (s) | teach images/s |")
    print("|---|---|---|---|")
    for r in runs:
        print(f"| {r['images']:,} | {r['peak_pss_mb']:.0f} | {r['first_step_s']} | {r['images_per_s']:.0f} |")
    lo = results["loader"]
    print(f"\nloader, one epoch of {sizes[0]:,} images, {workers} workers, batch {args.batch_size}: ours "
          f"{lo['ours_images_per_s']:.0f} images/s, torchvision ImageFolder + DataLoader {lo['torchvision_images_per_s']:.0f}"
          f" ({lo['ratio']:.3f}x)")
    print(f"acceptance: {json.dumps(results['acceptance'])}")
    if not all(v for k, v in results["acceptance"].items() if k.endswith("_ok")):
        sys.exit(1)


if __name__ == "__main__":
    main()
