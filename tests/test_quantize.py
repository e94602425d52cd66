"""compress quantize: BatchNorm folding is exact, the fake-quantized model and its int8 files agree,
pruned widths and zeros survive, the artifact loads strictly, torchrun writes one artifact, and
--resume after SIGINT is bit for bit."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from compressor.deploy import qat
from compressor.artifacts import load_artifact, load_state_dict
from compressor.models import build_from_spec, create_model
from compressor.stages import export, prune, quantize

from helpers import SYN, cli, one_line_error

ENV = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}


def _metrics(path):
    return json.loads((path / "metrics.json").read_text())


@pytest.fixture(scope="module")
def quantized(workdir, teacher_dir):
    out = workdir / "quantized"
    quantize(teacher_dir, data=SYN, out=out, epochs=1, device="cpu")
    return out


def test_folding_batchnorm_changes_no_output():
    """timm's BatchNormAct2d (MobileNetV3) and plain BatchNorm2d: folded, the float model computes the same."""
    torch.manual_seed(0)
    for arch in ("mobilenetv3_small_050", "convtiny"):
        model = create_model(arch, num_classes=10, in_chans=1).eval()
        for m in model.modules():  # statistics and affine that are not the identity
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
                m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.5, 0.5)
        x = torch.randn(4, 1, 32, 32)
        with torch.no_grad():
            ref = model(x)
        structure = qat.prepare(model, [1, 32, 32])
        assert structure["folded"] and not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
        qat.calibrate(model, [x], "cpu")
        with torch.no_grad(), qat.float_mode(model.eval()):
            assert torch.allclose(model(x), ref, atol=1e-4), arch
        with torch.no_grad():
            assert not torch.allclose(model(x), ref, atol=1e-4)  # the rounding is simulated


def test_ranges_move_in_training_only():
    model = create_model("convtiny", num_classes=10, in_chans=1)
    qat.prepare(model, [1, 28, 28])
    layer = qat.quantized_modules(model)[0]
    qat.calibrate(model, [torch.randn(8, 1, 28, 28)], "cpu")
    before = layer.input_quant.scale.clone()
    with torch.no_grad():
        model.eval()(torch.randn(8, 1, 28, 28) * 10)
    assert torch.equal(layer.input_quant.scale, before)
    with torch.no_grad():
        model.train()(torch.randn(8, 1, 28, 28) * 10)
    assert not torch.equal(layer.input_quant.scale, before)


