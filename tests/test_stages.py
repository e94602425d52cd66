import json

import pytest
import torch

from compressor import CompressorError
from compressor.artifacts import load_artifact, load_state_dict
from compressor.distill.kd import KD
from compressor.models import create_model
from compressor.stages import evaluate, prune, select, teach

from helpers import SYN

BASE_KEYS = {"accuracy", "params", "seed", "versions", "wall_time_s"}


def _metrics(d):
    return json.loads((d / "metrics.json").read_text())


def test_teach_timm_model_writes_complete_artifact(workdir):
    out = workdir / "timm-teacher"
    m = teach(data=SYN, model="resnet18", out=out, epochs=1, lr=0.05,
              trainable=r"conv2|bn", device="cpu")
    assert BASE_KEYS <= set(m) and m["accuracy"] == pytest.approx(evaluate(out, data=SYN, device="cpu")["accuracy"])
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["size_bytes"] == (out / "model.safetensors").stat().st_size
    assert 0 < on_disk["zipped_bytes"] < on_disk["size_bytes"]
    spec = json.loads((out / "model.json").read_text())
    assert spec["architecture"] == "resnet18" and spec["input_shape"] == [3, 16, 16]
    assert len(spec["mean"]) == 3 and spec["num_classes"] == 10 and len(spec["class_names"]) == 10
    assert m["trainable_params"] < m["params"]  # --trainable froze the other convs
    art = load_artifact(out)  # rebuilt from model.json + safetensors alone
    assert isinstance(art.model, torch.nn.Module)
    assert not any(p.name.startswith(".") for p in workdir.iterdir()), "staging directory left behind"


def test_teach_trainable_freezes_unmatched_but_trains_head(workdir):
    from compressor.models import set_trainable

    net = create_model("resnet18", num_classes=10, in_chans=3)
    set_trainable(net, r"layer4\.1\.conv2")
    on = {n for n, p in net.named_parameters() if p.requires_grad}
    assert on == {"layer4.1.conv2.weight", "fc.weight", "fc.bias"}
    with pytest.raises(CompressorError, match="matches no parameter"):
        set_trainable(net, "nothing_like_this")


def test_teach_init_from_safetensors_and_pt(workdir, teacher_dir, tmp_path):
    art = load_artifact(teacher_dir)
    sd = art.model.state_dict()
    torch.save(sd, tmp_path / "w.pt")
    out = workdir / "from-init"
    m = teach(data=SYN, model="convtiny", out=out, init=str(tmp_path / "w.pt"), epochs=0, device="cpu")
    assert m["accuracy"] == pytest.approx(_metrics(teacher_dir)["accuracy"])


def test_select_writes_channels(workdir, teacher_dir):
    out = workdir / "select"
    select(teacher_dir, data=SYN, out=out, top_k=16, device="cpu")
    ch = json.loads((out / "channels.json").read_text())
    assert [l["name"] for l in ch["layers"]] == ["blocks.0", "blocks.1", "blocks.2"]
    for layer in ch["layers"]:
        assert len(layer["kept"]) == min(16, layer["channels"]) == layer["top_k"]
        assert len(layer["scores"]) == layer["channels"]
        worst_kept = min(layer["scores"][i] for i in layer["kept"])
        dropped = [s for i, s in enumerate(layer["scores"]) if i not in set(layer["kept"])]
        assert all(s <= worst_kept for s in dropped)
    assert {"accuracy", "params"} <= set(_metrics(out))


def test_distill_metrics_and_frozen_teacher(workdir, teacher_dir, student_dir):
    m = _metrics(student_dir)
    assert {"accuracy", "params", "agreement", "teacher_accuracy"} <= set(m)
    assert m["teacher_accuracy"] == pytest.approx(_metrics(teacher_dir)["accuracy"])
    a, b = m["accuracy"], m["teacher_accuracy"]  # right on a and b of the same images: agree on a + b - 1 to 1 - |a - b|
    assert a + b - 1 - 1e-6 <= m["agreement"] <= 1 - abs(a - b) + 1e-6
    teacher, student = load_artifact(teacher_dir).model, create_model("convverytiny", num_classes=10, in_chans=3)
    d = KD(student, teacher)
    d.train()
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    _, losses = d.forward_train(x, y)
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None for p in student.parameters())


def test_prune_measured_sparsity_in_saved_file(workdir, student_dir):
    out = workdir / "pruned"
    m = prune(student_dir, data=SYN, out=out, sparsity=0.7, finetune_epochs=1, device="cpu")
    state = load_state_dict(out / "model.safetensors")
    pruned = list(m["sparsity_per_layer"])  # conv/linear layers but the first conv and the classifier
    assert pruned and len(pruned) == len([k for k, v in state.items() if k.endswith(".weight") and v.dim() in (2, 4)]) - 2
    weights = [state[f"{n}.weight"] for n in pruned]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros >= 0.7 and m["sparsity"] == pytest.approx(zeros)
    m_all = prune(student_dir, data=SYN, out=workdir / "pruned-all", sparsity=0.7, include_all=True,
                  schedule="oneshot", finetune_epochs=1, device="cpu")
    state = load_state_dict(workdir / "pruned-all" / "model.safetensors")
    weights = [v for k, v in state.items() if k.endswith(".weight") and v.dim() in (2, 4)]
    assert sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights) >= 0.7 <= m_all["sparsity"]
    assert set(state) == set(load_state_dict(student_dir / "model.safetensors"))  # no masks, no extra tensors


def test_pretrained_offline_is_one_clear_error(monkeypatch):
    from compressor import models

    monkeypatch.setattr(models, "_hub_reachable", lambda *a, **k: False)  # as on a machine with no network
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-cache")
    with pytest.raises(CompressorError, match="unreachable"):
        models.create_model("resnet18", num_classes=10, in_chans=3, pretrained=True)


@pytest.mark.parametrize("name", __import__("compressor.models", fromlist=["list_builtin"]).list_builtin())
def test_every_builtin_model_builds_taps_and_exports(name, tmp_path):
    """Registry-driven smoke test: every built-in model runs, has feature_info, and exports to ONNX."""
    from compressor.taps import probe_shapes
    from compressor.deploy.graph import export_onnx
    from compressor.deploy.runtimes import session

    m = create_model(name, num_classes=7, in_chans=1).eval()
    for size in (28, 32):
        assert m(torch.randn(2, 1, size, size)).shape == (2, 7)
    layers = [i["module"] for i in m.feature_info]
    shapes = probe_shapes(m, layers, [1, 28, 28])
    assert [s[0] for s in shapes.values()] == [i["num_chs"] for i in m.feature_info]
    export_onnx(m, tmp_path / "m.onnx", [1, 28, 28])
    x = torch.randn(3, 1, 28, 28)
    out = session(tmp_path / "m.onnx")(x.numpy())
    assert abs(out - m(x).detach().numpy()).max() < 1e-4
