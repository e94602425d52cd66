"""Where an artifact came from, recorded so that it travels: its inputs, its lineage, its model card.

model.json records each input artifact (the teacher, the model read, the select artifact) relative to
the artifact itself, with the sha256 of its weights (`inputs`), and the chain of steps that made the
model, teacher to export, each with its stage, architecture, key settings and accuracy (`lineage`).
A run directory copied elsewhere (tar, a CI artifact, another working directory) therefore still
finds its inputs: `locate_input` looks where the record points, then where the user typed, then in
the run directory's own stages, and accepts only a directory whose weights hash as recorded.

Every artifact also gets a model card (README.md: what it is, its lineage, its metrics, how to load
it, the command that made it), and a dense timm-architecture model a timm `config.json`, written
with timm's own `save_config_for_hf`, so `timm.create_model("local-dir:DIR", pretrained=True)`
builds it with its classes, channels, mean and std and loads its weights (the Hugging Face Hub's
convention: the directory can be pushed as it is with `hf upload`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path

from compressor import CompressorError
from compressor.artifacts import (METRICS_FILE, MODEL_FILE, SPEC_FILE, atomic_write_bytes, atomic_write_json, hash_file,
                                  read_json)
from compressor.models import ModelSpec, create_model, list_builtin

CARD_FILE, TIMM_CONFIG_FILE = "README.md", "config.json"
PARENT_FIELDS = ("model_dir", "teacher")  # whose lineage an artifact continues: the model read, else the teacher
# pretrained_cfg fields that describe timm's own weights, not ours
_NOT_OURS = ("tag", "hf_hub_id", "license", "origin_url", "paper_ids", "paper_name", "notes", "source", "file")


def weights_digest(artifact_dir: Path) -> str:
    """sha256 of an artifact's weights (of its metrics.json for artifacts without a model: select)."""
    d = Path(artifact_dir)
    h = hashlib.sha256()
    hash_file(h, d / MODEL_FILE if (d / MODEL_FILE).is_file() else d / METRICS_FILE)
    return h.hexdigest()


def _relative(target: Path, start: Path) -> str:
    return Path(os.path.relpath(target.resolve(), start.resolve())).as_posix()


def record(staging: Path, final: Path, stage: str, input_dirs: dict[str, Path], settings: dict,
           metrics: dict) -> None:
    """Add `inputs` and `lineage` to the staged artifact's model.json and write its model card (and a
    timm config.json where timm can build the model). `final`: where the artifact will live;
    `input_dirs`: the artifacts the stage read, by option name; `settings`: the step's settings to
    show (the stage's key settings)."""
    inputs = {k: {"path": _relative(p, final), "digest": weights_digest(p)}
              for k, p in input_dirs.items() if (p / METRICS_FILE).is_file()}
    parent = next((input_dirs[k] for k in PARENT_FIELDS if k in inputs), None)
    lineage = [{**step, "path": _relative(parent / step["path"], final)} for step in _lineage_of(parent)]
    spec_path = staging / SPEC_FILE
    spec = ModelSpec.read(read_json(spec_path), spec_path) if spec_path.is_file() else None
    step = {"stage": stage, "architecture": spec.architecture if spec else None, "path": ".",
            "settings": {k: v for k, v in settings.items() if v not in (None, False)},
            "accuracy": metrics.get("accuracy"), "digest": weights_digest(staging) if spec else None}
    lineage.append({k: v for k, v in step.items() if v is not None})
    if spec is not None:
        spec = spec.model_copy(update={"inputs": inputs, "lineage": lineage})
        atomic_write_json(spec_path, spec.to_json())
    timm_ok = spec is not None and timm_config(spec, staging / TIMM_CONFIG_FILE)
    files = sorted(p.name for p in staging.iterdir())
    card = model_card(final.name, stage, spec, lineage, metrics, timm_ok, files)
    atomic_write_bytes(staging / CARD_FILE, card.encode())


def _lineage_of(parent: Path | None) -> list[dict]:
    if parent is None or not (parent / SPEC_FILE).is_file():
        return []
    spec = ModelSpec.read(read_json(parent / SPEC_FILE), parent / SPEC_FILE)
    if spec.lineage:
        return [dict(step) for step in spec.lineage]
    # written before lineages were recorded: the parent itself is the first step known
    return [{"stage": spec.stage, "architecture": spec.architecture, "path": ".", "digest": weights_digest(parent)}]


def locate_input(artifact_dir: Path, spec: ModelSpec, field: str, fallback: Path | None = None) -> Path:
    """The input artifact `field` (e.g. "teacher") of an artifact: where model.json's record points
    (relative to the artifact), else the path the user typed, else `fallback` (the run directory's own
    stage); only a complete artifact whose weights hash as recorded counts. One line when none does."""
    rec = spec.inputs.get(field) or {}
    typed = spec.settings.get(field)
    candidates = [Path(artifact_dir) / rec["path"]] if rec.get("path") else []
    candidates += [Path(typed).expanduser()] if isinstance(typed, str) else []
    candidates += [fallback] if fallback is not None else []
    for c in candidates:
        if (c / METRICS_FILE).is_file() and (not rec.get("digest") or weights_digest(c) == rec["digest"]):
            return c
    if not candidates:
        raise CompressorError(f"{artifact_dir} records no {field}")
    looked = ", ".join(dict.fromkeys(str(c) for c in candidates))
    digest = f" whose weights hash to {rec['digest'][:12]}" if rec.get("digest") else ""
    raise CompressorError(f"cannot find the {field} of {artifact_dir}: no artifact{digest} at {looked}; "
                          "copy it back beside the run or pass its path")