def test_artifact_loads_strictly_and_exports_int8_that_agrees(quantized, tmp_path):
    """model.safetensors (weights, scales, zero points) loads strictly into the model model.json builds;
    export writes the learned int8 file on each runtime, within 0.1 point of the fake-quantized model,
    run by onnxruntime's int8 convolutions."""
    spec = json.loads((quantized / "model.json").read_text())
    from safetensors.torch import load_file

    model = build_from_spec(spec)
    model.load_state_dict(load_file(str(quantized / "model.safetensors")), strict=True)
    assert spec["quantization"]["quantized"] and any(k.endswith("input_quant.scale") for k in model.state_dict())
    q = _metrics(quantized)
    assert q["accuracy_calibrated"] > 0.5 and q["accuracy"] > 0.5
    runtimes = ["onnxruntime"] + (["openvino"] if pytest.importorskip("onnxruntime") and _has_openvino() else [])
    out = tmp_path / "export"
    m = export(quantized, data=SYN, out=out, runtime="all" if len(runtimes) == 2 else "onnxruntime", device="cpu")
    assert m["int8_form"]["quantizer"] == "quantize" and "calibration_batches" not in m
    for rt in runtimes:
        r = m["runtimes"][rt]
        assert abs(r["int8_vs_torch_points"]) <= 0.1, (rt, r["accuracy_int8"], q["accuracy"])
    # int8 weights stored, and onnxruntime fuses every quantized convolution
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(out / "model.int8.onnx"))
    int8_weights = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) > 1]
    assert len(int8_weights) == len(spec["quantization"]["quantized"])
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(str(out / "model.int8.onnx"), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
    convs = sum(isinstance(load_artifact(quantized).model.get_submodule(n), torch.nn.Conv2d)
                for n in spec["quantization"]["quantized"])
    assert ops.count("QLinearConv") == convs and "Conv" not in ops[1:], ops  # the float stem is the only Conv


@pytest.mark.parametrize("target", ["executorch", "litert"])
def test_phone_int8_files_of_a_quantized_artifact_use_its_learned_ranges(quantized, tmp_path, target):
    """--target executorch/litert on a quantize artifact: no calibration; the int8 .pte/.tflite quantizes
    the learned layers (each runs in XNNPACK's int8 kernels) on the learned ranges and scores within 0.1
    point of the fake-quantized model; the fp32 file is its float weights."""
    pytest.importorskip({"executorch": "executorch", "litert": "litert_torch"}[target])
    from compressor.deploy import phones
    from compressor.stages.export_stage import LEARNED_PHONE_FORM

    m = export(quantized, data=SYN, out=tmp_path / "e", target=f"onnx,{target}", runtime="onnxruntime", device="cpu")
    t = m["targets"][target]
    assert t["int8_form"] == LEARNED_PHONE_FORM and "calibration_batches" not in m
    assert abs(t["int8_vs_torch_points"]) <= 0.1 and t["agreement_torch_int8"] >= 0.99, t
    assert t["agreement_torch_fp32"] == 1.0
    layers = json.loads((quantized / "model.json").read_text())["quantization"]["quantized"]
    assert t["delegation_int8"]["int8_weight_layers"] == len(layers)
    assert (tmp_path / "e" / phones.FILES[target]["int8"]).is_file()


def test_the_learned_phone_program_computes_what_the_fake_quantized_model_does(quantized, tmp_path):
    """The PT2E program written to the phone files rounds exactly where and as the fake-quantized model
    does (the learned scales and zero points, not calibrated ones); on MobileNetV3 (one int8 layer reading
    another's output directly, squeeze-and-excitation, hard-swish) it lowers to XNNPACK with every learned
    layer in int8."""
    pytest.importorskip("executorch")
    from compressor.deploy import phones

    art = load_artifact(quantized)
    model, shape = art.model.eval(), art.spec.input_shape
    program, _ = phones.quantize_learned("executorch", model, shape)
    torch.manual_seed(0)
    x = torch.rand(16, *shape) * 3 - 1
    with torch.no_grad():
        assert torch.equal(torch.cat([program(xi) for xi in x.split(1)]), model(x))
        with qat.float_mode(model):
            assert not torch.allclose(torch.cat([program(xi) for xi in x.split(1)]), model(x), atol=1e-3)
    mbv3 = create_model("mobilenetv3_small_050", num_classes=10, in_chans=1)
    structure = qat.prepare(mbv3, [1, 32, 32])
    qat.calibrate(mbv3, [torch.randn(8, 1, 32, 32)], "cpu")
    qat.freeze_ranges(mbv3)
    program, _ = phones.quantize_learned("executorch", mbv3.eval(), [1, 32, 32])
    d = phones.write_phone("executorch", program, tmp_path / "m.pte", [1, 32, 32])
    assert d["int8_weight_layers"] == len(structure["quantized"]), d


def _has_openvino() -> bool:
    from compressor.deploy.runtimes import openvino_available

    return openvino_available()


def test_export_of_a_quantized_model_refuses_calibration_options(quantized, tmp_path):
    one_line_error(cli("export", quantized, "--data", "synthetic", "--int8", "--calibration-batches", "2",
                       "--out", tmp_path / "x"), "quantized by compress quantize")
    one_line_error(cli("quantize", quantized, "--data", "synthetic", "--out", tmp_path / "y"), "already quantized")


def test_structured_pruned_keeps_widths_and_sparse_keeps_zeros(workdir, teacher_dir, tmp_path):
    narrow = tmp_path / "narrow"
    prune(teacher_dir, data=SYN, sparsity=0.5, structured=True, epochs=0, out=narrow, device="cpu")
    quantize(narrow, data=SYN, out=tmp_path / "narrow-q", epochs=1, device="cpu")
    widths = lambda m: [(n, p.shape) for n, p in m.named_parameters() if p.dim() > 1]  # noqa: E731
    assert widths(load_artifact(tmp_path / "narrow-q").model) == widths(load_artifact(narrow).model)

    sparse = tmp_path / "sparse"
    prune(teacher_dir, data=SYN, sparsity=0.6, epochs=0, out=sparse, device="cpu")
    m = quantize(sparse, data=SYN, out=tmp_path / "sparse-q", epochs=1, device="cpu")
    assert m["sparse_layers_kept"]
    before, after = load_state_dict(sparse / "model.safetensors"), load_state_dict(tmp_path / "sparse-q" / "model.safetensors")
    for name in m["sparse_layers_kept"]:
        zeros = before[f"{name}.weight"] == 0
        assert zeros.any() and bool((after[f"{name}.weight"][zeros] == 0).all()), name


def _quantize_cmd(teacher, out, *extra):
    return [sys.executable, "-m", "compressor.cli.main", "quantize", str(teacher), "--data", "synthetic",
            "--epochs", "3", "--out", str(out), *extra]


@pytest.mark.slow
def test_sigint_then_resume_is_bit_identical(teacher_dir, tmp_path):
    out = tmp_path / "interrupted"
    proc = subprocess.Popen(_quantize_cmd(teacher_dir, out), stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=ENV)
    for line in proc.stderr:
        if "quantize finetune epoch 1/3:" in line:
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, rest
    assert not out.exists() and (tmp_path / ".interrupted.checkpoint").is_dir()
    resumed = subprocess.run(_quantize_cmd(teacher_dir, out, "--resume"), capture_output=True, text=True, env=ENV,
                             timeout=300)
    assert resumed.returncode == 0 and "resuming from" in resumed.stderr, resumed.stderr
    straight = tmp_path / "straight"
    full = subprocess.run(_quantize_cmd(teacher_dir, straight), capture_output=True, text=True, env=ENV, timeout=300)
    assert full.returncode == 0, full.stderr
    a, b = load_state_dict(out / "model.safetensors"), load_state_dict(straight / "model.safetensors")
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"


@pytest.mark.slow
def test_quantize_under_torchrun_writes_one_artifact(teacher_dir, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "compressor.cli.main", "quantize", str(teacher_dir), "--data", "synthetic", "--device", "cpu",
           "--epochs", "1", "--out", "q"]
    res = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.count("quantize finetune epoch 1/1: loss") == 1, res.stderr[-3000:]
    assert sorted(os.listdir(tmp_path)) == ["q"]
    m = _metrics(tmp_path / "q")
    assert m["accuracy"] > 0.5 and load_artifact(tmp_path / "q").spec.quantization
    assert np.isfinite(m["accuracy_float_weights"])


def test_recipe_quantize_stage_feeds_export(tmp_path):
    from compressor import CompressorError
    from compressor.recipe import parse_recipe, run_recipe

    raw = {"name": "q", "device": "cpu", "data": {"name": "synthetic"},
           "stages": [{"teach": {"model": "convtiny", "epochs": 1}}, {"quantize": {"epochs": 1, "teacher": True}},
                      {"export": {"runtime": "onnxruntime"}}]}
    run_recipe(parse_recipe(raw), tmp_path / "runs")
    q, e = _metrics(tmp_path / "runs" / "quantize"), _metrics(tmp_path / "runs" / "export")
    assert json.loads((tmp_path / "runs" / "quantize" / "model.json").read_text())["settings"]["quantize"]["teacher"]
    assert e["int8_form"]["quantizer"] == "quantize" and abs(e["int8_vs_torch_points"]) <= 0.1 and q["accuracy"] > 0.5
    bad = {**raw, "stages": raw["stages"][:2] + [{"prune": {"sparsity": 0.5}}]}
    with pytest.raises(CompressorError, match="comes after quantize"):
        parse_recipe(bad)


@pytest.mark.slow
def test_recipe_auto_quantize_runs_only_when_post_training_int8_misses_the_budget(tmp_path, monkeypatch):
    """quantize: {auto: true} is skipped while the export's post-training int8 keeps its budget; when
    it does not, quantize runs and the export is written again from the quantized model."""

    from compressor.deploy import choice
    from compressor.recipe import parse_recipe, run_recipe

    raw = {"name": "q", "device": "cpu", "data": {"name": "synthetic"},
           "stages": [{"teach": {"model": "convtiny", "epochs": 1}}, {"quantize": {"epochs": 1, "auto": True}},
                      {"export": {"int8": True, "runtime": "onnxruntime", "calibration_batches": 2, "max_drop": 5}}]}
    rows = run_recipe(parse_recipe(raw), tmp_path / "fine")
    assert [r["stage"] for r in rows] == ["teach", "export"] and not (tmp_path / "fine" / "quantize").exists()
    assert _metrics(tmp_path / "fine" / "export")["int8_form"]["quantizer"] != "quantize"

    from compressor.stages import export_stage as stage_module
    real = choice.choose_int8_form  # calibration on images x1000: post-training int8 collapses
    monkeypatch.setattr(stage_module, "choose_int8_form",
                        lambda f, q, calib, **kw: real(f, q, [(x * 1000, y) for x, y in calib], **kw))
    rows = run_recipe(parse_recipe(raw), tmp_path / "escalated")
    assert [r["stage"] for r in rows] == ["teach", "quantize", "export"]
    e = _metrics(tmp_path / "escalated" / "export")
    assert e["status"] == "ok" and e["int8_form"]["quantizer"] == "quantize"
    again = run_recipe(parse_recipe(raw), tmp_path / "escalated")  # the ledger keeps the escalated chain
    assert [r["skipped"] for r in again] == [True, True, True]
