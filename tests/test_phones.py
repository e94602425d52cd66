"""export --target executorch,litert: phone files (.pte, .tflite) written from the PyTorch model and
run here by their own runtimes; one line where the extra is missing."""

import json

import numpy as np
import pytest
import torch.nn as nn

from compressor import CompressorError
from compressor.artifacts import load_artifact
from compressor.deploy import phones
from compressor.report import summary_rows, summary_table
from compressor.stages import export

from helpers import SYN


def test_a_target_not_installed_or_unknown_is_one_line(student_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(phones, "target_available", lambda target: False)
    with pytest.raises(CompressorError, match=r"pip install 'compressor\[executorch\]'") as e:
        export(student_dir, data=SYN, out=tmp_path / "e", target="onnx,executorch")
    assert "\n" not in str(e.value) and not (tmp_path / "e").exists()
    with pytest.raises(CompressorError, match=r"pip install 'compressor\[litert\]'"):
        export(student_dir, data=SYN, out=tmp_path / "e", target="litert")
    with pytest.raises(CompressorError, match="comma-separated list of onnx, executorch, litert"):
        export(student_dir, data=SYN, out=tmp_path / "e", target="onnx,tflite")


def _layers(model) -> int:
    return sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())


RUNTIME_MODULE = {"executorch": "executorch", "litert": "litert_torch"}
WEIGHTED_OP = {"executorch": "aten_convolution_default", "litert": "CONV_2D"}


@pytest.mark.parametrize("target", ["executorch", "litert"])
def test_phone_files_run_here_agree_with_pytorch_and_int8_runs_in_xnnpack(student_dir, tmp_path, target):
    pytest.importorskip(RUNTIME_MODULE[target], reason=f"the {target} extra: pip install 'compressor[{target}]'")
    out = tmp_path / "phone"
    m = export(student_dir, data=SYN, out=out, int8=True, target=f"onnx,{target}", runtime="onnxruntime",
               calibration_batches=2, stem="int8", activations="u8", per_channel=True, device="cpu")
    t = m["targets"][target]
    files = phones.FILES[target]
    assert (out / files["fp32"]).is_file() and (out / files["int8"]).is_file() and t["forms"] == ["fp32", "int8"]
    assert t["max_abs_diff_fp32_batch1"] < 1e-4 and t["agreement_torch_fp32"] == 1.0
    assert t["accuracy_fp32"] == pytest.approx(m["accuracy_fp32"])  # the same model as the fp32 ONNX file
    assert abs(t["accuracy_drop_points"]) <= m["accuracy_budget_points"] and t["agreement_torch_int8"] > 0.9
    layers = _layers(load_artifact(student_dir).model)
    assert t["delegation_int8"]["int8_weight_layers"] == layers  # every conv and linear has int8 weights in XNNPACK
    assert t["delegation_fp32"]["int8_weight_layers"] == 0
    for kind in ("fp32", "int8"):
        d = t[f"delegation_{kind}"]
        assert d["partitions"] >= 1 and d["ops"][WEIGHTED_OP[target]]["not_delegated"] == 0
        assert t[f"latency_ms_{kind}_batch1"] > 0 and 0 < t[f"zipped_bytes_{kind}"] < t[f"size_bytes_{kind}"] + 1024
    assert t["size_bytes_int8"] < t["size_bytes_fp32"] / 2
    assert t["deploy_form"] in ("fp32", "int8") and t["deploy_file"] in files.values()
    assert json.loads((out / "metrics.json").read_text())["targets"][target]["forms"] == ["fp32", "int8"]
    rows = {r["stage"]: r for r in summary_rows(tmp_path)}  # the run's summary: a row per phone target, at batch 1
    assert list(rows) == ["phone (onnxruntime)", f"phone ({target})"]
    assert rows[f"phone ({target})"]["accuracy_int8"] == t["accuracy_int8"] and rows[f"phone ({target})"]["batch"] == 1
    assert rows[f"phone ({target})"]["latency_ms_int8"] == t["latency_ms_int8_batch1"]
    assert "ms at batch 1" in summary_table(list(rows.values())).markdown()
    # standard files: the runtime's own Python API loads and runs them, one image at a time
    spec = load_artifact(student_dir).spec
    x = np.zeros((1, *spec.input_shape), dtype=np.float32)
    if target == "executorch":
        import torch
        from executorch.runtime import Runtime

        program = Runtime.get().load_program(out / files["int8"])
        logits = program.load_method("forward").execute([torch.from_numpy(x)])[0].numpy()
    else:
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(out / files["int8"]))
        it.allocate_tensors()
        inp = it.get_input_details()[0]
        assert inp["dtype"] == np.int8  # full-integer: int8 in, int8 out
        it.set_tensor(inp["index"], np.zeros(inp["shape"], dtype=np.int8))
        it.invoke()
        logits = it.get_tensor(it.get_output_details()[0]["index"])
    assert tuple(logits.shape) == (1, spec.num_classes)


