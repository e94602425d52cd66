"""What `compress export --int8` costs on a model at the size users work at (default resnet18, 224 px).

    python benchmarks/export_cost.py                     # 640 JPEGs, resnet18 at 224 px

Writes a folder of photograph-like JPEGs (benchmarks/data_scale.py's, 10 classes), teaches the model
one epoch on it (the weights only need to exist; export's cost does not depend on them), then times

    compress export TEACH --data imagefolder --data-root DIR --int8 --out OUT

in a fresh process: every int8 form measured on every runtime installed, the IR written, every file
verified. Prints the wall time, the forms chosen and the latencies. Figures differ between machines.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from data_scale import write_folder  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--images", type=int, default=640, help="training images (plus a tenth for val/)")
    ap.add_argument("--work", type=Path, default=None, help="keep the folder and artifacts here (default: a temp dir)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = a.work or Path(tmp)
        data = write_folder(work / "data", a.images)
        teach = work / "teach"
        if not (teach / "metrics.json").is_file():
            subprocess.run(["compress", "teach", "--model", a.model, "--data", "imagefolder", "--data-root", str(data),
                            "--image-size", str(a.image_size), "--epochs", "1", "--out", str(teach)],
                           check=True, stdout=subprocess.DEVNULL)
        out = work / "export"
        t0 = time.perf_counter()
        subprocess.run(["compress", "export", str(teach), "--data", "imagefolder", "--data-root", str(data), "--int8",
                        "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        m = json.loads((out / "metrics.json").read_text())
    print(f"{a.model} at {a.image_size} px: compress export --int8 took {wall:.0f} s "
          f"(runtimes: {', '.join(m['runtimes'])}; threads {m['threads']})")
    for rt, r in m["runtimes"].items():
        form = r.get("int8_form", {})
        print(f"  {rt}: int8 form {form}, fp32 {r['latency_ms_fp32']:.1f} ms, int8 {r['latency_ms_int8']:.1f} ms "
              f"at batch {m['latency_batch']}; accuracy fp32 {r['accuracy_fp32']:.4f}, int8 {r['accuracy_int8']:.4f}")


if __name__ == "__main__":
    main()
