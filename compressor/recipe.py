"""Recipes: a YAML file naming the stages to run, validated in full before anything runs."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model

from compressor import CompressorError, distributed, stages
from compressor.artifacts import METRICS_FILE, atomic_write_json, hash_file, json_digest, read_json
from compressor.config import POST_TRAINING_INT8, STAGE_CONFIGS, Config, DataFields, field_extra
from compressor.console import log
from compressor.training.checkpoint import has_checkpoint


def derived(name: str, source: type[Config], *, rename: dict[str, str] | None = None,
            overrides: dict | None = None, keep=lambda info: field_extra(info).get("recipe", True),
            add: dict | None = None) -> type[Config]:
    """A recipe schema made from a stage config's own fields: same names, types, defaults, bounds
    (`add`: recipe-only fields)."""
    rename, overrides, fields = rename or {}, overrides or {}, dict(add or {})
    for field_name, info in source.model_fields.items():
        if not keep(info):
            continue
        key = rename.get(field_name, info.alias or field_name)
        annotation = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        default = ... if info.is_required() else info.default
        fields[key] = overrides.get(key) or (annotation, Field(default, description=info.description))
    return create_model(name, __base__=Config, **fields)


DATA_KEYS = {"data": "name", "data_root": "root"}  # recipe spelling of the --data options
DataCfg = derived("DataCfg", DataFields, rename=DATA_KEYS, keep=lambda info: True)
TEACHER_FLAG = {"prune": "fine-tune while distilling from the recipe's teach stage",
                "quantize": "distill from the recipe's teach stage instead of the float model being quantized"}
RECIPE_ONLY = {"quantize": {"auto": (bool, Field(False, description=(
    "run quantize only when the export after it loses more than its accuracy budget with post-training int8; "
    "then export again, from the quantized model")))}}
STAGES: dict[str, type[Config]] = {
    kind: derived(f"{cls.__name__}Recipe", cls, overrides={"teacher": (bool, Field(
        False, description=TEACHER_FLAG[kind]))} if kind in TEACHER_FLAG else None, add=RECIPE_ONLY.get(kind))
    for kind, cls in STAGE_CONFIGS.items()}
DistillCfg = STAGES["distill"]
MODEL_STAGES = ("teach", "distill", "prune", "quantize")  # write a model
READS_MODEL = ("select", "prune", "quantize", "export")  # read the last model written (model_dir)


class Recipe(BaseModel):
    name: str
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataCfg
    stages: list[tuple[str, Config]]


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
    stages: list[tuple[str, Config]] = []
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
        except ValidationError as e:
            errors += [f"stages.{i}.{kind}.{_fmt(err['loc'])}: {_msg(err)}" for err in e.errors()]
            cfg = None
        problems = _dependency_problems(kind, cfg, seen)
        errors += [f"stages.{i}.{kind}: {m}" for m in problems]
        if cfg is not None and data is not None and not problems:  # options that only clash together
            errors += [f"stages.{i}.{kind}: {m}" for m in _combination_problems(kind, cfg, data, seen)]
        stages.append((kind, cfg))
        seen.append(kind)
    if errors:
        n = len(errors)
        raise CompressorError(f"{source} has {n} problem{'s' if n > 1 else ''}: " + "; ".join(errors))
    return Recipe(name=top["name"], seed=top.get("seed", 0), device=top.get("device", "auto"), data=data, stages=stages)


def _combination_problems(kind: str, cfg: Config, data, seen: list[str]) -> list[str]:
    """Build the stage's full config with placeholder inputs: its cross-option checks run before anything does."""
    probe = Recipe(name="probe", data=data, stages=[])
    try:
        stage_config(kind, cfg, probe, "<out>", {k: Path(f"<{k}>") for k in seen}, Path("<model>"), "auto")
    except CompressorError as e:
        return [str(e)]
    return []


def _msg(err) -> str:
    return "unknown key" if err["type"] == "extra_forbidden" else err["msg"]