def test_an_int8_program_that_loses_more_than_the_budget_fails_the_export(student_dir, tmp_path, monkeypatch):
    pytest.importorskip("executorch", reason="the executorch extra: pip install 'compressor[executorch]'")
    from compressor.stages import export_stage

    real = phones.quantize_pt2e
    monkeypatch.setattr(export_stage, "quantize_pt2e",  # ranges from images 1000x too bright: int8 loses
                        lambda target, model, shape, calib, floats=(): real(target, model, shape,
                                                                            [x * 1000 for x in calib], floats))
    out = tmp_path / "bad"
    with pytest.raises(CompressorError, match="int8 on executorch loses"):
        export(student_dir, data=SYN, out=out, int8=True, target="onnx,executorch", runtime="onnxruntime",
               calibration_batches=2, stem="int8", activations="u8", per_channel=True, device="cpu")
    m = json.loads((out / "metrics.json").read_text())
    t = m["targets"]["executorch"]
    assert m["status"] == "failed" and t["accuracy_drop_points"] > m["accuracy_budget_points"]
    assert t["deploy_form"] == "fp32" and t["deploy_file"] == "model.pte"


def test_an_int8_program_the_converter_refuses_is_recorded_and_the_export_goes_on(student_dir, tmp_path, monkeypatch):
    pytest.importorskip("executorch", reason="the executorch extra: pip install 'compressor[executorch]'")
    from compressor.stages import export_stage

    def refuse(target, model, shape, calib, floats=()):
        raise RuntimeError("operator aten.frobnicate is not supported by this quantizer\nmore detail")

    monkeypatch.setattr(export_stage, "quantize_pt2e", refuse)
    out = tmp_path / "refused"
    m = export(student_dir, data=SYN, out=out, int8=True, target="onnx,executorch", runtime="onnxruntime",
               calibration_batches=2, stem="int8", activations="u8", per_channel=True, device="cpu")
    t = m["targets"]["executorch"]
    assert m["status"] == "ok" and t["forms"] == ["fp32"] and "frobnicate" in t["error_int8"]
    assert "\n" not in t["error_int8"] and not (out / "model.int8.pte").exists() and (out / "model.pte").is_file()
    assert t["deploy_form"] == "fp32"


def test_an_int8_program_over_the_budget_is_written_again_with_its_gates_in_float(student_dir, tmp_path, monkeypatch):
    pytest.importorskip("executorch", reason="the executorch extra: pip install 'compressor[executorch]'")
    from compressor.stages import export_stage

    real = phones.quantize_pt2e

    def quantize(target, model, shape, calib, floats=()):  # every layer int8: ranges 1000x too bright; gates float: right
        return real(target, model, shape, calib if floats else [x * 1000 for x in calib], floats)

    monkeypatch.setattr(export_stage, "quantize_pt2e", quantize)
    monkeypatch.setattr(export_stage, "gate_types", lambda model: (nn.ReLU,))  # the test student has no gates
    out = tmp_path / "gates"
    m = export(student_dir, data=SYN, out=out, int8=True, target="onnx,executorch", runtime="onnxruntime",
               calibration_batches=2, stem="int8", activations="u8", per_channel=True, device="cpu")
    t, budget = m["targets"]["executorch"], m["accuracy_budget_points"]
    assert m["status"] == "ok" and t["int8_form"] == "squeeze-excitation gates in float32"
    first, second = t["int8_candidates"]
    assert first["form"] == "all layers" and 100 * (t["accuracy_fp32"] - first["accuracy"]) > budget
    assert second["accuracy"] == t["accuracy_int8"] and t["accuracy_drop_points"] <= budget
    assert sorted(p.name for p in out.glob("*.pte")) == ["model.int8.pte", "model.pte"]  # the first try removed
    assert t["deploy_form"] in ("fp32", "int8")


def test_gates_are_found_in_the_families_that_have_them():
    import timm

    assert [t.__name__ for t in phones.gate_types(timm.create_model("mobilenetv3_small_050"))] == ["SqueezeExcite"]
    assert [t.__name__ for t in phones.gate_types(timm.create_model("efficientnet_b0"))] == ["SqueezeExcite"]
    assert phones.gate_types(timm.create_model("resnet18")) == ()
