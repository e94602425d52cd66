"""teach: fine-tune a teacher (any timm model, pretrained or from a checkpoint) on the user's data."""

from __future__ import annotations

from pathlib import Path

import torch

from compressor import CompressorError
from compressor.artifacts import check_finite, load_state_dict
from compressor.config import TeachConfig
from compressor.console import log
from compressor.data.seeding import seed_everything
from compressor.models import classifier_name, count_params, create_model, set_trainable, size_kwargs
from compressor.stages.common import adopt_pretrained, check_input_fits, load_bundle, make_spec, test_accuracy
from compressor.stages.runner import StageRun, stage
from compressor.training import Supervised, train_task


def load_init(path: str | Path) -> dict[str, torch.Tensor]:
    """Read user weights: safetensors, or a .pt/.pth with torch.load(weights_only=True) (never unsafely)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise CompressorError(f"--init file {p} does not exist")
    if p.suffix == ".safetensors":
        return load_state_dict(p)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any refusal is final: we never retry with weights_only=False
        raise CompressorError(f"--init {p} could not be read safely as plain weights "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CompressorError(f"--init {p} does not hold a state dict of tensors")
    check_finite(obj, p)
    return obj


def apply_init(model: torch.nn.Module, state: dict[str, torch.Tensor], source, reinit_head: bool = False) -> list[str]:
    """Load the weights; a classifier of another class count starts fresh only with `reinit_head`.

    Any other tensor whose shape differs is an error (a different architecture). Returns the names
    of the tensors that start fresh.
    """
    own = model.state_dict()
    differ = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    usable = {k: v for k, v in state.items() if k in own and k not in differ}
    if not usable:
        raise CompressorError(f"--init {source} shares no weights with this model (different architecture?)")
    head = classifier_name(model)
    in_head = [k for k in differ if head and k.startswith(head + ".")]
    other = [k for k in differ if k not in in_head]
    if other:
        k = other[0]
        raise CompressorError(f"--init {source}: {k} has shape {tuple(state[k].shape)} but the model wants "
                              f"{tuple(own[k].shape)} ({len(other)} such tensors); is it for another architecture?")
    if in_head and not reinit_head:
        w = f"{head}.weight"
        have = state[w].shape[0] if w in state else "another number of"
        raise CompressorError(f"--init {source} has a {have}-class head but the data has {own[w].shape[0]} classes; "
                              "pass --reinit-head to start the classifier fresh")
    model.load_state_dict(usable, strict=False)
    return in_head


@stage("teach", TeachConfig, trains=True)
def teach(run: StageRun) -> dict:
    """Fine-tune a teacher (any timm model) on the dataset; write its artifact directory.

    `resume` continues an interrupted run of the same command from its checkpoint (see
    compressor.training.checkpoint); without it, any old checkpoint for `out` is discarded.
    """
    cfg = run.cfg
    seed_everything(cfg.seed)
    init_state = load_init(cfg.init) if cfg.init else None
    bundle = load_bundle(cfg)
    if cfg.pretrained:
        adopt_pretrained(bundle, cfg.model, cfg.model_fields_set)
    sized = size_kwargs(cfg.model, bundle.image_size)
    net = create_model(cfg.model, num_classes=bundle.num_classes, in_chans=bundle.input_shape[0],
                       pretrained=cfg.pretrained, **sized)
    check_input_fits(net, bundle, cfg.model)
    skipped = []
    if init_state is not None:
        skipped = apply_init(net, init_state, cfg.init, cfg.reinit_head)
        if skipped:
            log(f"teach: --reinit-head: {', '.join(skipped)} start fresh")
    n_train = set_trainable(net, cfg.trainable)
    log(f"teach: {cfg.model} ({count_params(net):,} params, {n_train:,} trainable) on {bundle.name} "
        f"({len(bundle.train)} train / {len(bundle.val)} val / {len(bundle.test)} test)")
    result = train_task(Supervised(net), bundle, cfg, device=run.device, stage="teach",
                        checkpoints=run.checkpoints, fingerprint=run.fingerprint(bundle.identity))
    for p in net.parameters():
        p.requires_grad_(True)
    acc = test_accuracy(net, bundle, run.device)
    run.writer.save_model(net, make_spec(cfg.model, bundle, stage="teach", kwargs=sized,
                                         settings={**cfg.settings(), "init_skipped": skipped}))
    log(f"teach: test accuracy {acc:.4f} -> {Path(cfg.out)}")
    return {"accuracy": acc, "params": count_params(net), "trainable_params": n_train,
            "val_accuracy": result.best_val_accuracy, "best_epoch": result.best_epoch, "history": result.history}
