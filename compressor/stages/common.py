"""What every stage shares: data that matches the upstream model, specs, test metrics."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from compressor import CompressorError
from compressor.artifacts import check_finite, load_state_dict
from compressor.data import DataBundle, load_data
from compressor.data.folder import INTERPOLATIONS, PIPELINE_FIELDS
from compressor.models import ModelSpec, classifier_name, pretrained_config
from compressor.training import accuracy, predict


def load_bundle(fields, spec: ModelSpec | None = None) -> DataBundle:
    """Load the data a stage's `DataFields` name; with an upstream model's spec, check it fits and
    use its normalization and input size."""
    size = fields.image_size
    if spec is not None and size is None:
        size = spec.input_shape[-1]
    data = load_data(fields.data, fields.data_root, image_size=size, download=fields.download,
                     train_size=fields.train_size, pipeline=pipeline_options(fields, spec), workers=fields.workers)
    if spec is not None:
        check_data_matches(spec, data)
        data.use_normalization(spec.mean, spec.std)
    return data


def pipeline_options(fields, spec: ModelSpec | None = None) -> dict:
    """The imagefolder transform options a stage's config gives (`compressor.data.folder.pipeline_settings`
    fills in the rest); given for other data, they are an error. Downstream of a model, its
    interpolation and crop are the default."""
    given = sorted(set(PIPELINE_FIELDS) & fields.model_fields_set)
    if given and fields.data != "imagefolder":
        raise CompressorError(f"{', '.join(fields.flag_of(g) for g in given)} "
                              f"{'applies' if len(given) == 1 else 'apply'} only to --data imagefolder "
                              f"(data '{fields.data}' is padded, cropped and flipped in memory)")
    upstream = (spec.data.get("pipeline") or {}) if spec is not None else {}
    out = {k: upstream[k] for k in ("interpolation", "crop_pct") if k in upstream}
    out.update({k: getattr(fields, k) for k in PIPELINE_FIELDS if getattr(fields, k, None) is not None})
    return out


def adopt_pretrained(data: DataBundle, name: str, given: set[str]) -> None:
    """With --pretrained: normalize, size and (folders) resample and crop as the weights were trained
    (timm's pretrained config), except where the user's options say otherwise."""
    pc = pretrained_config(name)
    if pc is None:
        return
    mean, std = list(pc.mean), list(pc.std)
    if data.input_shape[0] == 1:  # timm folds RGB stem weights into one channel for in_chans=1
        mean, std = [sum(mean) / 3], [sum(std) / 3]
    data.use_normalization(mean, std)
    if "image_size" not in given:
        data.image_size = data.identity["image_size"] = int(pc.input_size[-1])
    if data.streamed:
        for key, value in (("interpolation", pc.interpolation), ("crop_pct", pc.crop_pct)):
            if key not in given and value and (key != "interpolation" or value in INTERPOLATIONS):
                data.pipeline[key] = value
        data.identity["pipeline"] = data.pipeline


def check_data_matches(spec: ModelSpec, data: DataBundle) -> None:
    if spec.num_classes != data.num_classes:
        raise CompressorError(f"the model has {spec.num_classes} classes but data '{data.name}' has "
                              f"{data.num_classes}; use the data it was trained on")
    if spec.input_shape[0] != data.input_shape[0]:
        raise CompressorError(f"the model takes {spec.input_shape[0]}-channel images but data '{data.name}' has "
                              f"{data.input_shape[0]} channel(s); use the data it was trained on")
    if list(spec.input_shape) != data.input_shape:
        raise CompressorError(f"the model takes input {spec.input_shape} (C, H, W) but data '{data.name}' "
                              f"gives {data.input_shape}; pass --image-size {spec.input_shape[-1]}")


def check_input_fits(model: nn.Module, data: DataBundle, name: str) -> None:
    """One forward pass of two blank images before any training: an image size the model cannot
    take is one clear line, not a traceback minutes into the stage."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *data.input_shape))
    except (RuntimeError, AssertionError, ValueError) as e:  # timm asserts fixed input sizes
        raise CompressorError(f"model {name} cannot take {'x'.join(map(str, data.input_shape))} (C x H x W) images "
                              f"from data '{data.name}' ({str(e).splitlines()[0][:120]}); try a larger --image-size"
                              ) from None
    finally:
        model.train(was)
    if out.shape[-1] != data.num_classes:
        raise CompressorError(f"model {name} outputs {out.shape[-1]} classes but data '{data.name}' has "
                              f"{data.num_classes}")


def make_spec(architecture: str, data: DataBundle, *, stage: str, settings: dict, kwargs: dict | None = None) -> ModelSpec:
    return ModelSpec(architecture=architecture, kwargs=kwargs or {}, num_classes=data.num_classes,
                     input_shape=data.input_shape, mean=data.mean, std=data.std, class_names=data.class_names,
                     stage=stage, data=data.identity, settings=settings)


def training_sample(data: DataBundle, seed: int, batches: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """`batches` batches of 64 training images in the order `seed` gives (a sample of every class),
    with their labels, as arrays: what post-training int8 is calibrated on."""
    return [(xb.numpy(), yb.numpy()) for xb, yb in data.loader("train", 64, seed=seed, limit=64 * batches)]


def test_logits(model: nn.Module, data: DataBundle, device) -> tuple[torch.Tensor, torch.Tensor]:
    return predict(model, data.loader("test", 512), device)


def test_accuracy(model: nn.Module, data: DataBundle, device) -> float:
    return accuracy(*test_logits(model, data, device))


def last_epoch_accuracy(model: nn.Module, result, data: DataBundle, device) -> float | None:
    """Test accuracy of the last epoch's weights (`model` holds the best epoch's, by validation
    accuracy): the figure papers that report the end of training give. None when the last epoch was
    the best: the model's own test accuracy is that figure, and it is measured anyway."""
    if result.last_state is None:
        return None
    last = copy.deepcopy(model)
    last.load_state_dict(result.last_state)
    return test_accuracy(last, data, device)


def load_init(path: str | Path, flag: str = "--init") -> dict[str, torch.Tensor]:
    """Read user weights: safetensors, or a .pt/.pth with torch.load(weights_only=True) (never unsafely)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise CompressorError(f"{flag} file {p} does not exist")
    if p.suffix == ".safetensors":
        return load_state_dict(p)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any refusal is final: we never retry with weights_only=False
        raise CompressorError(f"{flag} {p} could not be read safely as plain weights "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CompressorError(f"{flag} {p} does not hold a state dict of tensors")
    check_finite(obj, p)
    return obj


def apply_init(model: torch.nn.Module, state: dict[str, torch.Tensor], source, reinit_head: bool = False,
               flag: str = "--init") -> list[str]:
    """Load the weights; a classifier of another class count starts fresh only with `reinit_head`.

    Any other tensor whose shape differs is an error (a different architecture). Returns the names
    of the tensors that start fresh.
    """
    own = model.state_dict()
    differ = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    usable = {k: v for k, v in state.items() if k in own and k not in differ}
    if not usable:
        raise CompressorError(f"{flag} {source} shares no weights with this model (different architecture?)")
    head = classifier_name(model)
    in_head = [k for k in differ if head and k.startswith(head + ".")]
    other = [k for k in differ if k not in in_head]
    if other:
        k = other[0]
        raise CompressorError(f"{flag} {source}: {k} has shape {tuple(state[k].shape)} but the model wants "
                              f"{tuple(own[k].shape)} ({len(other)} such tensors); is it for another architecture?")
    if in_head and not reinit_head:
        w = f"{head}.weight"
        have = state[w].shape[0] if w in state else "another number of"
        raise CompressorError(f"{flag} {source} has a {have}-class head but the data has {own[w].shape[0]} classes; "
                              "pass --reinit-head to start the classifier fresh")
    model.load_state_dict(usable, strict=False)
    return in_head
