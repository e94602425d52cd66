"""compressor.training: Ctrl-C / SIGTERM stop cleanly after the current step, --resume is exact
(bit for bit on the CPU), and training that diverges stops naming the stage, epoch and step."""

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from compressor import CompressorError
from compressor.artifacts import load_state_dict
from compressor.stages import distill, teach

from helpers import SYN, cli as _cli, one_line_error as _one_line_error

ENV = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}


def _teach_cmd(out: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "compressor.cli.main", "teach", "--data", "synthetic", "--model", "convtiny",
            "--epochs", "3", "--lr", "0.05", "--out", str(out), *extra]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_teach_then_resume_gives_bit_identical_weights(tmp_path, sig):
    out = tmp_path / "interrupted"
    proc = subprocess.Popen(_teach_cmd(out), stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV)
    lines = []
    for line in proc.stderr:  # wait until the first epoch is done, then stop it mid-run
        lines.append(line)
        if "teach epoch 1/3:" in line:
            time.sleep(0.3)
            proc.send_signal(sig)
            proc.send_signal(sig)  # a second signal changes nothing
            break
    rest = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == 128 + sig, "".join(lines) + rest
    err = [ln for ln in rest.splitlines() if ln.startswith("error:")]
    assert err and f"stopped by {signal.Signals(sig).name}" in err[0] and "--resume" in err[0], rest
    assert "Traceback" not in rest
    assert not out.exists()  # no half-written artifact
    ckpt = tmp_path / ".interrupted.checkpoint" / "main.pt"
    assert ckpt.is_file()
    resumed = subprocess.run(_teach_cmd(out, "--resume"), capture_output=True, text=True, env=ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    assert not ckpt.parent.exists()  # removed once the artifact is committed
    straight = tmp_path / "straight"
    full = subprocess.run(_teach_cmd(straight), capture_output=True, text=True, env=ENV, timeout=300)
    assert full.returncode == 0, full.stderr
    a, b = load_state_dict(out / "model.safetensors"), load_state_dict(straight / "model.safetensors")
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"


def test_resume_without_a_checkpoint_is_an_error(tmp_path):
    _one_line_error(_cli("teach", "--data", "synthetic", "--model", "convtiny", "--out", tmp_path / "x", "--resume"),
                    "no checkpoint")
    assert not (tmp_path / "x").exists()


def _stop_at_check(n: int):
    """A StopSignals that reports SIGTERM at its n-th check (one check per step and per epoch end)."""
    from compressor.training import loop as training

    class StopAtCheck(training.StopSignals):
        checks = 0

        @property
        def received(self):
            StopAtCheck.checks += 1
            return "SIGTERM" if StopAtCheck.checks >= n else None

        @received.setter
        def received(self, value):
            pass

    return StopAtCheck


def test_resume_in_process_mid_epoch_matches(tmp_path, monkeypatch):
    """The same promise without subprocesses: stop at a chosen step, resume, compare bit for bit."""
    from compressor.training import loop as training

    cfg = dict(epochs=2, lr=0.05)
    teach(data=SYN, model="convverytiny", out=tmp_path / "straight", **cfg, device="cpu")
    real = training.StopSignals
    monkeypatch.setattr(training, "StopSignals", _stop_at_check(40))  # 29 steps + 1 epoch end, then step 10
    with pytest.raises(CompressorError, match="stopped by SIGTERM at epoch 2 step 10"):
        teach(data=SYN, model="convverytiny", out=tmp_path / "resumed", **cfg, device="cpu")
    monkeypatch.setattr(training, "StopSignals", real)
    teach(data=SYN, model="convverytiny", out=tmp_path / "resumed", **cfg, device="cpu", resume=True)
    a = load_state_dict(tmp_path / "straight" / "model.safetensors")
    b = load_state_dict(tmp_path / "resumed" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_distill_with_control_resumes_in_its_second_loop(tmp_path, teacher_dir, monkeypatch):
    """Stopped while the control student trains: the distilled student's loop is restored from its own
    checkpoint, the control resumes mid-epoch; everything equals the uninterrupted run."""
    from compressor.training import loop as training
    from compressor.stages import distill

    kw = dict(teacher=teacher_dir, student="convverytiny", data=SYN, epochs=1, lr=0.05,
              control=True, device="cpu")
    straight = distill(out=tmp_path / "straight", **kw)
    real = training.StopSignals
    monkeypatch.setattr(training, "StopSignals", _stop_at_check(1))
    with pytest.raises(CompressorError, match="at epoch 1 step 1;"):
        distill(out=tmp_path / "resumed", **kw)  # the first loop already stops at its first check
    monkeypatch.setattr(training, "StopSignals", _stop_at_check(28 + 1 + 5))  # main: steps 2-29 + end; control: 5
    with pytest.raises(CompressorError, match="at epoch 1 step 5;"):
        distill(out=tmp_path / "resumed", resume=True, **kw)
    saved = torch.load(tmp_path / ".resumed.checkpoint" / "main.pt", weights_only=True)
    assert not any(k.startswith("teacher.") for k in saved["task"])  # the frozen teacher is not copied
    monkeypatch.setattr(training, "StopSignals", real)
    resumed = distill(out=tmp_path / "resumed", resume=True, **kw)
    assert resumed["accuracy"] == straight["accuracy"]
    assert resumed["control_accuracy"] == straight["control_accuracy"]
    for f in ("model.safetensors", "control.safetensors"):
        a, b = load_state_dict(tmp_path / "straight" / f), load_state_dict(tmp_path / "resumed" / f)
        assert all(torch.equal(a[k], b[k]) for k in a), f


def test_divergence_stops_naming_stage_epoch_and_step(tmp_path):
    line = _one_line_error(_cli("teach", "--data", "synthetic", "--model", "convtiny", "--lr", "1e6", "--epochs", "2",
                                "--out", tmp_path / "t"), "non-finite")
    assert "teach:" in line and "epoch 1 step" in line
    assert not (tmp_path / "t").exists()


def test_bf16_mixed_and_channels_last_train_on_the_cpu(tmp_path, teacher_dir):
    """--precision bf16-mixed trains (autocast on the CPU) to about the float32 accuracy; so does
    channels-last; the saved weights are plain float32 tensors either way."""
    from compressor.stages import distill

    kw = dict(teacher=teacher_dir, student="convverytiny", data=SYN, epochs=1, device="cpu")
    fp32 = distill(out=tmp_path / "fp32", **kw)
    bf16 = distill(out=tmp_path / "bf16", precision="bf16-mixed", **kw)
    cl = distill(out=tmp_path / "cl", channels_last=True, **kw)
    for m in (bf16, cl):
        assert abs(m["accuracy"] - fp32["accuracy"]) < 0.05, (m["accuracy"], fp32["accuracy"])
        assert all(math.isfinite(r["train_loss"]) for r in m["history"])
    state = load_state_dict(tmp_path / "bf16" / "model.safetensors")
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    with pytest.raises(CompressorError, match="16-mixed"):
        distill(out=tmp_path / "x", method="l2tww", precision="16-mixed", **kw)


def test_mixup_cutmix_and_label_smoothing_train_repeatably(tmp_path, teacher_dir):
    cfg = dict(data=SYN, model="convverytiny", epochs=1, mixup=0.8, cutmix=1.0, label_smoothing=0.1, device="cpu")
    a = teach(out=tmp_path / "a", **cfg)
    teach(out=tmp_path / "b", **cfg)
    plain = teach(out=tmp_path / "plain", **{**cfg, "mixup": 0.0, "cutmix": 0.0, "label_smoothing": 0.0})
    wa, wb = load_state_dict(tmp_path / "a" / "model.safetensors"), load_state_dict(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # the mixing is drawn from (seed, epoch, step)
    assert a["history"][0]["train_loss"] != plain["history"][0]["train_loss"]  # and it changes training
    d = distill(
        teacher=teacher_dir, student="convverytiny", data=SYN, epochs=1, mixup=0.5, label_smoothing=0.1,
        out=tmp_path / "d", device="cpu")  # soft targets reach every distillation loss
    assert d["accuracy"] > 0.5
    with pytest.raises(CompressorError, match="cannot be cached"):
        distill(
            teacher=teacher_dir, student="convverytiny", data=SYN, mixup=0.5, cache_teacher=True,
            out=tmp_path / "c", device="cpu")


def test_compile_trains_like_eager(tmp_path):
    """--compile (torch.compile of the training forward; inductor builds C++ kernels on the CPU)."""
    cfg = dict(data=SYN, model="convverytiny", epochs=1, device="cpu")
    compiled = teach(out=tmp_path / "c", compile=True, **cfg)
    eager = teach(out=tmp_path / "e", **cfg)
    assert abs(compiled["accuracy"] - eager["accuracy"]) <= 0.01
    assert set(load_state_dict(tmp_path / "c" / "model.safetensors")) == set(
        load_state_dict(tmp_path / "e" / "model.safetensors"))  # saved under the model's own names


def test_log_dir_writes_tensorboard_scalars_one_per_epoch(tmp_path, teacher_dir):
    """--log-dir: one TensorBoard run per training loop, one point per epoch per metric, the values of
    metrics.json's history (losses, each loss's share, accuracies, learning rate, images/s)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = tmp_path / "logs"
    m = distill(teacher=teacher_dir, student="convverytiny", data=SYN, out=tmp_path / "s", epochs=2, lr=0.05,
                control=True, log_dir=logs, device="cpu")
    assert sorted(p.name for p in logs.iterdir()) == ["control-alpha=1", "distill-kd"]
    for run, history, extra in (("distill-kd", m["history"], {"loss/kd", "loss_share/ce", "loss_share/kd"}),
                                ("control-alpha=1", m["control_history"], set())):
        acc = EventAccumulator(str(logs / run))
        acc.Reload()
        tags = set(acc.Tags()["scalars"])
        assert {"loss/total", "loss/ce", "accuracy/train", "accuracy/val", "accuracy/val_agreement", "lr",
                "speed/images_per_s", "speed/epoch_time_s"} | extra <= tags, tags
        for tag in tags:
            assert [e.step for e in acc.Scalars(tag)] == [1, 2], tag
        assert [e.value for e in acc.Scalars("accuracy/val")] == pytest.approx([h["val_accuracy"] for h in history])
        assert [e.value for e in acc.Scalars("loss/total")] == pytest.approx([h["train_loss"] for h in history])
    row = m["history"][-1]
    assert row["share_loss_ce"] + row["share_loss_kd"] == pytest.approx(1.0)
    assert row["share_loss_kd"] == pytest.approx(row["loss_kd"] / (row["loss_ce"] + row["loss_kd"]))


def test_mlflow_logs_one_run_per_training_loop_with_the_settings_and_one_point_per_epoch(tmp_path, teacher_dir,
                                                                                         monkeypatch):
    """--mlflow URI: the same scalars as TensorBoard's, as MLflow metrics (read back with MlflowClient)."""
    pytest.importorskip("mlflow", reason="the mlflow extra: pip install -e '.[mlflow]' (CI installs it)")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a local store for the test; users point at a server
    uri = (tmp_path / "mlruns").as_uri()
    m = distill(teacher=teacher_dir, student="convverytiny", data=SYN, out=tmp_path / "s", epochs=2, lr=0.05,
                control=True, mlflow=uri, device="cpu")
    client = MlflowClient(tracking_uri=uri)
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("compressor").experiment_id])}
    assert set(runs) == {"distill-kd", "control-alpha=1"}
    for name, history in (("distill-kd", m["history"]), ("control-alpha=1", m["control_history"])):
        run = runs[name]
        assert run.info.status == "FINISHED"
        assert run.data.params["student"] == "convverytiny" and run.data.params["epochs"] == "2"
        val = client.get_metric_history(run.info.run_id, "accuracy/val")
        assert [p.step for p in val] == [1, 2]
        assert [p.value for p in val] == pytest.approx([h["val_accuracy"] for h in history])
        assert {"loss/total", "lr", "speed/images_per_s"} <= set(run.data.metrics)


