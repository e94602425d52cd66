"""A quantize artifact's int8 file against the post-training file of the same form: the same graph
(compress quantize's scheme: BatchNorm folded, convolutions and linear layers int8, float32 between
them), once with ranges calibrated on the export's calibration images (no fine-tuning), once with the
ranges and weights quantize learned. Both should run the same int8 kernels, so at the same latency.

    python benchmarks/qat.py --models mobilenetv3_small_100 efficientnet_b0 --seeds 0 --variants distilled
    python benchmarks/qat_same_form.py --models mobilenetv3_small_100 efficientnet_b0 --csv benchmarks/results/qat-same-form-MACHINE.csv

For each model: the taught model's fp32 file, the post-training file of the QAT scheme (written here)
and the distilled QAT file of seed 0 (`qat-distilled-e2-s0-export`), timed in alternating rounds
(`int8_latency.interleaved`) on each runtime at --batch; test accuracy of each on onnxruntime. Results
differ between machines.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from deploy_zoo import write_csv  # noqa: E402  (the CSV with this machine and the commit)
from int8_latency import interleaved  # noqa: E402
from qat import add_zoo_arguments, zoo_dir  # noqa: E402


def _accuracy(path: Path, test: list, labels: np.ndarray) -> float:
    from compressor.deploy.runtimes import predict_batches, session

    logits, _ = predict_batches(session(path), test, f"accuracy of {path.name}")
    return float((logits.argmax(1) == labels).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_zoo_arguments(ap)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    from compressor.artifacts import load_artifact
    from compressor.config import ExportConfig
    from compressor.deploy.runtimes import RUNTIMES, machine_summary, save_openvino_ir
    from compressor.stages.common import load_bundle
    from compressor.stages.export_stage import calibration_images, layers_writer

    rows = []
    for model in a.models:
        base = zoo_dir(a, model)
        qat = base / f"qat-distilled-e{a.qat_epochs}-s0-export"
        if not (qat / "model.int8.onnx").is_file():
            raise SystemExit(f"{qat}: no QAT export; run benchmarks/qat.py --models {model} --seeds 0 first")
        art = load_artifact(base / "teach")
        cfg = ExportConfig(model_dir=str(base / "teach"), out=str(base / "export"), data="fashion-mnist",
                           image_size=a.image_size, train_size=a.train_size, int8=True)  # the export's settings
        bundle = load_bundle(cfg, art.spec)
        ptq = base / "qat-scheme-post-training.onnx"
        layers_writer(art.model.cpu().eval(), art.spec.input_shape, calibration_images(cfg, bundle))(ptq)
        save_openvino_ir(ptq, ptq.with_suffix(".xml"))
        files = {"fp32": base / "export" / "model.onnx", "post-training, QAT scheme": ptq,
                 "QAT (distilled, seed 0)": qat / "model.int8.onnx"}
        test = list(bundle.loader("test", 256))
        labels = np.concatenate([y.numpy() for _, y in test])
        accuracy = {form: _accuracy(path, test, labels) for form, path in files.items()}
        for rt in RUNTIMES:
            paths = [p if rt == "onnxruntime" else p.with_suffix(".xml") for p in files.values()]  # OpenVINO: the IRs
            times = interleaved(paths, a.batch, a.rounds, 30, a.threads, rt)
            for form, t in zip(files, times):
                ratios = [x / r for x, r in zip(t, times[0])]
                rows.append({"model": model, "runtime": rt, "form": form, "accuracy_onnxruntime": accuracy[form],
                             f"ms_batch{a.batch}": round(statistics.median(t), 3),
                             "vs_fp32": round(statistics.median(ratios), 3),
                             "vs_fp32_range": f"{min(ratios):.3f}-{max(ratios):.3f}"})
                print(rows[-1], file=sys.stderr)
    print(machine_summary())
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    if a.csv:
        write_csv(a.csv, rows)


if __name__ == "__main__":
    main()
