"""One typed config per stage: each stage's own options on top of the option groups."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import field_validator, model_validator

from compressor.config.base import Config, option
from compressor.config.groups import Augmentation, DataFields, DistillOptions, Output, Runtime, SchemeName, TrainConfig
from compressor.deploy.int8 import CALIBRATION_METHODS
from compressor.deploy.phones import parse_targets


class TeachConfig(DataFields, Augmentation, TrainConfig, Output):
    model: str = option(help="Any timm model name (e.g. resnet18) or a built-in: convtiny, convverytiny.", main=True)
    pretrained: bool = option(False, "Start from timm's pretrained weights (needs the network).")
    init: Optional[str] = option(None, "Start from these weights (.safetensors, or .pt/.pth read with "
                                       "weights_only=True, never unsafely); NaN/Inf weights are refused.")
    reinit_head: bool = option(False, "With --init weights whose classifier has another class count: start the "
                                      "classifier fresh (otherwise an error).")
    trainable: Optional[str] = option(None, "Regex: only parameters whose names match train (the classifier always "
                                            "does), e.g. 'conv2|bn'.")
    epochs: int = option(3, "Training epochs.", ge=0)

    @model_validator(mode="after")
    def _one_start(self):
        if self.pretrained and self.init:
            raise ValueError("pass either --pretrained or --init, not both")
        return self


class SelectConfig(DataFields, Runtime, Output):
    model_dir: str = option(help="Artifact directory of the model to read.", argument=True, recipe=False)
    top_k: int = option(help="Channels to keep per layer (all of a layer's, if it has fewer).", ge=1, main=True)
    layers: str = option("auto", "'auto' (each stage's output before a downsampling, from timm feature_info) or "
                                 "comma-separated module names.")
    samples: int = option(5000, "Training images used to score channels (no augmentation).", ge=2)

    @field_validator("layers", mode="before")
    @classmethod
    def _join(cls, v):
        return ",".join(map(str, v)) if isinstance(v, list) else v


class DistillConfig(DataFields, Augmentation, TrainConfig, DistillOptions, Output):
    student: Optional[str] = option(None, "Student model: convtiny, convverytiny or any timm name (needed except "
                                          "with --scheme born-again, where it defaults to the teacher's architecture).", main=True)
    scheme: SchemeName = option("offline", "offline (frozen teacher), online (teacher and student train together "
                                           "over a stream of chunks), self (the student teaches its own "
                                           "auxiliary heads), born-again (--generations students in a row, each "
                                           "distilled offline from the one before, the first from --teacher), "
                                           "assistant (--teacher teaches an --assistant, which teaches the "
                                           "student; both offline, with --method).")
    assistant: Optional[str] = option(None, "assistant: the teacher assistant's architecture, between teacher and "
                                            "student in size (Mirzadeh et al., 2020); its artifact is kept in "
                                            "OUT/assistant/.")
    student_pretrained: bool = option(False, "Start the student from timm's pretrained weights (needs the network, "
                                             "or timm's cache).")
    student_init: Optional[str] = option(None, "Start the student from these weights (.safetensors, or .pt/.pth read "
                                               "with weights_only=True); born-again: the first generation.")
    reinit_head: bool = option(False, "With --student-init weights whose classifier has another class count: start "
                                      "the classifier fresh (otherwise an error).")
    omit_classes: Optional[str] = option(None, "Comma-separated class indices left out of the transfer set (their "
                                               "training images are dropped; the teacher still knows them), as in "
                                               "Hinton et al. (2015), section 3. metrics.json gives the accuracy on "
                                               "them and on the rest.")
    bias_shift: bool = option(False, "With --omit-classes: raise the omitted classes' logit bias by the amount that "
                                     "gives them the share of the validation split's predictions the teacher gives "
                                     "them (measured after training).")
    generations: int = option(2, "born-again: how many generations; each one's artifact is kept in "
                                 "OUT/generations/<k>/, OUT holds the last.", ge=1)
    ensemble: bool = option(False, "born-again: also report the test accuracy of the generations' averaged "
                                   "predicted probabilities (ensemble_accuracy).")
    channels: Optional[str] = option(None, "Select artifact: feature methods see only the teacher channels it kept.",
                                     recipe=False)
    control: bool = option(False, "Also train the student alone (alpha = 1, same budget and seed) and report "
                                  "control_accuracy.")
    min_gain: Optional[float] = option(None, "With --control: fail (exit 1, artifact kept and marked failed) when the "
                                             "distilled student is more than this many accuracy points below the "
                                             "student alone (0: it must at least match it).", ge=0)
    chunk_size: int = option(1800, "online: images per chunk of the stream.", ge=1)
    buffer_chunks: int = option(5, "online: the sliding buffer holds the last N chunks.", ge=1)
    epochs_per_buffer: int = option(2, "online: epochs over each buffer (the student's last at lr/10).", ge=1)
    distill_after: int = option(5, "online: chunks the teacher sees before distillation switches on.", ge=0)
    trainable: Optional[str] = option(None, "online: regex of teacher parameters that train (default: all).")
    teacher_lr: float = option(1e-3, "online: the teacher's Adam learning rate.", gt=0)
    cache_teacher: bool = option(False, "offline: store the frozen teacher's outputs per (epoch, sample) and reuse "
                                        "them in later runs with the same teacher, data and seed.",
                                 flag="--cache-teacher/--no-cache-teacher")
    cache_dir: Optional[str] = option(None, "Where the teacher cache lives (default: the directory holding --out, "
                                            "i.e. the run directory, /cache).", recipe=False, setting=False)
    epochs: int = option(5, "Training epochs.", ge=0)

    @field_validator("omit_classes", mode="before")
    @classmethod
    def _classes(cls, v):
        if isinstance(v, (list, tuple)):
            v = ",".join(map(str, v))
        if v is None:
            return v
        items = [c.strip() for c in str(v).split(",") if c.strip()]
        if not items or not all(c.isdigit() for c in items):
            raise ValueError("give class indices separated by commas, e.g. 3,5")
        return ",".join(str(c) for c in sorted({int(c) for c in items}))

    def omitted(self) -> list[int]:
        """The class indices --omit-classes leaves out of the transfer set."""
        return [int(c) for c in self.omit_classes.split(",")] if self.omit_classes else []

    @model_validator(mode="after")
    def _scheme_fits(self):
        if self.scheme in ("online", "self") and self.method != "kd":
            raise ValueError(f"scheme '{self.scheme}' distills with kd; --method {self.method} works with "
                             "--scheme offline or born-again")
        if self.student is None and self.scheme != "born-again":
            raise ValueError("--student is needed (only --scheme born-again defaults it, to the teacher's architecture)")
        given = [self.flag_of(k) for k in ("generations", "ensemble") if k in self.model_fields_set]
        if given and self.scheme != "born-again":
            raise ValueError(f"{', '.join(given)} apply to --scheme born-again only")
        if self.resume and self.scheme == "born-again":
            raise ValueError("--resume is not supported for --scheme born-again (its generations train one after "
                             "another); rerun it from the start")
        if self.student_pretrained and self.student_init:
            raise ValueError("pass either --student-pretrained or --student-init, not both")
        if self.reinit_head and not self.student_init:
            raise ValueError("--reinit-head applies to --student-init weights; pass --student-init too")
        if (self.student_pretrained or self.student_init) and self.scheme in ("online", "self"):
            raise ValueError(f"--student-pretrained and --student-init apply to the offline, born-again and assistant "
                             f"schemes, not {self.scheme}")
        if self.bias_shift and not self.omit_classes:
            raise ValueError("--bias-shift raises the bias of the classes --omit-classes leaves out; pass it too")
        if self.omit_classes and self.scheme in ("online", "self"):
            raise ValueError(f"--omit-classes needs a frozen teacher (scheme offline, born-again or assistant), "
                             f"not {self.scheme}")
        if (self.scheme == "assistant") != (self.assistant is not None):
            raise ValueError("--scheme assistant needs --assistant ARCH" if self.scheme == "assistant" else
                             "--assistant applies to --scheme assistant only")
        if self.resume and self.scheme == "assistant":
            raise ValueError("--resume is not supported for --scheme assistant (assistant and student train one after "
                             "another); rerun it from the start")
        if self.teacher is None and self.scheme != "self":
            raise ValueError(f"scheme '{self.scheme}' needs --teacher (only --scheme self trains without one)")
        if self.cache_teacher and self.scheme != "offline":
            raise ValueError(f"--cache-teacher works with --scheme offline only: the {self.scheme} scheme's teacher "
                             "changes during training (or is absent), so its outputs cannot be reused")
        mixing = [self.flag_of(k) for k in ("mixup", "cutmix", "label_smoothing") if getattr(self, k)]
        if mixing and self.scheme == "online":
            raise ValueError(f"--scheme online trains on plain labels; drop {', '.join(mixing)}")
        if self.cache_teacher and (self.mixup or self.cutmix):
            raise ValueError("--mixup and --cutmix mix samples within a batch, so the teacher's outputs are not per "
                             "sample and cannot be cached; drop --cache-teacher or the mixing")
        if self.precision != "32" and self.scheme == "online":
            raise ValueError("--scheme online trains in float32; drop --precision")
        if self.min_gain is not None and not self.control:
            raise ValueError("--min-gain compares the distilled student with the student alone; pass --control too")
        if self.resume and self.scheme == "online":
            raise ValueError("--resume is not supported for --scheme online (its teacher and student train over a "
                             "stream of chunks); rerun it from the start")
        return self


class PruneConfig(DataFields, Augmentation, TrainConfig, DistillOptions, Output):
    model_dir: str = option(help="Artifact directory of the model to read.", argument=True, recipe=False)
    sparsity: Optional[float] = option(None, "Unstructured: fraction of conv/linear weights to zero; --structured: "
                                             "fraction of each prunable convolution's output channels removed. In "
                                             "[0, 1). Give this or --target-latency.", ge=0, lt=1, main=True)
    target_latency_ms: Optional[float] = option(
        None, "--structured: remove channels until the model runs in this many milliseconds at --latency-batch on "
              "--runtime, this CPU, in --form (measured, not counted), in steps with fine-tuning between them. "
              "Instead of --sparsity.", flag="--target-latency", gt=0, allow_inf_nan=False, main=True)
    runtime: Literal["onnxruntime", "openvino"] = option("onnxruntime", "--target-latency: the runtime that measures.")
    latency_batch: int = option(64, "--target-latency: the batch size measured.", ge=1)
    form: Literal["auto", "fp32", "bf16", "fp16", "int8"] = option(
        "auto", "--target-latency: the form measured: fp32; bf16 or fp16 (the float32 file run in that precision, "
                "where the runtime runs it natively on this CPU: OpenVINO on bf16/fp16 CPUs); int8 (the int8 form "
                "the export would ship for the unpruned model: chosen as the export chooses it, on the images it "
                "calibrates on, with its defaults); or auto: every one of those, each network "
                "counted in its fastest (the form the export would ship).")
    allocation: Literal["latency", "uniform"] = option(
        "latency", "--target-latency: latency (channels ranked by importance per millisecond they save, measured "
                   "per unit: the groups that share a feature-map resolution) or uniform (the same fraction of every "
                   "group, found by bisection).")
    structured: bool = option(False, "Remove whole output channels of convolutions (and their inputs downstream): "
                                     "a physically smaller, faster model.")
    schedule: Literal["oneshot", "gradual"] = option(
        "gradual", "oneshot, or gradual: Zhu & Gupta's cubic ramp from 0 to --sparsity over the first 3/4 of "
        "fine-tuning.")
    round_to: int = option(8, "--structured: round each convolution's kept channels up to a multiple of this (int8 and "
                              "vector kernels work in blocks of 8 or more; 1: exactly --sparsity).", ge=1)
    scope: Literal["global", "layer"] = option("global", "global: one magnitude threshold across layers; layer: the "
                                                         "same sparsity in each layer.")
    include_all: Optional[bool] = option(
        None, "Also prune the first convolution and the classifier. Default: no for unstructured pruning (they are small "
              "and sensitive); yes with --structured, where a narrower first convolution is most of the int8 speed-up "
              "(the classifier's outputs, the classes, are never removed).", flag="--include-all/--no-include-all")
    importance: Literal["magnitude", "discriminability", "taylor"] = option(
        "magnitude", "--structured: magnitude (filter L2 norm), discriminability (select's scores; needs "
                     "--channels), or, with --target-latency, taylor (the loss a channel's removal is estimated to "
                     "cost, first-order Taylor on training batches; comparable between layers, the default there).")
    channels: Optional[str] = option(None, "Select artifact of this model, for --importance discriminability.",
                                     recipe=False)
    epochs: int = option(1, "Fine-tuning epochs; pruned weights stay exactly zero. With --target-latency, a pruning "
                            "step before each epoch but the last third, which fine-tune at the budget.", ge=0,
                         alias="finetune_epochs")
    lr: float = option(0.01, "Peak fine-tuning learning rate (cosine schedule down to 0).", gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _consistent(self):
        if (self.sparsity is None) == (self.target_latency_ms is None):
            raise ValueError("give --sparsity or --target-latency (one of them)")
        budget = [self.flag_of(k) for k in ("runtime", "latency_batch", "form", "allocation")
                  if k in self.model_fields_set]
        if budget and self.target_latency_ms is None:
            raise ValueError(f"{', '.join(budget)} apply with --target-latency only")
        if self.target_latency_ms is not None and not self.structured:
            raise ValueError("--target-latency removes whole channels; pass --structured too")
        if self.target_latency_ms is not None and self.importance == "discriminability":
            raise ValueError("--target-latency ranks channels by taylor or magnitude importance per millisecond; "
                             "drop --importance discriminability")
        if self.target_latency_ms is not None and "importance" not in self.model_fields_set:
            self.__dict__["importance"] = "taylor"  # the default there; not "given" (no re-validation)
        if self.target_latency_ms is None and self.importance == "taylor":
            raise ValueError("--importance taylor ranks channels per millisecond for --target-latency; use magnitude "
                             "or discriminability with --sparsity")
        if self.target_latency_ms is not None and self.resume:
            raise ValueError("--resume is not supported with --target-latency (its steps change the network); "
                             "rerun it from the start")
        if self.importance == "discriminability" and not self.channels:
            raise ValueError("--importance discriminability needs --channels SELECT_DIR (the scores select wrote)")
        if "round_to" in self.model_fields_set and not self.structured:
            raise ValueError("--round-to rounds the channels --structured keeps; pass --structured too")
        given = sorted(self.model_fields_set & set(DistillOptions.model_fields) - {"teacher"})
        if given and not self.teacher:
            raise ValueError(f"{', '.join(self.flag_of(g) for g in given)} only apply with --teacher (fine-tuning "
                             "while distilling)")
        return self


class QuantizeConfig(DataFields, Augmentation, TrainConfig, DistillOptions, Output):
    model_dir: str = option(help="Artifact directory of the float model to quantize (teach, distill or prune).",
                            argument=True, recipe=False)
    teacher: Optional[str] = option(None, "Teacher artifact directory. Default: the float model being quantized (its "
                                          "int8 form learns to match its own float outputs).")
    epochs: int = option(2, "Quantization-aware fine-tuning epochs.", ge=0)
    lr: float = option(0.002, "Peak fine-tuning learning rate (cosine schedule down to 0); small: the weights "
                              "only learn to live with int8 rounding.", gt=0, allow_inf_nan=False)
    calibration_batches: int = option(8, "Training batches that initialise the activation ranges before "
                                         "fine-tuning.", ge=1)


class ExportConfig(DataFields, Runtime, Output):
    model_dir: str = option(help="Artifact directory of the model to read.", argument=True, recipe=False)
    onnx: bool = option(True, "Write model.onnx (fp32, opset 17, dynamic batch). Always on.", flag="--onnx",
                        recipe=False)
    int8: bool = option(False, "Also write model.int8.onnx (static QDQ), in the fastest form that keeps accuracy: "
                               "each choice left at auto (--stem, --activations, --per-channel/--per-tensor) is "
                               "timed on every runtime and scored on the calibration images, each runtime's int8 file "
                               "(with OpenVINO: model.int8.xml) in the form fastest on it; recorded in metrics.json.", main=True)
    fp16: bool = option(False, "Also write model.fp16.onnx (fp16 weights and compute, float32 input/output).")
    runtime: Literal["auto", "onnxruntime", "openvino", "all"] = option(
        "auto", "Runtimes that measure accuracy and latency: auto (onnxruntime, plus OpenVINO where installed), one, "
                "or all. With OpenVINO the IR (model.xml/.bin, model.int8.xml/.bin) is written beside the ONNX files.", main=True)
    calibration_batches: int = option(8, "Training batches (64 images) used to calibrate int8 (for imagefolder a "
                                              "sample of every class).", ge=1)
    calibration_method: Literal[CALIBRATION_METHODS] = option(  # type: ignore[valid-type]
        "minmax", "How activation ranges are set from the calibration data.")
    per_channel: Optional[bool] = option(None, "int8 weight scales per output channel or one per tensor (default: "
                                               "measured, the faster within --max-drop).",
                                         flag="--per-channel/--per-tensor")
    stem: Literal["auto", "int8", "fp32"] = option(
        "auto", "int8: the first conv on a 1-4 channel input and its max-pool in int8, or fp32 (onnxruntime's int8 kernel "
                "is slow there); auto: measured.")
    activations: Literal["auto", "u8", "s8"] = option(
        "auto", "int8 activation type: u8 (uint8) or s8 (int8; VNNI/AMX kernels); auto: measured.")
    quant_format: Literal["qdq"] = option("qdq", "Quantized graph format: qdq (QuantizeLinear/DequantizeLinear "
                                                 "around each op).", flag="--format")
    max_drop: Optional[float] = option(None, "Fail (exit 1, artifact marked failed) if an int8 file loses more than "
                                             "this many accuracy points on any runtime (1 point when unset); also the "
                                             "loss allowed to the int8 forms measured and to each runtime's deploy "
                                             "form.", ge=0)
    min_speedup: Optional[float] = option(None, "Fail (exit 1, artifact marked failed) if int8 is not at least this many "
                                                "times as fast as fp32 at --latency-batch (on the first runtime measured: "
                                                "onnxruntime unless --runtime openvino; this machine).", gt=0)
    latency_batch: int = option(64, "Batch size for the latency measurement.", ge=1)
    target: str = option("onnx", "Where the model ships, comma-separated: onnx (always written); executorch (phones: "
                                 "model.pte lowered to ExecuTorch's XNNPACK delegate); litert (phones: model.tflite by "
                                 "litert-torch). With --int8 also model.int8.pte / model.int8.tflite (full-integer), "
                                 "quantized by PyTorch's PT2E flow on the calibration images (a compress quantize "
                                 "artifact's: on its learned ranges). Each file is run here by "
                                 "its own runtime at batch 1. Each needs its extra: pip install "
                                 "'compressor[executorch]' / 'compressor[litert]'.",
                         main=True)

    @field_validator("target")
    @classmethod
    def _targets(cls, v: str) -> str:
        return ",".join(parse_targets(v))

    @model_validator(mode="after")
    def _checks(self):
        if not self.onnx:
            raise ValueError("export writes ONNX; pass --onnx")
        for gate in ("max_drop", "min_speedup", "per_channel", "stem", "activations"):
            if gate in self.model_fields_set and not self.int8:
                raise ValueError(f"{self.flag_of(gate)} applies to the int8 model; pass --int8 too")
        return self


class EvalConfig(DataFields, Runtime):
    target: str = option(help="Artifact directory, or an .onnx file or OpenVINO IR .xml file (read by OpenVINO) with its "
                              "model.json beside it.", argument=True, main=True)
    teacher: Optional[str] = option(None, "Teacher artifact: also report agreement with it.")


POST_TRAINING_INT8 = ("calibration_batches", "calibration_method", "per_channel", "stem", "activations")  # export's
STAGE_CONFIGS: dict[str, type[Config]] = {"teach": TeachConfig, "select": SelectConfig, "distill": DistillConfig,
                                          "prune": PruneConfig, "quantize": QuantizeConfig,
                                          "export": ExportConfig}
INPUT_FIELDS = ("model_dir", "teacher", "channels", "target")  # artifact directories a stage reads
# what a step of an artifact's lineage (model.json `lineage`, its model card) shows of each stage's settings
LINEAGE_SETTINGS = {"teach": ("model", "pretrained", "init", "epochs", "lr"), "select": ("top_k", "layers"),
                    "distill": ("student", "method", "scheme", "temperature", "alpha", "epochs", "train_size",
                                "student_pretrained", "student_init", "omit_classes", "bias_shift", "assistant"),
                    "prune": ("sparsity", "target_latency_ms", "structured", "finetune_epochs", "method"),
                    "quantize": ("method", "epochs"), "export": ("int8", "runtime", "target", "max_drop")}


def input_fields(cfg: Config) -> dict[str, Path]:
    """The artifact directories a stage reads, by option name."""
    return {k: Path(v).expanduser().absolute() for k in INPUT_FIELDS if isinstance(v := getattr(cfg, k, None), str)}


def input_dirs(cfg: Config) -> list[Path]:
    """The artifact directories a stage reads (its --out must be none of them, nor inside one)."""
    return list(input_fields(cfg).values())

