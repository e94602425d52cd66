"""Option groups, mixins of the stage configs: `DataFields` (--data ...), `Augmentation`
(photographs' training views), `Runtime` (--seed, --device), `Output` (--out), `TrainConfig`
(--epochs, --lr, ...: also what `compressor.training.fit` reads) and `DistillOptions` (--teacher,
--method, --temperature, --alpha, --beta, ...: shared by distill, prune --teacher and quantize)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import field_validator

from compressor.data import DATA_NAMES
from compressor.data.folder import INTERPOLATIONS, PIPELINE_DEFAULTS
from compressor.distill import METHOD_NAMES, SCHEME_NAMES
from compressor.distill.registry import OPTION_DEFAULTS, defaults_of
from compressor.precision import PRECISIONS

DataName = Literal[DATA_NAMES]  # type: ignore[valid-type]
MethodName = Literal[METHOD_NAMES]  # type: ignore[valid-type]
SchemeName = Literal[SCHEME_NAMES]  # type: ignore[valid-type]
Precision = Literal[PRECISIONS]  # type: ignore[valid-type]


from compressor.config.base import Config, option


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


class Augmentation(Config):
    """How training views of photographs are made (imagefolder; timm's pipeline, see compressor.data.folder).
    Small tensor datasets are padded, cropped and flipped instead."""

    scale: float = option(PIPELINE_DEFAULTS["scale"], "imagefolder: RandomResizedCrop's smallest crop, as a "
                          "fraction of the image area (crops range up to the whole image).", gt=0, le=1)
    ratio: float = option(PIPELINE_DEFAULTS["ratio"], "imagefolder: RandomResizedCrop's aspect ratios range from "
                          "1/R to R.", ge=1)
    hflip: float = option(PIPELINE_DEFAULTS["hflip"], "imagefolder: probability of a horizontal flip.", ge=0, le=1)
    color_jitter: float = option(PIPELINE_DEFAULTS["color_jitter"], "imagefolder: colour jitter strength "
                                 "(brightness, contrast, saturation); off with --auto-augment.", ge=0)
    auto_augment: Optional[str] = option(PIPELINE_DEFAULTS["auto_augment"], "imagefolder: timm RandAugment / "
                                         "AutoAugment policy, e.g. rand-m9-mstd0.5 or original.")
    reprob: float = option(PIPELINE_DEFAULTS["reprob"], "imagefolder: random erasing probability.", ge=0, le=1)


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
    balance: bool = option(OPTION_DEFAULTS["balance"], "at, rkd, vid: scale the knowledge term so that on the first "
                           "training batch it equals the cross-entropy; --beta then weighs it against the "
                           "cross-entropy whatever the map sizes and layer pairs. --no-balance: --beta is a raw weight "
                           "as in the papers (the papers' at is --beta 1000).", flag="--balance/--no-balance")
    layers: Optional[str] = option(OPTION_DEFAULTS["layers"], "Feature methods: explicit TEACHER:STUDENT layer pairs, "
                                   "comma-separated (default: stage outputs before each downsampling).")
    pairs: Literal["matched", "all"] = option(OPTION_DEFAULTS["pairs"], "How stage layers pair: matched (stage by "
                                              "stage) or all (every teacher layer with every student layer; vid).")
    lambdas: Optional[list[list[float]]] = option(
        OPTION_DEFAULTS["lambdas"], "vid: the weight of each (teacher layer, student layer) pair, a matrix with a row "
        "per teacher layer and a column per student layer of the pairs, e.g. '0.5,0.1;0.1,0.3' (rows split by ';'; "
        "in a recipe, a list of lists); entries of layers that are not paired must be 0. Default: uniform, 1 / number "
        "of pairs.")
    hint_epochs: int = option(OPTION_DEFAULTS["hint_epochs"], "fitnet: epochs of stage one (hint loss only) before the "
                              "kd epochs.", ge=0)
    lit_epochs: int = option(OPTION_DEFAULTS["lit_epochs"], "lit: epochs of the block-wise phase (each student stage fed "
                             "the teacher's previous stage output, trained to reproduce the teacher's output of the "
                             "same stage) before the kd epochs.", ge=0)

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


