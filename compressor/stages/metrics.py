"""What each stage's metrics.json holds, typed as model.json is (`compressor.models.ModelSpec`).

Every key a stage writes is declared here with its type, once; the runner validates a stage's
metrics against its class before the artifact is committed, so a key cannot appear (or change type)
without being declared, and readers (`compress report`, the summaries) can rely on the names. Keys a
stage writes only in some runs (a control run, a structured cut, a second runtime) default to None
and are left out of the file when not written.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from compressor import CompressorError

FORMS = ("fp32", "bf16", "fp16", "int8")  # the forms export measures (`<key>_<form>` below)


class Metrics(BaseModel):
    """Every stage: the test accuracy of what it wrote, its size, and how the run was made."""

    model_config = ConfigDict(extra="forbid")

    accuracy: Optional[float] = None  # test split; select: the model it read (None if that had none)
    params: Optional[int] = None
    size_bytes: Optional[int] = None  # model.safetensors, raw and zipped (deflate, level 9)
    zipped_bytes: Optional[int] = None
    seed: int
    wall_time_s: float
    versions: dict[str, str]
    status: Optional[Literal["ok", "failed"]] = None  # failed: a gate (--max-drop, --min-gain, ...) was missed
    failure: Optional[str] = None  # the one line that says which gate and by how much


class Trained(Metrics):
    """A stage that trains: the training loop's record."""

    val_accuracy: Optional[float] = None  # the best epoch's (the weights kept)
    best_epoch: Optional[int] = None
    history: Optional[list[dict[str, Any]]] = None  # one row per epoch: losses, their shares, accuracies, lr, images/s
    cost: Optional[dict[str, Any]] = None  # methods with their own step (l2tww): seconds per step, memory


class TeachMetrics(Trained):
    trainable_params: int


class SelectMetrics(Metrics):
    source: str  # the artifact scored
    layers: dict[str, dict[str, int]]  # per layer: channels, kept


class DistillMetrics(Trained):
    accuracy_last_epoch: Optional[float] = None
    teacher_accuracy: Optional[float] = None
    teacher_params: Optional[int] = None
    agreement: Optional[float] = None  # test accuracy on the teacher's labels
    teacher_cache: Optional[dict[str, Any]] = None  # --cache-teacher: dir, hits, misses
    chunks: Optional[list[dict[str, Any]]] = None  # --scheme online: one record per chunk
    generations: Optional[list[dict[str, Any]]] = None  # --scheme born-again: one record per generation
    ensemble_accuracy: Optional[float] = None  # --ensemble
    control_accuracy: Optional[float] = None  # --control: the same student alone
    control_accuracy_last_epoch: Optional[float] = None
    control_agreement: Optional[float] = None
    control_history: Optional[list[dict[str, Any]]] = None
    gain_points: Optional[float] = None  # distilled minus alone, in points
    min_gain: Optional[float] = None
    assistant: Optional[dict[str, Any]] = None  # --scheme assistant: the assistant's architecture and figures
    accuracy_omitted: Optional[float] = None  # --omit-classes: test accuracy on the omitted classes' images
    accuracy_rest: Optional[float] = None  # ... and on every other class's
    control_accuracy_omitted: Optional[float] = None
    control_accuracy_rest: Optional[float] = None
    bias_shift: Optional[dict[str, float]] = None  # --bias-shift: added to each omitted class's logit bias
    accuracy_before_shift: Optional[float] = None
    accuracy_omitted_before_shift: Optional[float] = None
    accuracy_rest_before_shift: Optional[float] = None


class PruneMetrics(Trained):
    accuracy_before: float
    accuracy_pruned_no_finetune: float
    params_before: int
    size_bytes_before: Optional[int] = None
    zipped_bytes_before: Optional[int] = None
    sparsity: float  # measured: zeros among the prunable weights
    sparsity_per_layer: dict[str, float]
    nonzero_weights: int
    channels_removed: Optional[dict[str, str]] = None  # --structured: per layer, "removed/channels"
    latency_ms_before: Optional[float] = None  # --structured: onnxruntime fp32, before and after
    latency_ms: Optional[float] = None
    latency_budget: Optional[dict[str, Any]] = None  # --target-latency: target, runtime, form, the steps measured


