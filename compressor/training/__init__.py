"""Training: the one loop every stage uses (`loop`), what it trains and how models are evaluated
(`tasks`), exact checkpoints and resume (`checkpoint`), TensorBoard and MLflow logging (`tracking`)."""

from compressor.training.loop import Trainer, fit, train_task
from compressor.training.tasks import (FitResult, Supervised, Task, accuracy, make_optimizer, peak_memory_mb, predict,
                                       resolve_device)

__all__ = ["FitResult", "Supervised", "Task", "Trainer", "accuracy", "fit", "make_optimizer", "peak_memory_mb",
           "predict", "resolve_device", "train_task"]
