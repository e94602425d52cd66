"""Recipes: a YAML file naming the stages to run, validated in full before anything runs."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from compressor import CompressorError
from compressor.artifacts import METRICS_FILE, atomic_write_json, hash_file, json_digest, read_json
from compressor.console import log
from compressor.data import DATA_NAMES

Optim = Literal["sgd", "adam"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataCfg(_Strict):
    name: Literal[DATA_NAMES]  # type: ignore[valid-type]
    root: Optional[str] = None
    image_size: Optional[int] = Field(None, ge=8)
    train_size: Optional[int] = Field(None, ge=1)
    download: bool = False


class _TrainCfg(_Strict):
    train_size: Optional[int] = Field(None, ge=1)  # overrides data.train_size for this stage
    epochs: int = Field(3, ge=0)
    lr: float = Field(0.05, gt=0)
    batch_size: int = Field(128, ge=1)
    optimizer: Optim = "sgd"
    weight_decay: float = Field(5e-4, ge=0)


class TeachCfg(_TrainCfg):
    model: str
    pretrained: bool = False
    init: Optional[str] = None
    reinit_head: bool = False
    trainable: Optional[str] = None


class SelectCfg(_Strict):
    top_k: int = Field(ge=1)
    layers: Union[str, list[str]] = "auto"
    samples: int = Field(5000, ge=2)


class DistillCfg(_TrainCfg):
    student: str
    teacher: Optional[str] = None  # an artifact dir; default: the recipe's teach stage
    method: Literal["kd", "mse", "fitnet", "at", "rkd", "vid", "l2tww"] = "kd"
    scheme: Literal["offline", "online", "self"] = "offline"
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1)
    beta: Optional[float] = Field(None, ge=0)
    layers: Optional[str] = None
    pairs: Literal["matched", "all"] = "matched"
    hint_epochs: int = Field(1, ge=0)
    chunk_size: int = Field(1800, ge=1)
    buffer_chunks: int = Field(5, ge=1)
    epochs_per_buffer: int = Field(2, ge=1)
    distill_after: int = Field(5, ge=0)
    trainable: Optional[str] = None
    teacher_lr: float = Field(1e-3, gt=0)
    control: bool = False
    cache_teacher: bool = False
    epochs: int = Field(5, ge=0)


class PruneCfg(_Strict):
    sparsity: float = Field(ge=0, lt=1)
    train_size: Optional[int] = Field(None, ge=1)
    structured: bool = False
    schedule: Literal["oneshot", "gradual"] = "gradual"
    scope: Literal["global", "layer"] = "global"
    include_all: bool = False
    importance: Literal["magnitude", "discriminability"] = "magnitude"
    method: Literal["kd", "mse", "fitnet", "at", "rkd", "vid", "l2tww"] = "kd"
    finetune_epochs: int = Field(1, ge=0)
    teacher: bool = False  # fine-tune while distilling from the recipe's teach stage
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1)
    lr: float = Field(0.01, gt=0)
    batch_size: int = Field(128, ge=1)
    optimizer: Optim = "sgd"
    weight_decay: float = Field(5e-4, ge=0)


class ExportCfg(_Strict):
    int8: bool = False
    fp16: bool = False
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = True
    calibration_batches: int = Field(8, ge=1)
    max_drop: Optional[float] = Field(None, ge=0)
    latency_batch: int = Field(64, ge=1)
    fp32_stem: bool = False


STAGES: dict[str, type[_Strict]] = {"teach": TeachCfg, "select": SelectCfg, "distill": DistillCfg,
                                    "prune": PruneCfg, "export": ExportCfg}
MODEL_STAGES = ("teach", "distill", "prune")


class Recipe(BaseModel):
    name: str
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataCfg
    stages: list[tuple[str, _Strict]]


def _fmt(loc) -> str:
    return ".".join(str(p) for p in loc)


def load_recipe(path: str | Path) -> Recipe:
    """Parse and validate a recipe; every problem is reported at once, with its dotted path."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise CompressorError(f"recipe {p} does not exist")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise CompressorError(f"recipe {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    return parse_recipe(raw, str(p))


def parse_recipe(raw, source: str = "recipe") -> Recipe:
    errors: list[str] = []
    if not isinstance(raw, dict):
        raise CompressorError(f"{source}: a recipe is a mapping with name, data and stages")
    allowed = {"name", "seed", "device", "data", "stages"}
    errors += [f"{k}: unknown key (allowed: {', '.join(sorted(allowed))})" for k in raw if k not in allowed]
    for key in ("name", "data", "stages"):
        if key not in raw:
            errors.append(f"{key}: missing")
    top = {}
    try:
        top = {k: v for k, v in raw.items() if k in ("name", "seed", "device")}
        top.setdefault("name", "recipe")
        Recipe.model_validate({**top, "data": {"name": "synthetic"}, "stages": []})
    except ValidationError as e:
        errors += [f"{_fmt(err['loc'])}: {err['msg']}" for err in e.errors()]
    data = None
    if "data" in raw:
        try:
            data = DataCfg.model_validate(raw["data"])
        except ValidationError as e:
            errors += [f"data.{_fmt(err['loc'])}: {_msg(err)}" for err in e.errors()]
    stages: list[tuple[str, _Strict]] = []
    raw_stages = raw.get("stages", [])
    if not isinstance(raw_stages, list) or ("stages" in raw and not raw_stages):
        errors.append("stages: a non-empty list of {stage: {options}} items")
        raw_stages = []
    seen: list[str] = []
    for i, item in enumerate(raw_stages):
        if not isinstance(item, dict) or len(item) != 1:
            errors.append(f"stages.{i}: each stage is one key ({', '.join(STAGES)}) mapping to its options")
            continue
        (kind, opts), = item.items()
        if kind not in STAGES:
            errors.append(f"stages.{i}.{kind}: unknown stage (choose {', '.join(STAGES)})")
            continue
        try:
            cfg = STAGES[kind].model_validate(opts or {})
            stages.append((kind, cfg))
        except ValidationError as e:
            errors += [f"stages.{i}.{kind}.{_fmt(err['loc'])}: {_msg(err)}" for err in e.errors()]
            cfg = None
        errors += [f"stages.{i}.{kind}: {m}" for m in _dependency_problems(kind, cfg, seen)]
        seen.append(kind)
    if errors:
        n = len(errors)
        raise CompressorError(f"{source} has {n} problem{'s' if n > 1 else ''}: " + "; ".join(errors))
    return Recipe(name=top["name"], seed=top.get("seed", 0), device=top.get("device", "auto"), data=data, stages=stages)


def _msg(err) -> str:
    return "unknown key" if err["type"] == "extra_forbidden" else err["msg"]


def _dependency_problems(kind: str, cfg, seen: list[str]) -> list[str]:
    has_model = any(s in MODEL_STAGES for s in seen)
    if kind in ("select", "prune", "export") and not has_model:
        return ["reads a model, but no earlier stage (teach, distill, prune) writes one"]
    if kind == "distill" and "teach" not in seen and (cfg is None or (cfg.teacher is None and cfg.scheme != "self")):
        return ["needs a teacher: put a teach stage before it or set teacher: DIR"]
    if kind == "prune" and cfg is not None and cfg.teacher and "teach" not in seen:
        return ["teacher: true needs a teach stage before it"]
    if kind == "prune" and cfg is not None and cfg.importance == "discriminability" and "select" not in seen:
        return ["importance: discriminability needs a select stage before it (of the model being pruned)"]
    return []


# ---------------------------------------------------------------------------------------------


def _hash(obj) -> str:
    return json_digest(obj)[:16]


def stage_key(upstream: str, kind: str, cfg: _Strict) -> str:
    """What a stage's result depends on: everything upstream, its kind and its resolved settings."""
    return _hash({"upstream": upstream, "cfg": cfg.model_dump(), "kind": kind})


_CODE_VERSION: str | None = None


def code_version() -> str:
    """compressor's version plus a hash of its source: changed code means changed results."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        import compressor

        h = hashlib.sha256(compressor.__version__.encode())
        root = Path(compressor.__file__).parent
        for f in sorted(root.rglob("*.py")):
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
        _CODE_VERSION = f"{compressor.__version__}+{h.hexdigest()[:12]}"
    return _CODE_VERSION


def first_key(recipe: Recipe) -> str:
    return _hash({"data": recipe.data.model_dump(), "seed": recipe.seed, "code": code_version()})


def artifact_digest(stage_dir: Path) -> str:
    """sha256 over every file of a complete artifact directory (names and bytes)."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(stage_dir).iterdir() if p.is_file()):
        h.update(f.name.encode())
        hash_file(h, f)
    return h.hexdigest()


def run_stage(kind: str, cfg: _Strict, recipe: Recipe, stage_dir: Path, paths: dict[str, Path],
              last_model: Path | None, device: str, cache_dir: Path, resume: bool = False) -> None:
    """Run one recipe stage into `stage_dir`; `paths` maps earlier stage kinds to their directories.

    `resume`: continue from the stage's checkpoint when it has one (an interrupted run).
    """
    from compressor.distill.online import OnlineConfig
    from compressor.stages import distill, export, prune, select, teach
    from compressor.stages.common import DataOptions
    from compressor.training import TrainConfig

    c, d, seed = cfg.model_dump(), recipe.data, recipe.seed
    data = DataOptions(name=d.name, root=d.root, image_size=d.image_size, download=d.download,
                       train_size=c.get("train_size") or d.train_size)
    train_keys = ("epochs", "lr", "batch_size", "optimizer", "weight_decay")
    from compressor.checkpoint import has_checkpoint

    resume = resume and has_checkpoint(stage_dir)
    if resume:
        log(f"run: {stage_dir.name}: resuming from its checkpoint")
    if kind == "teach":
        teach(data=data, model=c["model"], out=stage_dir, pretrained=c["pretrained"], init=c["init"],
              trainable=c["trainable"], train=TrainConfig(seed=seed, **{k: c[k] for k in train_keys}),
              reinit_head=c["reinit_head"], resume=resume, device=device)
    elif kind == "select":
        select(last_model, data=data, out=stage_dir, top_k=c["top_k"], layers=c["layers"],
               samples=c["samples"], seed=seed, device=device)
    elif kind == "distill":
        online = OnlineConfig(**{k: c[k] for k in ("chunk_size", "buffer_chunks", "epochs_per_buffer",
                                                    "distill_after", "trainable", "teacher_lr")})
        distill(teacher=c["teacher"] or paths.get("teach"), student=c["student"], data=data, out=stage_dir,
                online=online,
                method=c["method"], scheme=c["scheme"], temperature=c["temperature"], alpha=c["alpha"],
                beta=c["beta"], layers=c["layers"], pairs=c["pairs"], hint_epochs=c["hint_epochs"],
                channels=str(paths["select"]) if "select" in paths else None, control=c["control"],
                cache_teacher=c["cache_teacher"], cache_dir=cache_dir, resume=resume,
                train=TrainConfig(seed=seed, **{k: c[k] for k in train_keys}), device=device)
    elif kind == "prune":
        prune(last_model, data=data, out=stage_dir, sparsity=c["sparsity"], structured=c["structured"],
              schedule=c["schedule"], scope=c["scope"], include_all=c["include_all"],
              importance=c["importance"], method=c["method"],
              channels=str(paths["select"]) if c["importance"] == "discriminability" else None,
              finetune_epochs=c["finetune_epochs"], teacher=str(paths["teach"]) if c["teacher"] else None,
              temperature=c["temperature"], alpha=c["alpha"],
              train=TrainConfig(seed=seed, epochs=c["finetune_epochs"],
                                **{k: c[k] for k in train_keys if k != "epochs"}), resume=resume, device=device)
    elif kind == "export":
        export(last_model, data=data, out=stage_dir, int8=c["int8"], fp16=c["fp16"],
               calibration_method=c["calibration_method"], per_channel=c["per_channel"],
               calibration_batches=c["calibration_batches"], max_drop=c["max_drop"],
               latency_batch=c["latency_batch"], fp32_stem=c["fp32_stem"], seed=seed, device=device)


def run_recipe(recipe: Recipe, out: str | Path, *, resume: bool = False, force: bool = False,
               device: str | None = None) -> list[dict]:
    """Run the stages in order, each reading what the previous ones wrote. Returns one row per stage.

    Idempotent: a stage whose recorded inputs (upstream stages, data, seed, resolved settings, code
    version) match and whose artifact still hashes to what was recorded is skipped; anything
    changed reruns it and every stage after it. `force` reruns every stage. `resume` continues an
    interrupted stage from its checkpoint instead of starting it over.
    """
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "state.json"
    state = read_json(state_path) if (state_path.is_file() and not force) else {}
    dev = device or recipe.device
    paths: dict[str, Path] = {}
    last_model: Path | None = None
    upstream = first_key(recipe)
    rows = []
    for name, kind, cfg in named_stages(recipe):
        stage_dir = out / name
        key = stage_key(upstream, kind, cfg)
        t0 = time.time()
        rec = state.get(name)
        # hash the artifact only when the record could match (a teacher's weights are tens of MB)
        digest = (artifact_digest(stage_dir) if isinstance(rec, dict) and rec.get("key") == key
                  and (stage_dir / METRICS_FILE).is_file() else None)
        skipped = digest is not None and rec.get("digest") == digest
        if skipped:
            log(f"run: {name}: unchanged and verified, skipped")
        else:
            log(f"run: {name} -> {stage_dir}")
            run_stage(kind, cfg, recipe, stage_dir, paths, last_model, dev, out / "cache", resume=resume)
            digest = artifact_digest(stage_dir)
            state[name] = {"key": key, "digest": digest}
            atomic_write_json(state_path, state)
        paths[kind] = stage_dir
        if kind in MODEL_STAGES:
            last_model = stage_dir
        upstream = _hash({"key": key, "artifact": digest})  # later stages depend on what this one wrote
        rows.append({"stage": name, "dir": str(stage_dir), "skipped": skipped, "seconds": round(time.time() - t0, 1),
                     "upstream": upstream})
    return rows


def named_stages(recipe: Recipe) -> list[tuple[str, str, _Strict]]:
    """(directory name, kind, settings) per stage: the second distill is distill-2, and so on."""
    counts: dict[str, int] = {}
    out = []
    for kind, cfg in recipe.stages:
        counts[kind] = counts.get(kind, 0) + 1
        out.append((kind if counts[kind] == 1 else f"{kind}-{counts[kind]}", kind, cfg))
    return out
