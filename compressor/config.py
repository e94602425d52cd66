"""One typed config per stage: the single home of every option's name, type, default, bounds and help.

The CLI (`compressor.cli`), the recipe schema (`compressor.recipe`), the stage functions
(`compressor.stages`) and the settings recorded in model.json and in checkpoints all derive from
these classes. Adding an option to a stage touches one class here (plus its use).

Option groups are mixins: `DataFields` (--data ...), `Runtime` (--seed, --device), `TrainConfig`
(--epochs, --lr, ... : also what `compressor.training.fit` reads) and `DistillOptions` (--teacher,
--method, --temperature, --alpha, --beta, ...: shared by distill and prune --teacher).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from compressor import CompressorError
from compressor.data import DATA_NAMES
from compressor.distill import METHOD_NAMES, SCHEME_NAMES
from compressor.distill.registry import defaults_of
from compressor.export import CALIBRATION_METHODS
from compressor.precision import PRECISIONS

DataName = Literal[DATA_NAMES]  # type: ignore[valid-type]
MethodName = Literal[METHOD_NAMES]  # type: ignore[valid-type]
SchemeName = Literal[SCHEME_NAMES]  # type: ignore[valid-type]
Precision = Literal[PRECISIONS]  # type: ignore[valid-type]
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")  # imagefolder resampling (timm's names)


def option(default: Any = ..., help: str = "", *, flag: str | None = None, short: str | None = None,
           argument: bool = False, recipe: bool = True, setting: bool = True, alias: str | None = None,
           main: bool = False, **bounds) -> Any:
    """A config field with what the CLI and the recipe need to know about it.

    Args:
        flag: the CLI spelling (default: --name-with-dashes; for a bool defaulting to True,
            --name/--no-name).
        argument: a positional CLI argument instead of an option.
        recipe: whether a recipe stage may set it (inputs such as model_dir come from earlier stages).
        setting: whether it is part of the stage's recorded settings and checkpoint fingerprint
            (where to write, whether to resume and which device are not: they change no result).
        main: one of the options a user gives first (`--help` lists them first, in their own panel).
    """
    extra = {"flag": flag, "short": short, "argument": argument, "recipe": recipe, "setting": setting, "main": main}
    return Field(default, description=help, alias=alias, json_schema_extra=extra, **bounds)


def field_extra(info) -> dict:
    return info.json_schema_extra or {}


class Config(BaseModel):
    """Strict: unknown keys, wrong types and out-of-bounds values are errors naming the option."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True)

    @classmethod
    def make(cls, **values):
        """Validate keyword values; every problem becomes one line naming its CLI option."""
        values = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in values.items()}
        try:
            return cls.model_validate(values)
        except ValidationError as e:
            raise CompressorError(cls.describe_errors(e)) from None

    @classmethod
    def describe_errors(cls, e: ValidationError, prefix: str = "") -> str:
        parts = []
        for err in e.errors():
            name = str(err["loc"][0]) if err["loc"] else ""
            where = prefix + name if prefix else cls.flag_of(name) if name else ""
            msg = "unknown option" if err["type"] == "extra_forbidden" else err["msg"].replace("Value error, ", "")
            shown = f" (got {err['input']!r})" if err["loc"] and err["type"] != "extra_forbidden" else ""
            parts.append(f"{where}: {msg}{shown}" if where else msg)  # a check across options names its own flags
        return "; ".join(parts)

    @classmethod
    def flag_of(cls, name: str) -> str:
        info = cls.model_fields.get(name) or next((f for f in cls.model_fields.values() if f.alias == name), None)
        if info is None:
            return name
        flag = field_extra(info).get("flag")
        return (flag or "--" + (info.alias or name).replace("_", "-")).split("/")[0]

    def settings(self) -> dict:
        """The resolved settings that decide the result: written to model.json, fingerprinted."""
        skip = {n for n, f in type(self).model_fields.items() if not field_extra(f).get("setting", True)}
        return self.model_dump(mode="json", by_alias=True, exclude=skip)


# --- option groups ---------------------------------------------------------------------------


class DataFields(Config):
    """Which data a stage reads (the --data family of options)."""

    data: DataName = option(help="Dataset name.", recipe=False, main=True)
    data_root: Optional[str] = option(
        None, "Directory holding the data (fashion-mnist defaults to /usr/share/datasets/fashion-mnist; imagefolder "
        "wants train/ and val/ class folders).", recipe=False)
    image_size: Optional[int] = option(None, "Resize images to this square size (default: native size, or the "
                                             "upstream model's).", ge=8, recipe=False)
    download: bool = option(False, "Allow torchvision to download the dataset into --data-root.", recipe=False)
    train_size: Optional[int] = option(None, "Use only N training images (after the fixed validation split): the "
                                             "first N, or for imagefolder a fixed sample spread over every class "
                                             "folder.", ge=1)
    workers: Optional[int] = option(None, "imagefolder: DataLoader worker processes decoding and augmenting images "
                                          "(default: one per CPU core, at most 8, shared by torchrun's processes; 0: "
                                          "in the main process). Changes no result.", ge=0, recipe=False, setting=False)
    interpolation: Optional[Literal[INTERPOLATIONS]] = option(  # type: ignore[valid-type]
        None, "imagefolder: resampling of resized images (default: the pretrained model's, else bilinear).",
        recipe=False)
    crop_pct: Optional[float] = option(None, "imagefolder: evaluation resizes to image-size / crop-pct, then crops the "
                                             "centre (default: the pretrained model's, else 0.875).", gt=0, le=1,
                                       recipe=False)

    def load_data(self, spec=None):
        """Load the data; with an upstream model's spec, check it fits and use its normalization."""
        from compressor.stages.common import load_bundle

        return load_bundle(self, spec)


