"""teach: fine-tune a teacher (any timm model, pretrained or from a checkpoint) on the user's data."""

from __future__ import annotations

from pathlib import Path

from compressor.config import TeachConfig
from compressor.console import log
from compressor.data.seeding import seed_everything
from compressor.models import count_params, create_model, set_trainable, size_kwargs
from compressor.stages.common import (adopt_pretrained, apply_init, check_input_fits, load_bundle, load_init, make_spec,
                                      test_accuracy)
from compressor.stages.runner import StageRun, stage
from compressor.training import Supervised, train_task


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