def test_online_scheme_logs_one_point_per_chunk(tmp_path, teacher_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = tmp_path / "logs"
    m = distill(teacher=teacher_dir, student="convverytiny", data=SYN, out=tmp_path / "s", scheme="online",
                chunk_size=1800, buffer_chunks=1, epochs_per_buffer=1, distill_after=1, log_dir=logs, device="cpu")
    assert [p.name for p in logs.iterdir()] == ["distill-online"]
    acc = EventAccumulator(str(logs / "distill-online"))
    acc.Reload()
    chunks = m["chunks"]
    assert len(chunks) >= 2
    for tag, key in (("accuracy/student_val", "student_val_accuracy"), ("accuracy/teacher_val", "teacher_val_accuracy"),
                     ("loss/student", "loss_student"), ("loss/teacher", "loss_teacher")):
        assert [e.step for e in acc.Scalars(tag)] == list(range(1, len(chunks) + 1)), tag
        assert [e.value for e in acc.Scalars(tag)] == pytest.approx([c[key] for c in chunks]), tag


def test_a_preparatory_phase_keeps_its_last_epoch_and_the_main_phase_its_best():
    """fitnet's hints and lit's block-wise epochs do not train the classifier, so their validation
    accuracy says nothing: the next phase starts from their last epoch, not from the 'best' one."""
    import copy

    from compressor.config import TrainConfig
    from compressor.data import load_data
    from compressor.models import create_model
    from compressor.training import Supervised, fit

    class Collapse(Supervised):  # learns in epoch 1, unlearns in epoch 2: its best epoch is not its last
        def on_batch(self, epoch, index):
            self.sign = 1.0 if epoch == 1 else -1.0

        def forward_train(self, x, y):
            logits, losses = super().forward_train(x, y)
            return logits, {"loss_ce": self.sign * losses["loss_ce"]}

    data, cfg = load_data("synthetic"), TrainConfig(epochs=2, lr=0.05)
    for keep_best in (True, False):
        task = Collapse(create_model("convverytiny", num_classes=10, in_chans=3))
        last = {}
        result = fit(task, data, cfg, keep_best=keep_best,
                     after_step=lambda: last.update(copy.deepcopy(task.model.state_dict())))
        assert result.best_epoch == 1 and result.history[1]["val_accuracy"] < result.history[0]["val_accuracy"]
        final = task.model.state_dict()
        same = all(torch.equal(final[k], last[k]) for k in final)
        assert same is (not keep_best), keep_best
