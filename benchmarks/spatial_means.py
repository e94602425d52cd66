"""Latency of timm models exported with their means over the image as GlobalAveragePool / ReduceMean
(torch's export) and as AveragePool (compressor's export), on onnxruntime and OpenVINO.

    python benchmarks/spatial_means.py --models seresnet18,efficientnet_b0,mobilenetv3_small_100

Untrained weights (latency does not depend on them); alternating rounds in one process, one session
alive at a time; prints the median per file and runtime, and the largest output difference.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np

from compressor.deploy import graph
from compressor.deploy.runtimes import latency_ms, openvino_available, session


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="seresnet18,efficientnet_b0,mobilenetv3_small_100")
    ap.add_argument("--size", type=int, default=64, help="image size (px)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    import timm

    runtimes = ["onnxruntime"] + (["openvino"] if openvino_available() else [])
    shape = [3, a.size, a.size]
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for name in a.models.split(","):
            model = timm.create_model(name, num_classes=10).eval()
            rewrite = graph.spatial_means_as_average_pools
            graph.spatial_means_as_average_pools = lambda m: []  # torch's graph as it comes
            try:
                graph.export_onnx(model, Path(tmp) / f"{name}.torch.onnx", shape)
            finally:
                graph.spatial_means_as_average_pools = rewrite
            graph.export_onnx(model, Path(tmp) / f"{name}.averagepool.onnx", shape)
            x = np.random.default_rng(0).standard_normal((4, *shape)).astype(np.float32)
            diff = np.abs(session(Path(tmp) / f"{name}.torch.onnx")(x)
                          - session(Path(tmp) / f"{name}.averagepool.onnx")(x)).max()
            print(f"{name}: max abs difference {diff:.1e}")
            files += [Path(tmp) / f"{name}.torch.onnx", Path(tmp) / f"{name}.averagepool.onnx"]
        times = {(f, rt): [] for f in files for rt in runtimes}
        for _ in range(a.rounds):
            for f in files:
                for rt in runtimes:
                    sess = session(f, a.threads, rt)
                    times[f, rt].append(latency_ms(sess, shape, a.batch, runs=10, warmup=2))
                    del sess
    print(f"| model | {' | '.join(f'{rt} ms (batch {a.batch}, {a.size} px)' for rt in runtimes)} |")
    print("|---|" + "---|" * len(runtimes))
    for f in files:
        print(f"| {f.name} | {' | '.join(f'{statistics.median(times[f, rt]):.2f}' for rt in runtimes)} |")


if __name__ == "__main__":
    main()