class QuantizeMetrics(Trained):
    accuracy_float: float  # the float model it came from
    accuracy_calibrated: float  # the scheme with calibrated ranges, before fine-tuning
    accuracy_float_weights: float  # the fine-tuned weights without the rounding
    scheme: str
    folded_batchnorms: int
    quantized_layers: int
    float_layers: list[str]
    sparse_layers_kept: list[str]
    ranges: dict[str, dict[str, list[float]]]  # per layer: input and output (scale, zero point)


class _RuntimeBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    forms: Optional[list[str]] = None  # the forms measured
    int8_form: Optional[dict[str, Any]] = None
    int8_choice: Optional[str] = None  # why that form
    int8_candidates: Optional[list[dict[str, Any]]] = None
    int8_fallback: Optional[dict[str, Any]] = None
    fp32_nodes: Optional[list[str]] = None
    int8_vs_torch_points: Optional[float] = None  # a quantized artifact: the int8 file against its PyTorch model
    speedup_int8: Optional[float] = None
    agreement_fp32_int8: Optional[float] = None
    deploy_form: Optional[str] = None  # the form to ship on this runtime
    deploy_file: Optional[str] = None
    deploy_speedup: Optional[float] = None
    accuracy_drop_points: Optional[float] = None
    convs_wrapped_in_qdq: Optional[bool] = None
    qdq_ops: Optional[dict[str, int]] = None
    per_channel: Optional[bool] = None


PER_FORM = {"accuracy": float, "latency_ms": float, "latency_ms_batch1": float, "max_abs_diff": float,
            "max_abs_diff_batch1": float, "size_bytes": int, "zipped_bytes": int, "error": str,
            "inference_precision": str}  # `<key>_<form>` (`<key>` before "_batch1"), one per measured form


def _per_form_field(key: str, form: str) -> str:
    head, batch1 = (key[:-len("_batch1")], "_batch1") if key.endswith("_batch1") else (key, "")
    return f"{head}_{form}{batch1}"


RuntimeFigures = create_model(
    "RuntimeFigures", __base__=_RuntimeBase, __doc__="One runtime's figures in an export (metrics.json's "
    "`runtimes.<name>`; the first runtime's are also at the top level).",
    **{_per_form_field(k, f): (Optional[t], None) for k, t in PER_FORM.items() for f in FORMS})


class TargetFigures(RuntimeFigures):
    """One phone target's figures (metrics.json's `targets.<name>`): its files run by its own runtime
    at batch 1 (`latency_ms_<form>_batch1`), and what its delegate took of each graph."""

    batch: int
    agreement_torch_fp32: Optional[float] = None  # test predictions equal to PyTorch's
    agreement_torch_int8: Optional[float] = None
    delegation_fp32: Optional[dict[str, Any]] = None  # delegated / not delegated operators, partitions, per op
    delegation_int8: Optional[dict[str, Any]] = None
    int8_form: Optional[str] = None  # which int8 file was kept: all layers, or the gates left in float32


class ExportMetrics(Metrics, RuntimeFigures):
    accuracy_torch: Optional[float] = None  # the PyTorch model's recorded test accuracy
    latency_batch: int
    threads: int
    runtime: str  # the first runtime: its figures are also at the top level
    runtimes: dict[str, RuntimeFigures]
    targets: Optional[dict[str, TargetFigures]] = None  # --target: the phone targets' files, measured here
    cpu_flags: list[str]
    sparsity_note: Optional[str] = None
    fastest_runtime_int8: Optional[str] = None
    calibration_batches: Optional[int] = None
    calibration_method: Optional[str] = None
    max_drop: Optional[float] = None
    min_speedup: Optional[float] = None
    accuracy_budget_points: Optional[float] = None


STAGE_METRICS: dict[str, type[Metrics]] = {"teach": TeachMetrics, "select": SelectMetrics, "distill": DistillMetrics,
                                           "prune": PruneMetrics, "quantize": QuantizeMetrics, "export": ExportMetrics}


def check_metrics(stage: str, metrics: dict) -> None:
    """Validate a stage's metrics against its declared keys and types (an undeclared key is a bug in
    the stage, reported as such, never silently written)."""
    try:
        STAGE_METRICS[stage].model_validate(metrics)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()[:5])
        raise CompressorError(f"{stage}: its metrics.json does not match compressor.stages.metrics "
                              f"({problems}); please report this") from None
