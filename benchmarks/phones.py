"""The phone files of finished exports side by side: each target's float32 and int8 file, run on this
machine by its own runtime at batch 1, beside onnxruntime's files of the same export.

    compress export MODEL --data fashion-mnist --int8 --target onnx,executorch,litert --out EXPORT
    python benchmarks/phones.py "convtiny (quickstart)=EXPORT" [...] --csv benchmarks/results/phones-MACHINE.csv

Every figure is read from the export's metrics.json (test split, one image at a time, the export's
threads); the command that made the export is read from its model card. Results differ between
machines; on one machine the accuracies repeat.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from compressor.deploy.phones import delegated_share


def _command(export: Path) -> str:
    card = (export / "README.md").read_text()
    made = re.search(r"## Made by\s*```\s*\n(.*?)\n```", card, re.S)
    return made.group(1).strip() if made else ""


def rows_of(label: str, export: Path) -> list[dict]:
    m = json.loads((export / "metrics.json").read_text())
    command, rows = _command(export), []
    ort = m["runtimes"].get("onnxruntime", {})
    for form in ("fp32", "int8"):
        if f"accuracy_{form}" in ort:
            rows.append({"model": label, "target": "onnxruntime", "form": form, "accuracy": ort[f"accuracy_{form}"],
                         "drop_points": round(100 * (ort["accuracy_fp32"] - ort[f"accuracy_{form}"]), 2),
                         "agreement_torch": "", "ms_batch1": round(ort[f"latency_ms_{form}_batch1"], 3),
                         "size_bytes": m.get(f"size_bytes_{form}"), "zipped_bytes": m.get(f"zipped_bytes_{form}"),
                         "delegated": "", "int8_weight_layers": "", "int8_form": "",
                         "deploy": "deploy" if ort.get("deploy_form") == form else ""})
    for target, r in m.get("targets", {}).items():
        for form in r.get("forms", []):
            d = r[f"delegation_{form}"]
            rows.append({"model": label, "target": target, "form": form, "accuracy": r[f"accuracy_{form}"],
                         "drop_points": round(100 * (ort.get("accuracy_fp32", r["accuracy_fp32"])
                                                     - r[f"accuracy_{form}"]), 2),
                         "agreement_torch": round(r[f"agreement_torch_{form}"], 4),
                         "ms_batch1": round(r[f"latency_ms_{form}_batch1"], 3),
                         "size_bytes": r[f"size_bytes_{form}"], "zipped_bytes": r[f"zipped_bytes_{form}"],
                         "delegated": delegated_share(d),
                         "int8_weight_layers": d.get("int8_weight_layers", ""),
                         "int8_form": r.get("int8_form", "") if form == "int8" else "",
                         "deploy": "deploy" if r.get("deploy_form") == form else ""})
    return [{**r, "command": command} for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("exports", nargs="+", metavar="LABEL=EXPORT_DIR", help="a label for the table and an export")
    ap.add_argument("--csv", type=Path, default=None, help="also write the rows here")
    a = ap.parse_args()
    from deploy_zoo import write_csv  # the CSV with this machine and the commit

    rows = []
    for item in a.exports:
        label, _, path = item.rpartition("=")
        rows += rows_of(label or Path(path).name, Path(path))
    print("| model | target | form | accuracy (drop vs fp32 ONNX) | ms at batch 1 | zipped bytes | delegated | deploy |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['target']} | {r['form']} | {r['accuracy']:.4f} ({r['drop_points']:+.2f}) | "
              f"{r['ms_batch1']:.3f} | {r['zipped_bytes']:,} | {r['delegated']} | {r['deploy']} |")
    if a.csv:
        write_csv(a.csv, rows)


if __name__ == "__main__":
    main()