def lineage_line(lineage: list[dict]) -> str:
    """One line: teach resnet18 (0.9012) -> distill convtiny kd (0.8816) -> ..."""
    parts = []
    for s in lineage:
        what = " ".join(str(x) for x in (s["stage"], s.get("architecture"), s.get("settings", {}).get("method")) if x)
        parts.append(what + (f" ({s['accuracy']:.4f})" if isinstance(s.get("accuracy"), float) else ""))
    return " -> ".join(parts)


def timm_config(spec: ModelSpec, path: Path) -> bool:
    """Write timm's config.json for a model timm builds as it is (a timm architecture, not
    structured-pruned, not fake-quantized); False when timm cannot build it from a config."""
    if spec.architecture in list_builtin() or spec.structured_pruning or spec.quantization:
        return False
    from timm.models._hub import save_config_for_hf

    model = create_model(spec.architecture, num_classes=spec.num_classes, in_chans=spec.input_shape[0], **spec.kwargs)
    data_config = {"input_size": tuple(spec.input_shape), "mean": tuple(spec.mean), "std": tuple(spec.std)}
    pipeline = spec.data.get("pipeline") or {}
    data_config.update({k: pipeline[k] for k in ("interpolation", "crop_pct") if pipeline.get(k)})
    with tempfile.TemporaryDirectory() as tmp:
        save_config_for_hf(model, Path(tmp) / TIMM_CONFIG_FILE, model_args=dict(spec.kwargs), data_config=data_config,
                           model_config={"label_names": list(spec.class_names)} if spec.class_names else None)
        config = json.loads((Path(tmp) / TIMM_CONFIG_FILE).read_text())
    for key in _NOT_OURS:
        config["pretrained_cfg"].pop(key, None)
    atomic_write_json(path, config)
    return True


def _command() -> str:
    argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv else []
    if argv and argv[0] == "compress":
        return shlex.join(argv)
    return "(from Python: compressor.stages)"


def _value(v, fmt: str = ".4f") -> str:
    return format(v, fmt) if isinstance(v, float) else str(v)


def model_card(name: str, stage: str, spec: ModelSpec | None, lineage: list[dict], metrics: dict, timm_ok: bool,
               files: list[str]) -> str:
    """README.md of an artifact: what it is, lineage, metrics, how to load it, the command that made it."""
    what = f"`{spec.architecture}`, {spec.num_classes} classes, input {'x'.join(map(str, spec.input_shape))} " \
           f"(C x H x W), data `{spec.data.get('name')}`" if spec else "channel scores (no model)"
    md = [f"# {name}", "", f"The `{stage}` artifact of a compressor run: {what}.", ""]
    md += ["## Lineage", ""]
    for i, s in enumerate(lineage, 1):
        settings = ", ".join(f"{k}={_value(v, 'g')}" for k, v in s.get("settings", {}).items())
        acc = f"; test accuracy {s['accuracy']:.4f}" if isinstance(s.get("accuracy"), float) else ""
        settings = f": {settings}" if settings else ""
        md.append(f"{i}. **{s['stage']}** {s.get('architecture') or ''} (`{s['path']}`){settings}{acc}")
    scalars = {k: v for k, v in metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) or isinstance(v, str) and len(v) <= 60}
    md += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
    md += [f"| {k} | {_value(v)} |" for k, v in scalars.items()]
    md += ["", "Test-split figures; latencies are this machine's (metrics.json names its CPU and runtime versions).",
           ""]
    if spec is not None:
        md += ["## Load it", "", "With compressor installed:", "", "```python",
               "from compressor.artifacts import load_artifact",
               f'model = load_artifact("{name}").model  # eval mode, weights loaded', "```", ""]
        if timm_ok:
            md += ["With timm alone (config.json holds the classes, channels, mean and std):", "", "```python",
                   "import timm", f'model = timm.create_model("local-dir:{name}", pretrained=True).eval()', "```", ""]
        if "model.onnx" in files:
            md += ["With onnxruntime or OpenVINO (inputs normalized with the mean and std in model.json):", "",
                   "```python", "import onnxruntime as ort",
                   f'session = ort.InferenceSession("{name}/{_onnx_file(metrics)}")']
            if "model.xml" in files:
                md += ["import openvino as ov", f'compiled = ov.Core().compile_model("{name}/model.xml", "CPU")']
            md += ["```", "", "The form to ship on each runtime is metrics.json's `deploy_form` / `deploy_file`.", ""]
        md += ["Share it on the Hugging Face Hub as it is: `hf upload USER/NAME " + name + "`.", ""]
    md += ["## Made by", "", "```", _command(), "```", "",
           f"Files: {', '.join(f for f in files if not f.startswith('.'))}.", ""]
    return "\n".join(md)


def _onnx_file(metrics: dict) -> str:
    f = str(metrics.get("deploy_file") or "")
    return f if f.endswith(".onnx") else "model.onnx"
