"""Compare the batch latency of ONNX models fairly: measured in alternating rounds in one process.

    python benchmarks/int8_latency.py runs/dense-export/model.int8.onnx runs/structured-full/export/model.int8.onnx
    python benchmarks/int8_latency.py EXPORT/model.pte EXPORT/model.int8.pte EXPORT/model.tflite EXPORT/model.int8.tflite --batch 1

Phone files (.pte by ExecuTorch's runtime, .tflite by LiteRT's interpreter; their extras installed) take
one image, so they are timed at --batch 1.

Each round loads and measures every model in turn (median of --runs forward passes after warm-up),
one onnxruntime session alive at a time; the result is the median over --rounds rounds, and each
model's time relative to the first model in the same round, so load from other processes hits all alike.
"""

from __future__ import annotations

import argparse
import statistics

from pathlib import Path

from compressor.deploy.phones import TARGET_OF_SUFFIX, phone_session
from compressor.deploy.runtimes import interleaved_ms, session


def _open(path: str, threads: int | None, runtime: str | None):
    target = TARGET_OF_SUFFIX.get(Path(path).suffix)
    if target is None:
        return session(path, threads=threads, runtime=runtime)
    return phone_session(target, Path(path), threads, None)


def interleaved(models: list, batch: int, rounds: int, runs: int, threads: int | None,
                runtime: str | None) -> list[list[float]]:
    """Each model's latency (ms at `batch`, median of `runs` passes) in each of `rounds` rounds, the
    models measured in turn in every round."""
    shape = _open(str(models[0]), None, runtime).input_shape()
    return interleaved_ms([lambda m=m: _open(str(m), threads, runtime) for m in models], shape, batch, rounds, runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="ONNX, OpenVINO IR or phone files; the first is the reference")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the runtime's own)")
    ap.add_argument("--runtime", choices=["onnxruntime", "openvino"], default=None,
                    help="the runtime that runs every file (default: onnxruntime for .onnx, OpenVINO for .xml)")
    a = ap.parse_args()
    if a.batch != 1 and any(Path(m).suffix in TARGET_OF_SUFFIX for m in a.models):
        raise SystemExit("phone files (.pte, .tflite) take one image: pass --batch 1")
    times = interleaved(a.models, a.batch, a.rounds, a.runs, a.threads, a.runtime)
    print(f"| model | median ms at batch {a.batch} | ratio to the first (median over {a.rounds} rounds) | "
          "ratio range |")
    print("|---|---|---|---|")
    for m, t in zip(a.models, times):
        ratios = [x / r for x, r in zip(t, times[0])]
        print(f"| {m} | {statistics.median(t):.3f} | {statistics.median(ratios):.3f} | "
              f"{min(ratios):.3f}–{max(ratios):.3f} |")


if __name__ == "__main__":
    main()
