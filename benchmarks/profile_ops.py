"""Where a model's time goes, operator by operator, on onnxruntime and OpenVINO (their own profilers).

    python benchmarks/profile_ops.py runs/qs-session9/export/model.int8.onnx --runtime onnxruntime
    python benchmarks/profile_ops.py runs/qs-session9/export/model.int8.xml --runtime openvino

onnxruntime: the session profiler's kernel times of the optimized graph, averaged over the runs (the
node names are onnxruntime's after its layout rewrites). OpenVINO: PERF_COUNT's real time per node
of the compiled model (float layers in --precision, float32 by default), from the last run. Batch --batch, --threads threads, after --warmup passes.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile

import numpy as np

from compressor.deploy.runtimes import OPENVINO_PRECISION, session


def onnxruntime_ops(path: str, x: np.ndarray, threads: int, runs: int, warmup: int) -> list[tuple[float, str, str]]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "profile")
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    for _ in range(warmup + runs):
        sess.run(None, {"input": x})
    trace = sess.end_profiling()
    with open(trace) as f:
        events = json.load(f)
    os.remove(trace)
    total: dict[tuple[str, str], float] = collections.defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            total[e["args"]["op_name"], e["name"][: -len("_kernel_time")]] += e["dur"]
    return [(us / (warmup + runs), op, name) for (op, name), us in total.items()]


def openvino_ops(path: str, x: np.ndarray, threads: int, runs: int, warmup: int,
                 precision: str = "fp32") -> list[tuple[float, str, str]]:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(path)
    model.reshape(list(x.shape))
    request = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
                                                "PERF_COUNT": True,
                                                "INFERENCE_PRECISION_HINT": OPENVINO_PRECISION[precision]}
                                 ).create_infer_request()
    for _ in range(warmup + runs):
        request.infer({0: x}, share_inputs=True)
    return [(p.real_time.total_seconds() * 1e6, f"{p.node_type} ({p.exec_type})", p.node_name)
            for p in request.profiling_info if p.real_time.total_seconds() > 0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="an ONNX file, or OpenVINO's .xml")
    ap.add_argument("--runtime", choices=("onnxruntime", "openvino"), default=None,
                    help="default: openvino for .xml, onnxruntime otherwise")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--precision", choices=tuple(OPENVINO_PRECISION), default="fp32",
                    help="OpenVINO: the precision of the float layers (its default on a bf16 CPU would be bf16)")
    ap.add_argument("--by-op", action="store_true", help="sum the times per operator type (and kernel, on OpenVINO)")
    a = ap.parse_args()
    runtime = a.runtime or ("openvino" if a.model.endswith(".xml") else "onnxruntime")
    shape = session(a.model, a.threads, runtime).input_shape()
    x = np.random.default_rng(0).standard_normal((a.batch, *shape)).astype(np.float32)
    if runtime == "onnxruntime":
        rows = sorted(onnxruntime_ops(a.model, x, a.threads, a.runs, a.warmup), reverse=True)
    else:
        rows = sorted(openvino_ops(a.model, x, a.threads, a.runs, a.warmup, a.precision), reverse=True)
    print(f"{a.model} on {runtime}, batch {a.batch}, {a.threads} threads: {sum(r[0] for r in rows):.0f} us in operators")
    if a.by_op:
        total, count = collections.Counter(), collections.Counter()
        for us, op, _ in rows:
            total[op] += us
            count[op] += 1
        print("| us | operator | nodes |\n|---|---|---|")
        for op, us in total.most_common(a.top):
            print(f"| {us:.1f} | {op} | {count[op]} |")
        return
    print("| us | operator | node |\n|---|---|---|")
    for us, op, name in rows[: a.top]:
        print(f"| {us:.1f} | {op} | {name} |")


if __name__ == "__main__":
    main()
