"""Training logs users watch in their own tools: TensorBoard scalars and MLflow metrics, one point per epoch.

Every training loop (teach, distill and its control, prune's fine-tuning, each phase of a method
such as fitnet's hints, the online scheme's stream) writes its own TensorBoard run, a subdirectory
of `--log-dir` named after the loop, and with `--mlflow URI` its own MLflow run (experiment
"compressor", the stage's settings as parameters), from the same history rows that go into
metrics.json. Only rank 0 writes under torchrun.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from compressor import CompressorError, distributed

# history keys that are not a per-epoch curve: the epoch itself, and a one-off timing of the first row
NOT_SCALARS = ("epoch", "first_step_s")
EXPERIMENT = "compressor"  # the MLflow experiment every run goes to


def run_name(desc: str) -> str:
    """A directory name for a training loop's description: 'distill[kd] hints' -> 'distill-kd-hints'."""
    return re.sub(r"[^A-Za-z0-9_.=]+", "-", desc).strip("-") or "train"


def scalar_tag(key: str) -> str:
    """TensorBoard groups tags by the part before '/': losses, shares, accuracies, speed."""
    if key == "train_loss":
        return "loss/total"
    if key.startswith("loss_"):
        return f"loss/{key[5:]}"
    if key.startswith("share_loss_"):
        return f"loss_share/{key[11:]}"
    if key.endswith("_accuracy"):
        return f"accuracy/{key.removesuffix('_accuracy')}"
    if key.endswith("_agreement"):
        return f"accuracy/{key}"
    if key in ("images_per_s", "epoch_time_s"):
        return f"speed/{key}"
    return key


def scalars(row: dict):
    """(tag, value) of each per-epoch number in a history row."""
    for key, value in row.items():
        if key not in NOT_SCALARS and isinstance(value, (int, float)) and not isinstance(value, bool):
            yield scalar_tag(key), float(value)


class EpochLog:
    """TensorBoard scalars of one training loop; `epoch(row)` writes one point per numeric key."""

    def __init__(self, log_dir: str | Path, desc: str) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is a dependency; a broken install is still one line
            raise CompressorError("--log-dir needs TensorBoard: pip install tensorboard") from None
        self.dir = Path(log_dir).expanduser() / run_name(desc)
        self.writer = SummaryWriter(log_dir=str(self.dir))

    def epoch(self, row: dict) -> None:
        step = int(row["epoch"])
        for tag, value in scalars(row):
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MlflowLog:
    """MLflow metrics of one training loop: a run named after the loop in experiment "compressor",
    the stage's settings as its parameters, the same tags as TensorBoard's, step = epoch."""

    def __init__(self, uri: str, desc: str, params: dict) -> None:
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise CompressorError("--mlflow needs MLflow: pip install 'compressor[mlflow]' (or mlflow)") from None
        self.client = MlflowClient(tracking_uri=uri)
        try:
            exp = self.client.get_experiment_by_name(EXPERIMENT)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(EXPERIMENT)
            self.run_id = self.client.create_run(exp_id, run_name=run_name(desc)).info.run_id
            items = [Param(k, str(v)[:500]) for k, v in sorted(params.items())]
            for i in range(0, len(items), 100):  # MLflow takes at most 100 parameters per call
                self.client.log_batch(self.run_id, params=items[i:i + 100])
        except Exception as e:  # MlflowException, connection errors: one line, before any training
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise CompressorError(f"--mlflow {uri}: {first}") from None

    def epoch(self, row: dict) -> None:
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(row["epoch"])
        self.client.log_batch(self.run_id, metrics=[Metric(tag, value, now, step) for tag, value in scalars(row)])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class Logs:
    """The loop's open logs (TensorBoard, MLflow), written together."""

    def __init__(self, sinks: list) -> None:
        self.sinks = sinks

    def epoch(self, row: dict) -> None:
        for sink in self.sinks:
            sink.epoch(row)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def open_log(cfg, desc: str) -> Logs | None:
    """The loop's logs that `cfg` asks for (--log-dir, --mlflow), when this is the process that writes
    (rank 0); None when there are none."""
    log_dir, uri = getattr(cfg, "log_dir", None), getattr(cfg, "mlflow", None)
    if (log_dir is None and uri is None) or not distributed.is_main():
        return None
    sinks = [EpochLog(log_dir, desc)] if log_dir is not None else []
    if uri is not None:
        sinks.append(MlflowLog(uri, desc, cfg.settings() if hasattr(cfg, "settings") else {}))
    return Logs(sinks)