def _dependency_problems(kind: str, cfg, seen: list[str]) -> list[str]:
    has_model = any(s in MODEL_STAGES for s in seen)
    if kind in READS_MODEL and not has_model:
        return ["reads a model, but no earlier stage (teach, distill, prune) writes one"]
    if kind in ("select", "distill", "prune", "quantize") and "quantize" in seen:
        return ["comes after quantize, which writes the int8-ready model export reads; put it before quantize"]
    if kind == "distill" and "teach" not in seen and (cfg is None or (cfg.teacher is None and cfg.scheme != "self")):
        return ["needs a teacher: put a teach stage before it or set teacher: DIR"]
    if kind in TEACHER_FLAG and cfg is not None and cfg.teacher and "teach" not in seen:
        return ["teacher: true needs a teach stage before it"]
    if kind == "prune" and cfg is not None and cfg.importance == "discriminability" and "select" not in seen:
        return ["importance: discriminability needs a select stage before it (of the model being pruned)"]
    return []


# ---------------------------------------------------------------------------------------------


def _hash(obj) -> str:
    return json_digest(obj)[:16]


def stage_key(upstream: str, kind: str, cfg: Config) -> str:
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


def stage_config(kind: str, cfg: Config, recipe: Recipe, stage_dir: Path | str, paths: dict[str, Path],
                 last_model: Path | None, device: str, cache_dir: Path | None = None, resume: bool = False,
                 mlflow: str | None = None) -> Config:
    """The stage's full config: the recipe's settings for it, the recipe's data, seed and device, and
    the artifacts of earlier stages as its inputs (`paths` maps stage kinds to their directories)."""
    data = {src: getattr(recipe.data, DATA_KEYS.get(src, src)) for src in DataFields.model_fields}
    own = {k: v for k, v in cfg.model_dump(exclude_unset=True).items() if k not in RECIPE_ONLY.get(kind, {})}
    if kind == "export" and last_model is not None and paths.get("quantize") == last_model:
        own = {k: v for k, v in own.items() if k not in POST_TRAINING_INT8}  # its int8 ranges are learned
    values = {**data, **own, "seed": recipe.seed, "device": device, "out": str(stage_dir)}
    if kind in READS_MODEL:
        values["model_dir"] = str(last_model)
    if kind in MODEL_STAGES:  # the stages that train; their TensorBoard logs go beside the stages, in logs/
        values["resume"] = resume
        values["log_dir"] = str(Path(stage_dir).parent / "logs" / Path(stage_dir).name)
        values["mlflow"] = mlflow
    if kind == "distill":
        values["teacher"] = cfg.teacher or (str(paths["teach"]) if "teach" in paths else None)
        values["channels"] = str(paths["select"]) if "select" in paths else None
        values["cache_dir"] = str(cache_dir) if cache_dir is not None else None
    if kind in TEACHER_FLAG:
        values["teacher"] = str(paths["teach"]) if cfg.teacher else None
    if kind == "prune":
        if cfg.importance == "discriminability":
            values["channels"] = str(paths["select"])
    return STAGE_CONFIGS[kind].make(**{k: v for k, v in values.items() if v is not None or k in cfg.model_fields_set})


def run_stage(kind: str, cfg: Config, recipe: Recipe, stage_dir: Path, paths: dict[str, Path],
              last_model: Path | None, device: str, cache_dir: Path, resume: bool = False,
              mlflow: str | None = None) -> None:
    """Run one recipe stage into `stage_dir`; `resume`: continue from its checkpoint when it has one;
    `mlflow`: a tracking URI its training loops also log to."""
    resume = resume and has_checkpoint(stage_dir)
    if resume:
        log(f"run: {stage_dir.name}: resuming from its checkpoint")
    getattr(stages, kind)(stage_config(kind, cfg, recipe, stage_dir, paths, last_model, device, cache_dir, resume,
                                       mlflow))


class Ledger:
    """What `compress run` and `compress sweep` skip: per name, the key of the inputs that produced an
    artifact and the sha256 of the artifact written (state.json). An entry counts only when the key
    matches and the artifact still hashes the same."""

    def __init__(self, path: Path, fresh: bool = False) -> None:
        self.path = path
        state = read_json(path) if path.is_file() and not fresh else {}
        self.state = {k: v for k, v in state.items() if isinstance(v, dict)}

    def verified(self, name: str, key: str, artifact: Path) -> str | None:
        """The artifact's digest when it is what `key` produced and is intact; None to (re)run it."""
        rec = self.state.get(name)
        if not rec or rec.get("key") != key or not (artifact / METRICS_FILE).is_file():
            return None  # hash a teacher's tens of MB only when the record could match
        digest = artifact_digest(artifact)
        return digest if rec.get("digest") == digest else None

    def record(self, name: str, key: str, artifact: Path) -> str:
        digest = artifact_digest(artifact)
        self.state[name] = {"key": key, "digest": digest}
        if distributed.is_main():  # under torchrun every process keeps the record; rank 0 writes it
            atomic_write_json(self.path, self.state)
        return digest


