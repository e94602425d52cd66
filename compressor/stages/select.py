"""select: rank each feature map of chosen layers by class discriminability and keep the top k."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from compressor import CompressorError
from compressor.artifacts import ArtifactWriter, base_metrics, load_artifact, read_json
from compressor.console import log, progress
from compressor.distill.features import FeatureTap
from compressor.models import count_params, stage_layers
from compressor.select import DiscriminabilityAccumulator
from compressor.stages.common import DataOptions
from compressor.training import resolve_device


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


def select(model_dir: str | Path, *, data: DataOptions, out: str | Path, top_k: int, layers: str | list[str] = "auto",
           samples: int = 5000, seed: int = 0, device: str = "auto") -> dict:
    """Score the channels of `layers` of the model in `model_dir`; write channels.json to `out`."""
    started = time.time()
    if top_k < 1:
        raise CompressorError(f"--top-k must be at least 1, got {top_k}")
    if samples < 2:
        raise CompressorError(f"--samples must be at least 2, got {samples}")
    dev = resolve_device(device)
    art = load_artifact(model_dir)
    bundle = data.load(art.spec)
    names = resolve_layers(art.model, layers)
    loader = bundle.loader("train", 256, limit=samples)
    with ArtifactWriter(out) as writer:
        scores = score_channels(art.model, loader, names, bundle.num_classes, dev)
        entries = []
        for name in names:
            s = scores[name]
            k = min(top_k, s.numel())
            kept = torch.argsort(s, descending=True)[:k].sort().values
            entries.append({"name": name, "channels": int(s.numel()), "top_k": k, "kept": kept.tolist(),
                            "scores": [round(float(v), 6) for v in s]})
            log(f"select: {name}: kept {k} of {s.numel()} channels (score {float(s.max()):.4f} best, "
                f"{float(s[kept].min()):.4f} last kept)")
        channels = {"model_dir": str(Path(model_dir).absolute()), "top_k": top_k, "samples": len(loader.data),
                    "layers": entries}
        writer.write_json("channels.json", channels)
        metrics = {"accuracy": art.metrics.get("accuracy"), "params": count_params(art.model),
                   "source": str(Path(model_dir).absolute()),
                   "layers": {e["name"]: {"channels": e["channels"], "kept": e["top_k"]} for e in entries},
                   **base_metrics(seed, started)}
        writer.commit(metrics)
    return metrics


def read_channels(select_dir: str | Path) -> dict[str, list[int]]:
    """{layer name: kept channel indices} from a select artifact."""
    art = load_artifact(select_dir, with_model=False)
    path = art.path / "channels.json"
    if not path.is_file():
        raise CompressorError(f"{art.path} has no channels.json; pass the directory `compress select` wrote")
    return {e["name"]: e["kept"] for e in read_json(path)["layers"]}
