"""prune: magnitude pruning to a target sparsity, then fine-tuning that keeps the zeros; or
structured pruning that physically removes channels. With a teacher, fine-tuning distills with any
registered method, exactly as `distill` trains it (phases, custom steps and all)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from compressor import CompressorError
from compressor.artifacts import load_artifact, read_json, recorded_model_sizes, state_dict_for_saving
from compressor.config import ExportConfig, PruneConfig
from compressor.console import log, warn
from compressor.deploy.runtimes import cpu_flags, onnx_latency
from compressor.distill import build_distiller
from compressor.distill.registry import extra_epochs
from compressor.latency import (RESOLUTION, TAYLOR_BATCHES, VERIFY_TRIES, Stalled, cut_to_latency, deploy_meter,
                                export_int8_form, magnitude_share, step_epochs, step_targets, taylor_importance, widths)
from compressor.models import count_params, remove_channels
from compressor.sparsity import GradualMasker, default_exclusions, measured_sparsity, plan_structured, prunable_layers
from compressor.stages.common import load_bundle, test_accuracy, training_sample
from compressor.stages.distill_stage import method_options
from compressor.stages.runner import StageRun, stage
from compressor.training import Supervised, train_task


@stage("prune", PruneConfig, trains=True)
def prune(run: StageRun) -> dict:
    """Prune a model (weights or whole channels) and fine-tune it; write the pruned artifact.

    Unstructured: `sparsity` of the conv/linear weights set to zero, oneshot or gradual (Zhu &
    Gupta's cubic ramp over the first 3/4 of fine-tuning), one global threshold or per layer.
    Structured: that fraction of each prunable convolution's output channels removed, by filter
    norm or by `select`'s discriminability scores. The first convolution and the classifier are
    excluded unless `include_all` (which defaults to True for structured pruning, False otherwise).
    With `teacher`, fine-tuning distills with `method`.
    """
    cfg = run.cfg
    art = load_artifact(cfg.model_dir)
    t_art = load_artifact(cfg.teacher) if cfg.teacher else None
    bundle = load_bundle(cfg, art.spec)
    model, shape = art.model, art.spec.input_shape
    include_all = cfg.structured if cfg.include_all is None else cfg.include_all
    exclude = () if include_all else default_exclusions(model)
    before = {"accuracy_before": test_accuracy(model, bundle, run.device), "params_before": count_params(model)}
    before["size_bytes_before"], before["zipped_bytes_before"] = recorded_model_sizes(art.path, art.metrics)
    spec = art.spec.model_copy(update={"stage": "prune"}, deep=True)
    options = method_options(cfg) if t_art else {}
    if cfg.target_latency_ms is not None:
        model = model.cpu()
        metrics, acc_pruned, result, cost = _to_budget(run, model, t_art, bundle, shape, exclude, spec, options)
        masker = None
    else:
        metrics, masker = _cut(run, model, shape, exclude, spec, bundle, options)
        acc_pruned = test_accuracy(model, bundle, run.device)
        log(f"prune: {'channels' if cfg.structured else 'weights'} at {cfg.sparsity:.0%} "
            f"({'structured' if cfg.structured else f'{cfg.schedule}, {cfg.scope}'}): test accuracy "
            f"{before['accuracy_before']:.4f} -> {acc_pruned:.4f} before fine-tuning"
            + ("" if cfg.structured or cfg.schedule == "oneshot" else " (first step)"))
        result, cost = _finetune(run, model, t_art, bundle, shape, masker, options)
    model = model.cpu()
    if masker is not None:
        masker.finish()
    state = state_dict_for_saving(model)
    names = list(prunable_layers(model, exclude))
    overall, per_layer = measured_sparsity(state, names)
    settings = {**art.spec.settings, "prune": {**cfg.settings(), **options, "excluded": list(exclude)}}
    run.writer.save_model(model, spec.model_copy(update={"settings": settings}))
    metrics.update(before)
    metrics.update({"accuracy": test_accuracy(model, bundle, run.device), "params": count_params(model),
                    "sparsity": overall, "sparsity_per_layer": per_layer,
                    "nonzero_weights": sum(int((state[f"{n}.weight"] != 0).sum()) for n in names),
                    "size_bytes": run.writer.model_sizes["size_bytes"],
                    "zipped_bytes": run.writer.model_sizes["zipped_bytes"],
                    "accuracy_pruned_no_finetune": acc_pruned, "val_accuracy": result.best_val_accuracy,
                    "history": result.history})
    if cost:
        metrics["cost"] = cost
    if cfg.structured:
        metrics["latency_ms"] = onnx_latency(model, shape, run.writer.dir)
    log(f"prune: measured sparsity {overall:.4f}, params {before['params_before']:,} -> {metrics['params']:,}, "
        f"zipped {before['zipped_bytes_before']:,} -> {metrics['zipped_bytes']:,} bytes, test accuracy "
        f"{metrics['accuracy']:.4f} -> {Path(cfg.out)}")
    return metrics


def _cut(run: StageRun, model, shape, exclude, spec, bundle, options: dict):
    """Remove channels now (structured), or set up the masks fine-tuning keeps (unstructured)."""
    cfg = run.cfg
    if cfg.structured:
        scores = _scores(cfg.channels) if cfg.channels else None
        latency_before = onnx_latency(model, shape, run.writer.dir)
        plan = plan_structured(model.cpu(), shape, cfg.sparsity, cfg.importance, scores, exclude, cfg.round_to)
        remove_channels(model, shape, plan)
        spec.structured_pruning.append(plan)
        return {"channels_removed": {p["layer"]: f"{len(p['removed'])}/{p['channels']}" for p in plan},
                "latency_ms_before": latency_before}, None
    layers = prunable_layers(model, exclude)
    epochs = cfg.epochs + extra_epochs(options)  # all phases of the method (fitnet's hints too)
    steps = max(1, epochs * len(bundle.loader("train", cfg.batch_size)))
    return {}, GradualMasker(layers, cfg.sparsity, steps if epochs else 0, cfg.scope, cfg.schedule)


def _step_cuts(model, shape, meter, goal: float, exclude, cfg, scores, k: int, progress: bool, last: bool) -> list:
    """One step's cuts toward `goal`, made on `model`. Where the rounds stall short of it (narrower reads
    no faster: near the target the gap can be within the timings' noise) after the prune has made the
    network faster, one log line: the step keeps its cuts up to the fastest network measured, and the
    later steps (or the last step's check and its warning) go on from there. A prune that never got
    faster, or whose last step stalls further over the budget than the timings resolve (RESOLUTION of
    it), stops in one line: the budget cannot be reached on this runtime and CPU."""
    trial = copy.deepcopy(model)
    try:
        cuts = cut_to_latency(trial, shape, meter.measure, goal, exclude, cfg.round_to, cfg.allocation, scores,
                              meter.verify)
    except Stalled as e:
        if not (progress or e.kept) or (last and e.best_ms > goal * (1 + RESOLUTION)):
            raise
        log(f"prune: step {k}: {e.args[0].split(':')[0]}; the step keeps the fastest network its rounds measured")
        cuts = e.kept
    for c in cuts:
        remove_channels(model, shape, c.plan)  # the trial's cuts replayed: the same network
    return cuts


def _to_budget(run: StageRun, model, t_art, bundle, shape, exclude, spec, options: dict):
    """--target-latency: in steps along a geometric path of latencies (`step_epochs`: one per epoch but
    the last third), remove channels until the network measures at the step's target
    (compressor.latency; each round's picks and result confirmed by the meter's longer timing,
    `verify`; uniform's result checked by it), then fine-tune one epoch (the last step: the epochs
    left); every cut is appended to model.json's plan. Returns the metrics, the accuracy after the
    first cut, and the last fine-tuning's result and cost."""
    cfg = run.cfg
    meter, int8_form = budget_meter(cfg, bundle, model, shape)
    forms = list(meter.meters)
    original = widths(model)
    fp32_ort_before = onnx_latency(model, shape, run.writer.dir)
    start, form = meter.measure(model), meter.fastest(model)
    log(f"prune: {start:.3f} ms at batch {cfg.latency_batch} on {cfg.runtime} ({form}"
        f"{'' if len(forms) == 1 else ' of ' + ', '.join(forms) + ', as the export would ship it'}; "
        f"{cfg.allocation} allocation); target {cfg.target_latency_ms:g} ms")
    scores = magnitude_share
    if cfg.importance == "taylor":  # a fixed sample of the training split (every class), the same each round
        scores = taylor_importance(list(bundle.loader("train", 64, seed=cfg.seed, limit=64 * TAYLOR_BATCHES)),
                                   shape, exclude)
    steps, acc_pruned, result, cost, history = [], None, None, None, []
    epochs = step_epochs(cfg.epochs)
    goals = step_targets(start, cfg.target_latency_ms, len(epochs))
    for k, goal in enumerate(goals, 1):
        cuts = _step_cuts(model, shape, meter, goal, exclude, cfg, scores, k, progress=bool(steps),
                          last=k == len(goals))
        # the last step's network is checked as the budget is judged: in every form against the unpruned
        # model's, the files timed in turn (`DeployMeter.check`). Before that, the latency allocation's rounds
        # end on a network timed by the longer timing already; uniform's bisection reads short timings: its
        # result is checked by a longer, independent one. Where the check reads over, cut further toward the
        # goal in the scale the cuts are measured in (the latency allocation's: the longer timing, taken
        # afresh beside the check, as a reading kept from a round can have read low; uniform's: the short
        # timings its bisection read), corrected by how far that scale reads low here
        check = meter.check if k == len(goals) else meter.verify if cfg.allocation == "uniform" else None
        latency = cfg.allocation == "latency"
        for t in range(VERIFY_TRIES + 1 if check else 0):  # ends on a checked network
            scale, checked = (meter.verify if latency else meter.measure)(model), check(model)
            if checked <= goal or t == VERIFY_TRIES:
                break
            # tried on a copy: where the meters cannot reach the corrected target (narrower reads no faster),
            # the prune keeps the network checked last, and the warning below says it reads over. The latency
            # allocation's further cut starts from the reading just taken
            trial = copy.deepcopy(model)
            try:
                more = cut_to_latency(trial, shape, meter.measure, goal * scale / checked, exclude, cfg.round_to,
                                      cfg.allocation, scores, meter.verify, start_ms=scale if latency else None)
            except CompressorError as e:
                log(f"prune: step {k}: no further cut: {e}")
                break
            for c in more:
                remove_channels(model, shape, c.plan)  # the trial's cuts replayed: the same network
            cuts += more
        spec.structured_pruning.extend(c.plan for c in cuts)
        acc_cut = test_accuracy(model, bundle, run.device)
        acc_pruned = acc_cut if acc_pruned is None else acc_pruned
        result, cost = _finetune(run, model, t_art, bundle, shape, None, options, epochs=epochs[k - 1],
                                 loop=f"step{k}")
        history += [{**row, "epoch": len(history) + i + 1, "step": k} for i, row in enumerate(result.history)]
        now, now_form = meter.reading(model)
        steps.append({"step": k, "target_ms": round(goal, 4), "latency_ms": now, "form": now_form,
                      "rounds": len(cuts),
                      "accuracy_cut": acc_cut, "accuracy": test_accuracy(model, bundle, run.device),
                      "widths": {n: w for n, w in widths(model).items() if w != original[n]}})
        log(f"prune: step {k}: {now:.3f} ms (target {goal:.3f}), test accuracy {acc_cut:.4f} after the cut, "
            f"{steps[-1]['accuracy']:.4f} after fine-tuning")
    result.history = history
    if steps[-1]["latency_ms"] > cfg.target_latency_ms:
        warn(f"prune: the pruned network measures {steps[-1]['latency_ms']:.3f} ms against the unpruned one, over the "
             f"budget of {cfg.target_latency_ms:g} ms after its further cuts; the timings on this machine "
             "are noisier than the gap: raise --latency-batch, or prune again with a lower --target-latency")
    budget = {"target_ms": cfg.target_latency_ms, "latency_ms": steps[-1]["latency_ms"], "latency_ms_before": start,
              "runtime": cfg.runtime, "form": steps[-1]["form"], "form_before": form, "forms_measured": forms,
              "batch": cfg.latency_batch, "allocation": cfg.allocation,
              "importance": cfg.importance if cfg.allocation == "latency" else None,
              "int8_form": int8_form.label() if int8_form else None,
              "threads": torch.get_num_threads(), "cpu_flags": " ".join(cpu_flags()),
              "networks_timed": meter.timings, "steps": steps}
    removed = {n: f"{original[n] - w}/{original[n]}" for n, w in widths(model).items() if w != original[n]}
    return ({"latency_budget": budget, "channels_removed": removed, "latency_ms_before": fp32_ort_before}, acc_pruned,
            result, cost)


def budget_meter(cfg: PruneConfig, bundle, model, shape):
    """--target-latency's meter of `model` (`deploy_meter`, int8 in the form the export would ship,
    chosen on the images the export calibrates on, counted only where it is within the export's
    accuracy budget on the test split, as the export names its deploy form) and that int8 form;
    timings and the choice are kept in cache/latency.json beside --out, shared by every prune
    written there."""
    cache = Path(cfg.out).expanduser().absolute().parent / "cache" / "latency.json"
    int8_form = None
    if cfg.form in ("auto", "int8"):
        calibration = training_sample(bundle, cfg.seed, ExportConfig.model_fields["calibration_batches"].default)
        int8_form, why = export_int8_form(model, shape, cfg.runtime, calibration, cfg.latency_batch, cache=cache,
                                          test=bundle.loader("test", 256))
        log(f"prune: int8 on {cfg.runtime}: {why}" + ("" if int8_form else "; not measured"))
    return deploy_meter(model, shape, cfg.runtime, cfg.form, cfg.latency_batch, cache, int8_form), int8_form


def _finetune(run: StageRun, model, t_art, bundle, shape, masker, options: dict, epochs: int | None = None,
              loop: str | None = None):
    """Fine-tune (distilling with a teacher) for the stage's epochs, or `epochs` under the checkpoint
    name `loop`."""
    cfg = run.cfg if epochs is None else run.cfg.model_copy(update={"epochs": epochs})
    task = (build_distiller(cfg.method, model, t_art.model, input_shape=shape, options=options)
            if t_art else Supervised(model))
    try:
        result = train_task(task, bundle, cfg, device=run.device, stage="prune", desc="prune finetune",
                            loop=loop, checkpoints=run.checkpoints, fingerprint=run.fingerprint(bundle.identity),
                            after_step=masker)
    finally:
        getattr(task, "close", lambda: None)()
    return result, task.cost(run.device)


def _scores(select_dir: str) -> dict[str, list[float]]:

    art = load_artifact(select_dir, with_model=False)
    return {e["name"]: e["scores"] for e in read_json(art.path / "channels.json")["layers"]}