class Augmentation(Config):
    """How training views of photographs are made (imagefolder; timm's pipeline, see compressor.folder).
    Small tensor datasets are padded, cropped and flipped instead."""

    scale: float = option(0.08, "imagefolder: RandomResizedCrop's smallest crop, as a fraction of the image area "
                                "(crops range up to the whole image).", gt=0, le=1)
    ratio: float = option(4 / 3, "imagefolder: RandomResizedCrop's aspect ratios range from 1/R to R.", ge=1)
    hflip: float = option(0.5, "imagefolder: probability of a horizontal flip.", ge=0, le=1)
    color_jitter: float = option(0.4, "imagefolder: colour jitter strength (brightness, contrast, saturation); "
                                      "off with --auto-augment.", ge=0)
    auto_augment: Optional[str] = option(None, "imagefolder: timm RandAugment / AutoAugment policy, e.g. "
                                               "rand-m9-mstd0.5 or original.")
    reprob: float = option(0.0, "imagefolder: random erasing probability.", ge=0, le=1)


PIPELINE_FIELDS = ("scale", "ratio", "hflip", "color_jitter", "auto_augment", "reprob", "interpolation", "crop_pct")


class Runtime(Config):
    seed: int = option(0, "Seed for initialization, data order and augmentation.", recipe=False)
    device: Literal["auto", "cpu", "cuda"] = option("auto", "Where to run: auto picks cuda when available.",
                                                    recipe=False, setting=False)


class Output(Config):
    out: str = option(help="Artifact directory to write (replaced atomically if it is one; never an input "
                           "artifact or a directory the tool did not write).", recipe=False, setting=False, main=True)


class TrainConfig(Runtime):
    """What the training loop reads (`compressor.training.fit`)."""

    epochs: int = option(1, "Training epochs.", ge=0)
    lr: float = option(0.05, "Peak learning rate (cosine schedule down to 0).", gt=0, allow_inf_nan=False)
    batch_size: int = option(128, "Training batch size (under torchrun: the global batch, shared by the "
                                  "processes).", ge=1)
    optimizer: Literal["sgd", "adam"] = option("sgd", "SGD with Nesterov momentum, or Adam.")
    momentum: float = option(0.9, "SGD momentum.", ge=0, lt=1)
    weight_decay: float = option(5e-4, "L2 weight decay.", ge=0)
    precision: Precision = option("32", "Training precision (names as in Lightning): 32; bf16-mixed (forward passes "
                                        "under autocast in bfloat16, CPU or GPU); 16-mixed (float16 with a gradient "
                                        "scaler). Losses are always computed in float32.")
    channels_last: bool = option(False, "Train in channels-last memory format (faster convolutions on GPUs and on "
                                        "CPUs with AMX/AVX-512).")
    label_smoothing: float = option(0.0, "Hard-label targets smoothed by this much (timm's mixup_target).", ge=0, lt=1)
    mixup: float = option(0.0, "Mixup: each batch mixed with itself reversed, weight ~ Beta(a, a) (timm's Mixup; "
                               "0: off, 0.8 as in timm's ImageNet recipes).", ge=0)
    cutmix: float = option(0.0, "CutMix: a box of the reversed batch pasted in, area ~ Beta(a, a) (0: off; with "
                                "--mixup, one of the two per batch).", ge=0)
    sync_batchnorm: bool = option(False, "Under torchrun on GPUs: batch-norm statistics over every process's share "
                                         "of the batch (SyncBatchNorm) instead of each process's own.")
    compile: bool = option(False, "Compile the training forward with torch.compile (faster steps on GPUs after a "
                                  "warm-up; needs a C++ compiler on CPUs).")
    resume: bool = option(False, "Continue an interrupted run of this same command from its checkpoint "
                                 "(.OUT.checkpoint/ beside --out); an error if there is none.",
                          recipe=False, setting=False)
    log_dir: Optional[str] = option(None, "Write TensorBoard scalars here (losses, each loss's share, accuracies, "
                                          "learning rate, images/s; one point per epoch, one subdirectory per training "
                                          "loop); compress run writes them under RUN_DIR/logs/.", recipe=False,
                                    setting=False)
    mlflow: Optional[str] = option(None, "Also log to MLflow at this tracking URI (http://HOST:5000, or a store your "
                                         "MLflow accepts): one MLflow run per training loop in experiment 'compressor', "
                                         "the stage's settings as its parameters, the --log-dir scalars as metrics, "
                                         "one point per epoch. Needs MLflow: pip install 'compressor[mlflow]'.",
                                   recipe=False, setting=False)


