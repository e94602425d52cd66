"""select: rank each feature map of chosen layers by class discriminability and keep the top k."""

from __future__ import annotations

from pathlib import Path

import torch

from compressor import CompressorError
from compressor.artifacts import load_artifact, read_json
from compressor.config import SelectConfig
from compressor.console import log, progress
from compressor.discriminability import DiscriminabilityAccumulator
from compressor.taps import FeatureTap
from compressor.models import count_params, stage_layers
from compressor.stages.common import load_bundle
from compressor.stages.runner import StageRun, stage


def resolve_layers(model: torch.nn.Module, layers: str | list[str]) -> list[str]:
    if layers == "auto" or layers == ["auto"]:
        return stage_layers(model)
    names = [n.strip() for n in (layers.split(",") if isinstance(layers, str) else layers) if n.strip()]
    if not names:
        raise CompressorError("--layers is empty; pass 'auto' or comma-separated module names")
    return names


@torch.no_grad()
def score_channels(model: torch.nn.Module, loader, layers: list[str], num_classes: int,
                   device) -> dict[str, torch.Tensor]:
    model.eval().to(device)
    accs = {n: DiscriminabilityAccumulator(num_classes) for n in layers}
    with FeatureTap(model, layers, detach=True) as tap, progress("select", len(loader)) as bar:
        for x, y in loader:
            model(x.to(device))
            for name, f in tap.pop().items():
                accs[name].update(f, y)
            bar.advance()
    return {n: a.scores() for n, a in accs.items()}


@stage("select", SelectConfig)
def select(run: StageRun) -> dict:
    """Rank the channels of the chosen layers by how well they separate the classes; write channels.json."""
    cfg = run.cfg
    art = load_artifact(cfg.model_dir)
    bundle = load_bundle(cfg, art.spec)
    names = resolve_layers(art.model, cfg.layers)
    loader = bundle.loader("train", 256, limit=cfg.samples)
    scores = score_channels(art.model, loader, names, bundle.num_classes, run.device)
    entries = [_keep_top(name, scores[name], cfg.top_k) for name in names]
    source = str(Path(cfg.model_dir).absolute())
    run.writer.write_json("channels.json", {"model_dir": source, "top_k": cfg.top_k, "samples": len(loader.data),
                                            "layers": entries})
    return {"accuracy": art.metrics.get("accuracy"), "params": count_params(art.model), "source": source,
            "layers": {e["name"]: {"channels": e["channels"], "kept": e["top_k"]} for e in entries}}


def _keep_top(name: str, s: torch.Tensor, top_k: int) -> dict:
    k = min(top_k, s.numel())
    kept = torch.argsort(s, descending=True)[:k].sort().values
    log(f"select: {name}: kept {k} of {s.numel()} channels (score {float(s.max()):.4f} best, "
        f"{float(s[kept].min()):.4f} last kept)")
    return {"name": name, "channels": int(s.numel()), "top_k": k, "kept": kept.tolist(),
            "scores": [round(float(v), 6) for v in s]}


def read_channels(select_dir: str | Path) -> dict[str, list[int]]:
    """{layer name: kept channel indices} from a select artifact."""
    art = load_artifact(select_dir, with_model=False)
    path = art.path / "channels.json"
    if not path.is_file():
        raise CompressorError(f"{art.path} has no channels.json; pass the directory `compress select` wrote")
    return {e["name"]: e["kept"] for e in read_json(path)["layers"]}