def run_recipe(recipe: Recipe, out: str | Path, *, resume: bool = False, force: bool = False,
               device: str | None = None, mlflow: str | None = None) -> list[dict]:
    """Run the stages in order, each reading what the previous ones wrote. Returns one row per stage.

    Idempotent: a stage whose recorded inputs (upstream stages, data, seed, resolved settings, code
    version) match and whose artifact still hashes to what was recorded is skipped; anything
    changed reruns it and every stage after it. `force` reruns every stage. `resume` continues an
    interrupted stage from its checkpoint instead of starting it over. `mlflow`: a tracking URI the
    training stages also log to (besides their TensorBoard logs in OUT/logs/).
    """
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(out / "state.json", fresh=force)
    dev = device or recipe.device
    paths: dict[str, Path] = {}
    last_model: Path | None = None
    upstream = first_key(recipe)
    rows = []
    deferred = None  # a quantize stage with auto: true, run only if the export after it misses its budget

    def one(name: str, kind: str, cfg: Config) -> None:
        nonlocal last_model, upstream
        stage_dir = out / name
        key = stage_key(upstream, kind, cfg)
        t0 = time.time()
        digest = ledger.verified(name, key, stage_dir)
        skipped = digest is not None
        if skipped:
            log(f"run: {name}: unchanged and verified, skipped")
        else:
            log(f"run: {name} -> {stage_dir}")
            run_stage(kind, cfg, recipe, stage_dir, paths, last_model, dev, out / "cache", resume=resume,
                      mlflow=mlflow)
            digest = ledger.record(name, key, stage_dir)
        paths[kind] = stage_dir
        if kind in MODEL_STAGES:
            last_model = stage_dir
        upstream = _hash({"key": key, "artifact": digest})  # later stages depend on what this one wrote
        rows.append({"stage": name, "dir": str(stage_dir), "skipped": skipped, "seconds": round(time.time() - t0, 1),
                     "upstream": upstream})

    for name, kind, cfg in named_stages(recipe):
        if kind == "quantize" and getattr(cfg, "auto", False):
            if ledger.verified(name, stage_key(upstream, kind, cfg), out / name) is None:  # not escalated before
                deferred = (name, kind, cfg)
                log(f"run: {name}: auto: runs only if the export after it misses its int8 accuracy budget")
                continue
        if kind == "export" and deferred is not None:
            state = (last_model, upstream, len(rows))
            try:
                one(name, kind, cfg)
            except CompressorError as e:
                m = read_json(out / name / METRICS_FILE) if (out / name / METRICS_FILE).is_file() else {}
                if m.get("status") != "failed" or not _over_budget(m):
                    raise
                log(f"run: {name}: post-training int8 missed its accuracy budget ({e}); running {deferred[0]} "
                    "(quantization-aware training), then exporting again")
                last_model, upstream = state[0], state[1]
                del rows[state[2]:]
                one(*deferred)
                one(name, kind, cfg)
            deferred = None
            continue
        one(name, kind, cfg)
    return rows


def _over_budget(export_metrics: dict) -> bool:
    """An export failed because an int8 file lost more than its accuracy budget (not for speed)."""
    limit = export_metrics.get("accuracy_budget_points")
    return limit is not None and any(r.get("accuracy_drop_points", 0) > limit
                                     for r in (export_metrics.get("runtimes") or {}).values())


def named_stages(recipe: Recipe) -> list[tuple[str, str, Config]]:
    """(directory name, kind, settings) per stage: the second distill is distill-2, and so on."""
    counts: dict[str, int] = {}
    out = []
    for kind, cfg in recipe.stages:
        counts[kind] = counts.get(kind, 0) + 1
        out.append((kind if counts[kind] == 1 else f"{kind}-{counts[kind]}", kind, cfg))
    return out