class DistillOptions(Config):
    """How a student learns from a teacher: shared by distill and by prune's fine-tuning with --teacher.

    alpha, beta and temperature default to None: the chosen method's own default (see
    `compressor.distill.registry`); one given explicitly that the method does not use is an error.
    """

    teacher: Optional[str] = option(None, "Teacher artifact directory (from teach). distill: needed except with "
                                          "--scheme self; prune: fine-tune while distilling from it.", main=True)
    method: MethodName = option("kd", "Distillation method (see the docs' method table).", main=True)
    temperature: Optional[float] = option(None, "Softmax temperature T of the kd term (loss scaled by T^2); "
                                                f"default: the method's ({defaults_of('temperature')}).",
                                          short="-T", gt=0)
    alpha: Optional[float] = option(None, "Weight of the hard-label cross-entropy, in [0, 1] (kd and mse give "
                                          "1 - alpha to the teacher); default: the method's "
                                          f"({defaults_of('alpha')}).", ge=0, le=1)
    beta: Optional[float] = option(None, "Weight of the method's knowledge term (at, rkd, vid: against the "
                                         "cross-entropy, see --balance; dkd: TCKD; dist: inter-class); default: the "
                                         f"method's ({defaults_of('beta')}). vid: the study's L = b*task + "
                                         "(1 - b)*sum(lambda*I) is --alpha b --beta 1-b --no-balance.", ge=0)
    gamma: Optional[float] = option(None, "Weight of a method's second knowledge term (dkd: NCKD; dist: "
                                          f"intra-class); default: the method's ({defaults_of('gamma')}).", ge=0)
    balance: bool = option(True, "at, rkd, vid: scale the knowledge term so that on the first training batch it "
                                 "equals the cross-entropy; --beta then weighs it against the cross-entropy whatever "
                                 "the map sizes and layer pairs. --no-balance: --beta is a raw weight as in the papers "
                                 "(the papers' at is --beta 1000).", flag="--balance/--no-balance")
    layers: Optional[str] = option(None, "Feature methods: explicit TEACHER:STUDENT layer pairs, comma-separated "
                                         "(default: stage outputs before each downsampling).")
    pairs: Literal["matched", "all"] = option("matched", "How stage layers pair: matched (stage by stage) or all "
                                                         "(every teacher layer with every student layer; vid).")
    lambdas: Optional[list[list[float]]] = option(
        None, "vid: the weight of each (teacher layer, student layer) pair, a matrix with a row per teacher layer and a "
              "column per student layer of the pairs, e.g. '0.5,0.1;0.1,0.3' (rows split by ';'; in a recipe, a list of "
              "lists); entries of layers that are not paired must be 0. Default: uniform, 1 / number of pairs.")
    hint_epochs: int = option(1, "fitnet: epochs of stage one (hint loss only) before the kd epochs.", ge=0)
    lit_epochs: int = option(1, "lit: epochs of the block-wise phase (each student stage fed the teacher's previous "
                                "stage output, trained to reproduce the teacher's output of the same stage) before "
                                "the kd epochs.", ge=0)

    @field_validator("lambdas", mode="before")
    @classmethod
    def _matrix(cls, v):
        """'a,b;c,d' (the CLI) -> [[a, b], [c, d]]; every row as long as the first, no negative weight."""
        if isinstance(v, str):
            try:
                v = [[float(x) for x in row.split(",")] for row in v.split(";")]
            except ValueError:
                raise ValueError("write the matrix as numbers, columns split by ',' and rows by ';', "
                                 "e.g. '0.5,0.1;0.1,0.3'") from None
        if isinstance(v, list) and v and all(isinstance(r, list) for r in v):
            if len({len(r) for r in v}) > 1:
                raise ValueError(f"every row needs as many entries as the first ({len(v[0])})")
            if any(x < 0 for r in v for x in r if isinstance(x, (int, float))):
                raise ValueError("weights must not be negative")
        return v


# --- stages ----------------------------------------------------------------------------------


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
                                           "distilled offline from the one before, the first from --teacher).")
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
    sparsity: float = option(help="Unstructured: fraction of conv/linear weights to zero; --structured: fraction "
                                  "of each prunable convolution's output channels removed. In [0, 1).", ge=0, lt=1, main=True)
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
    importance: Literal["magnitude", "discriminability"] = option(
        "magnitude", "--structured: magnitude (filter L2 norm) or discriminability (select's scores; needs --channels).")
    channels: Optional[str] = option(None, "Select artifact of this model, for --importance discriminability.",
                                     recipe=False)
    epochs: int = option(1, "Fine-tuning epochs; pruned weights stay exactly zero.", ge=0, alias="finetune_epochs")
    lr: float = option(0.01, "Peak fine-tuning learning rate (cosine schedule down to 0).", gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _consistent(self):
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


def input_dirs(cfg: Config) -> list[Path]:
    """The artifact directories a stage reads (its --out must be none of them, nor inside one)."""
    return [Path(v).expanduser().absolute() for k in INPUT_FIELDS if isinstance(v := getattr(cfg, k, None), str)]

