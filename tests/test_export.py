"""compressor.deploy and the export stage: ONNX checked against PyTorch, int8 QDQ, the --max-drop
gate, fp16, and the fp32-stem rewrite."""

import json
from pathlib import Path

import numpy as np
import pytest

from compressor import CompressorError
from compressor.artifacts import load_artifact
from compressor.deploy.graph import convs_wrapped_in_qdq
from compressor.models import create_model
from compressor.stages import evaluate, export

from helpers import SYN


def _metrics(d):
    return json.loads((d / "metrics.json").read_text())


def test_export_int8_verified(workdir, student_dir):
    out = workdir / "export"
    m = export(student_dir, data=SYN, out=out, int8=True, calibration_batches=4, device="cpu")
    for k in ("accuracy_fp32", "accuracy_int8", "latency_ms_fp32", "latency_ms_int8", "size_bytes_fp32",
              "size_bytes_int8", "zipped_bytes_fp32", "zipped_bytes_int8"):
        assert k in m
    assert m["max_abs_diff_fp32"] < 1e-3
    assert convs_wrapped_in_qdq(out / "model.int8.onnx", skip=m["fp32_nodes"]) and m["convs_wrapped_in_qdq"]
    forms = m["int8_candidates"]  # every open choice measured: 2 stems x 2 activation types x 2 weight scalings,
    assert len(forms) == 9 and sum(bool(f.get("chosen")) for f in forms) == 1  # and quantize's scheme, calibrated
    assert forms[-1]["quantizer"] == "layers" and forms[-1]["calibration_accuracy"] is None or forms[-1]["drop_points"] is not None
    chosen = next(f for f in forms if f.get("chosen"))
    assert chosen["within_drop"] and m["int8_form"] == {k: chosen[k] for k in ("stem", "activations", "per_channel", "quantizer")}
    assert chosen["latency_ms"] <= 1.03 * min(f["latency_ms"] for f in forms if f["within_drop"])
    assert m["size_bytes_int8"] < m["size_bytes_fp32"]
    import onnx

    onnx.checker.check_model(str(out / "model.int8.onnx"))
    again = evaluate(out / "model.onnx", data=SYN)
    assert again["accuracy"] == pytest.approx(m["accuracy_fp32"])


def test_export_max_drop_gate_marks_failed(workdir, student_dir, monkeypatch):
    """A badly calibrated int8 model (inputs x1000 during calibration) must trip the CI gate."""
    from compressor.deploy import choice

    from compressor.stages import export_stage as stage_module
    real = choice.choose_int8_form
    monkeypatch.setattr(stage_module, "choose_int8_form",
                        lambda f, q, calib, **kw: real(f, q, [(x * 1000, y) for x, y in calib], **kw))
    out = workdir / "export-gated"
    with pytest.raises(CompressorError, match="max-drop"):
        export(student_dir, data=SYN, out=out, int8=True, calibration_batches=2, max_drop=1.0, device="cpu")
    m = _metrics(out)
    assert m["status"] == "failed" and m["accuracy_drop_points"] > 1.0 and "max-drop" in m["failure"]


@pytest.mark.slow
def test_export_options_fp16_per_tensor_entropy(workdir, student_dir):
    out = workdir / "export-options"
    m = export(student_dir, data=SYN, out=out, int8=True, fp16=True, per_channel=False, calibration_method="entropy",
               calibration_batches=2, device="cpu")
    for kind in ("fp32", "int8", "fp16"):
        assert (out / {"fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}[kind]).is_file()
        for key in ("accuracy", "latency_ms", "latency_ms_{}_batch1", "max_abs_diff", "max_abs_diff_{}_batch1",
                    "zipped_bytes"):
            name = key.format(kind) if "{}" in key else f"{key}_{kind}"
            assert name in m, name
    assert m["max_abs_diff_fp16"] < 0.05 and m["per_channel"] is False and m["calibration_method"] == "entropy"
    assert evaluate(out / "model.int8.onnx", data=SYN)["accuracy"] == pytest.approx(m["accuracy_int8"])
    # the agreement recorded is the one the two files give on the test split
    from compressor.config import ExportConfig
    from compressor.deploy.runtimes import predict_batches, session
    from compressor.stages.common import load_bundle

    art = load_artifact(student_dir)
    cfg = ExportConfig.make(model_dir=str(student_dir), data=SYN, out=str(out))
    test = list(load_bundle(cfg, art.spec).loader("test", 256))
    fp32, _ = predict_batches(session(out / "model.onnx"), test)
    int8, _ = predict_batches(session(out / "model.int8.onnx"), test)
    assert m["agreement_fp32_int8"] == pytest.approx(float((fp32.argmax(1) == int8.argmax(1)).mean()))


@pytest.mark.slow
def test_fp32_stem_rewrite_keeps_outputs_and_leaves_the_rest_int8(workdir, student_dir, tmp_path):
    import onnx

    from compressor.deploy.graph import export_onnx, fp32_stem
    from compressor.deploy.runtimes import session

    model = load_artifact(student_dir).model
    export_onnx(model, tmp_path / "m.onnx", [3, 16, 16])
    g = onnx.load(str(tmp_path / "m.onnx"))
    names = fp32_stem(g)
    assert len(names) == 2 and [n.op_type for n in g.graph.node[:3]] == ["Conv", "MaxPool", "Relu"]
    onnx.checker.check_model(g)
    onnx.save(g, str(tmp_path / "swapped.onnx"))
    x = np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)
    a = session(tmp_path / "m.onnx")(x)
    b = session(tmp_path / "swapped.onnx")(x)
    assert np.allclose(a, b, atol=1e-5)  # max-pooling commutes with ReLU: same function
    wide = create_model("convverytiny", num_classes=10, in_chans=8).eval()
    export_onnx(wide, tmp_path / "wide.onnx", [8, 16, 16])
    assert fp32_stem(onnx.load(str(tmp_path / "wide.onnx"))) == []  # an 8-channel input is left to int8

    m = export(student_dir, data=SYN, out=workdir / "export-stem", int8=True, stem="fp32", device="cpu")
    assert m["fp32_nodes"] == names and m["convs_wrapped_in_qdq"]
    assert abs(m["accuracy_int8"] - m["accuracy_fp32"]) < 0.03 and m["agreement_fp32_int8"] > 0.9
    q = onnx.load(str(workdir / "export-stem" / "model.int8.onnx")).graph
    producers = {o: n for n in q.node for o in n.output}
    convs = [n for n in q.node if n.op_type == "Conv"]
    stem = [c for c in convs if c.name == names[0]]
    assert stem and producers.get(stem[0].input[0]) is None  # the stem reads the float input directly
    assert all(producers[c.input[0]].op_type == "DequantizeLinear" for c in convs if c.name != names[0])


@pytest.mark.slow
def test_min_speedup_gate_fails_in_one_line_and_keeps_the_artifact(workdir, student_dir, tmp_path):
    from helpers import cli, one_line_error

    out = tmp_path / "slow"
    line = one_line_error(cli("export", student_dir, "--data", "synthetic", "--int8", "--calibration-batches", "2",
                              "--min-speedup", "10", "--device", "cpu", "--out", out), "--min-speedup 10")
    assert "as fast as fp32" in line and "marked failed" in line
    m = _metrics(out)
    assert m["status"] == "failed" and m["speedup_int8"] < 10 and m["min_speedup"] == 10
    one_line_error(cli("export", student_dir, "--data", "synthetic", "--min-speedup", "2", "--out", tmp_path / "x"),
                   "--min-speedup applies to the int8 model")


@pytest.mark.slow
def test_runtime_all_writes_openvino_ir_and_measures_both(workdir, student_dir, tmp_path):
    """--runtime all: the IR beside the ONNX files, each runtime's accuracy and latency, the same
    accuracy on both; eval and report read the IR."""
    pytest.importorskip("openvino", reason="pip install -e '.[openvino]' (CI installs it)")
    from compressor.deploy.int8 import nncf_available
    from compressor.report import summary_rows

    from helpers import cli

    run_dir = tmp_path / "run"
    out = run_dir / "export"
    res = cli("export", student_dir, "--data", "synthetic", "--int8", "--runtime", "all", "--calibration-batches", "2",
              "--device", "cpu", "--out", out)
    assert res.exit_code == 0, res.output
    assert "int8 ms (onnxruntime)" in res.output and "int8 ms (openvino)" in res.output
    for name in ("model.onnx", "model.int8.onnx", "model.xml", "model.bin", "model.int8.xml", "model.int8.bin"):
        assert (out / name).is_file(), name
    m = _metrics(out)
    ort, ov = m["runtimes"]["onnxruntime"], m["runtimes"]["openvino"]
    assert abs(ort["accuracy_fp32"] - ov["accuracy_fp32"]) <= 0.003  # one file; int8: each runtime's own form
    assert abs(ort["accuracy_int8"] - ort["accuracy_fp32"]) <= 0.02 and abs(ov["accuracy_int8"] - ov["accuracy_fp32"]) <= 0.02
    for kind in ("fp32", "int8"):
        # OpenVINO runs float32 layers in bfloat16 on CPUs with AMX/AVX-512-BF16 unless told otherwise; recorded
        bf16 = ov[f"inference_precision_{kind}"] == "bf16"
        assert ov[f"latency_ms_{kind}"] > 0 and ov[f"max_abs_diff_{kind}"] < (1e-3 if kind == "fp32" and not bf16 else 1.0)
    assert m["fastest_runtime_int8"] in ("onnxruntime", "openvino") and m["runtime"] == "onnxruntime"
    assert m["latency_ms_int8"] == ort["latency_ms_int8"]  # the flat figures are the first runtime's
    assert m["int8_form"] == ort["int8_form"] and ov["int8_form"] and len(ort["int8_candidates"]) == 9
    # OpenVINO's candidates: the same nine QDQ files, and NNCF's own quantization where it is installed
    assert [c["quantizer"] for c in ov["int8_candidates"]] == ["onnxruntime"] * 8 + ["layers"] + ["nncf"] * nncf_available()
    assert "int8 form (openvino)" in res.output
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # OpenVINO's int8 ONNX: gone once its IR is
    assert evaluate(out / "model.int8.xml", data=SYN)["accuracy"] == pytest.approx(ov["accuracy_int8"])
    rows = summary_rows(run_dir)
    assert [r["stage"] for r in rows] == ["export (onnxruntime)", "export (openvino)"]
    assert [r["deploy_form"] for r in rows] == [ort["deploy_form"], ov["deploy_form"]]  # "deploy ..." in the notes


def test_openvino_missing_is_one_line(student_dir, tmp_path, monkeypatch):
    from helpers import cli, one_line_error

    from compressor.stages import export_stage as stage_module
    monkeypatch.setattr(stage_module, "openvino_available", lambda: False)
    one_line_error(cli("export", student_dir, "--data", "synthetic", "--runtime", "openvino", "--out",
                       tmp_path / "ov"), "pip install 'compressor[openvino]'")
    assert not (tmp_path / "ov").exists()
    m = export(student_dir, data=SYN, out=tmp_path / "auto", device="cpu")  # auto: onnxruntime alone
    assert list(m["runtimes"]) == ["onnxruntime"]


def test_eval_of_an_unreadable_or_foreign_model_file_is_one_line(student_dir, tmp_path):
    """A damaged ONNX, an IR without its .bin, a file of another model than the model.json beside it:
    one error line each, not a runtime's traceback."""
    import shutil

    from compressor.deploy.graph import export_onnx
    from compressor.deploy.runtimes import openvino_available, save_openvino_ir

    from helpers import cli, one_line_error

    spec = json.loads((student_dir / "model.json").read_text())
    shutil.copy(student_dir / "model.json", tmp_path / "model.json")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    one_line_error(cli("eval", tmp_path / "bad.onnx", "--data", SYN), "onnxruntime cannot load")
    export_onnx(load_artifact(student_dir).model, tmp_path / "model.onnx", spec["input_shape"])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    shutil.copy(tmp_path / "model.onnx", foreign / "model.onnx")
    c, h, w = spec["input_shape"]
    (foreign / "model.json").write_text(json.dumps({**spec, "input_shape": [c, 2 * h, 2 * w]}))
    one_line_error(cli("eval", foreign / "model.onnx", "--data", SYN), "not of one model")
    if openvino_available():
        save_openvino_ir(tmp_path / "model.onnx", tmp_path / "model.xml")
        (tmp_path / "model.bin").unlink()
        one_line_error(cli("eval", tmp_path / "model.xml", "--data", SYN), "openvino cannot load")


def test_spatial_means_become_average_pools_with_the_same_outputs(tmp_path):
    """A global pool and squeeze-and-excitation means (ReduceMean over H, W, kept or not) are exported as
    AveragePool over the whole image (OpenVINO runs ReduceMean 10-20x slower); a mean over channels stays."""
    import onnx
    import torch
    import torch.nn as nn

    from compressor.deploy.graph import export_onnx
    from compressor.deploy.runtimes import session

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(1)

        def forward(self, x):
            x = self.conv(x)
            x = x * torch.sigmoid(x.mean((2, 3), keepdim=True))  # squeeze-and-excitation's squeeze
            x = x + x.mean(1, keepdim=True)  # over channels: not a spatial mean
            return torch.cat([self.pool(x).flatten(1), x.mean((-2, -1))], 1)

    torch.manual_seed(0)
    net = Net().eval()
    export_onnx(net, tmp_path / "m.onnx", [3, 12, 10])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert "GlobalAveragePool" not in ops and ops.count("AveragePool") == 3 and ops.count("ReduceMean") == 1
    x = torch.randn(5, 3, 12, 10)
    with torch.no_grad():
        ref = net(x).numpy()
    assert np.abs(session(tmp_path / "m.onnx")(x.numpy()) - ref).max() < 1e-5


def test_each_runtime_gets_the_int8_form_fastest_on_it(tmp_path, student_dir, monkeypatch):
    """With latencies that favour the float32 stem on onnxruntime and the int8 stem on OpenVINO, each
    runtime's file is quantized in its own form, and every candidate is recorded per runtime."""
    pytest.importorskip("openvino", reason="pip install -e '.[openvino]' (CI installs it)")
    import onnx

    from compressor.deploy import choice, graph

    def fp32_stem_kept(path) -> bool:
        g = onnx.load(str(path)).graph
        conv = next(n for n in g.node if n.op_type == "Conv")
        return conv.input[0] in {i.name for i in g.input}

    real_session = choice.session

    def tagged_session(path, threads=None, runtime=None, precision="fp32", static=True):
        sess = real_session(path, threads, runtime, precision, static)
        sess.path = path
        return sess

    monkeypatch.setattr(choice, "session", tagged_session)
    monkeypatch.setattr(choice, "pass_times", lambda sess, *a, **k: np.array([1.0 if fp32_stem_kept(sess.path) == (
        sess.runtime == "onnxruntime") else 2.0]))
    graph.export_onnx(load_artifact(student_dir).model, tmp_path / "m.onnx", [3, 16, 16])
    rng = np.random.default_rng(0)
    calib = [(rng.standard_normal((16, 3, 16, 16)).astype(np.float32), rng.integers(0, 10, 16)) for _ in range(2)]
    outputs = {"onnxruntime": tmp_path / "ort.onnx", "openvino": tmp_path / "ov.onnx"}
    choices = choice.choose_int8_form(tmp_path / "m.onnx", outputs, calib, max_drop=100.0)
    assert choices["onnxruntime"].form.stem == "fp32" and choices["openvino"].form.stem == "int8"
    assert fp32_stem_kept(outputs["onnxruntime"]) and not fp32_stem_kept(outputs["openvino"])
    for rt, c in choices.items():
        assert c.path == outputs[rt] and len(c.candidates) == 8
        chosen = [r for r in c.candidates if r.get("chosen")]
        assert len(chosen) == 1 and chosen[0]["stem"] == c.form.stem and chosen[0]["latency_ms"] == 1.0


def test_forms_of_one_stem_share_one_calibration(tmp_path, student_dir):
    """The activation ranges are measured once per stem and read back for the other forms: the same
    file as calibrating again, and the second form's calibration images are not read."""

    from compressor.deploy import graph, int8

    if not int8.has_calibration_cache():
        pytest.skip("this onnxruntime's quantize_static has no calibration_cache_path")
    graph.export_onnx(load_artifact(student_dir).model, tmp_path / "m.onnx", [3, 16, 16])
    pre = int8.preprocess(tmp_path / "m.onnx", tmp_path)
    xs = [np.random.default_rng(i).standard_normal((16, 3, 16, 16)).astype(np.float32) for i in range(2)]
    wild = [x * 1000 for x in xs]  # would give other ranges, were they measured
    form, other = int8.Int8Form("int8", "u8", True), int8.Int8Form("int8", "s8", False)
    ranges = tmp_path / "ranges.json"
    int8.quantize_preprocessed(pre, tmp_path / "cached-u8.onnx", xs, form, "minmax", ranges=ranges)
    assert ranges.is_file()
    int8.quantize_preprocessed(pre, tmp_path / "cached-s8.onnx", wild, other, "minmax", ranges=ranges)
    int8.quantize_preprocessed(pre, tmp_path / "fresh-s8.onnx", xs, other, "minmax")
    int8.quantize_preprocessed(pre, tmp_path / "wild-s8.onnx", wild, other, "minmax")
    data = {p: (tmp_path / p).read_bytes() for p in ("cached-s8.onnx", "fresh-s8.onnx", "wild-s8.onnx")}
    assert data["cached-s8.onnx"] == data["fresh-s8.onnx"] != data["wild-s8.onnx"]


def _candidate_number(path):
    """The number of a temporary candidate file (candidate3.onnx: 3); None for any other file."""
    return int(path.stem[len("candidate"):]) if path.stem.startswith("candidate") else None


def _labelled_calibration(student_dir, onnx_path) -> list:
    """The student's fp32 ONNX file at `onnx_path` and two calibration batches of 16 random images,
    each with its label written in its first pixel (for fake sessions that read it back)."""

    from compressor.deploy import graph

    graph.export_onnx(load_artifact(student_dir).model, onnx_path, [3, 16, 16])
    rng = np.random.default_rng(0)
    calib = []
    for _ in range(2):
        y = rng.integers(0, 10, 16)
        x = rng.standard_normal((16, 3, 16, 16)).astype(np.float32)
        x[:, 0, 0, 0] = y
        calib.append((x, y))
    return calib


def test_what_cannot_change_the_int8_choice_is_not_measured(tmp_path, student_dir, monkeypatch):
    """A form far slower than the fastest in the first round is timed once; accuracy is scored from
    the fastest form on, up to the fastest within --max-drop and the forms within TIE of it. The
    choice is the one scoring every form would give."""
    from pathlib import Path


    from compressor.deploy import choice, runtimes

    latency = {0: 5.0, 1: 1.0, 2: 1.02, 3: 3.0, 4: 1.2, 5: 1.01, 6: 1.5, 7: 2.0}  # by candidate number
    wrong: set[int] = {1}  # candidate 1, the fastest, misclassifies everything
    scored = []

    class Fake(runtimes.Session):  # the label of each calibration image is written in its first pixel
        def __init__(self, path, threads=None, runtime=None):
            self.path, self.runtime = Path(path), runtime or "onnxruntime"
            self.i = _candidate_number(self.path)

        def __call__(self, x):
            if self.i is not None:
                scored.append(self.i)
            y = x[:, 0, 0, 0].astype(int)
            return np.eye(10, dtype=np.float32)[(y + (self.i in wrong)) % 10]

        def input_shape(self):
            return [3, 16, 16]

    monkeypatch.setattr(choice, "session", Fake)
    monkeypatch.setattr(choice, "pass_times", lambda sess, *a, **k: np.array([latency[sess.i]]))
    calib = _labelled_calibration(student_dir, tmp_path / "m.onnx")
    rows = choice.choose_int8_form(tmp_path / "m.onnx", {"onnxruntime": tmp_path / "q.onnx"}, calib,
                               max_drop=1.0)["onnxruntime"].candidates
    assert [r["latency_rounds"] for r in rows] == [1, 3, 3, 1, 3, 3, 3, 1]  # 5.0, 3.0, 2.0 > 1.5 x 1.0
    assert sorted(set(scored)) == [1, 2, 5]  # 1 (out of the drop), 5 (the fastest within), 2 (within TIE of 5)
    assert [r["calibration_accuracy"] is None for r in rows] == [True, False, False, True, True, False, True, True]
    assert [i for i, r in enumerate(rows) if r.get("chosen")] == [2]  # within TIE of 5 and listed first
    wrong.update(range(8))
    scored.clear()
    rows = choice.choose_int8_form(tmp_path / "m.onnx", {"onnxruntime": tmp_path / "q.onnx"}, calib,
                               max_drop=1.0)["onnxruntime"].candidates
    assert sorted(set(scored)) == list(range(8)) and not any(r["within_drop"] for r in rows)  # none within: all scored
    assert rows[0].get("chosen")  # all equally wrong: the most accurate listed first


def test_a_form_openvino_computes_wrongly_as_read_is_not_chosen(tmp_path, student_dir, monkeypatch):
    """OpenVINO can compute an int8 file right with static shapes and wrongly one image at a time in
    the file as read (its batch dynamic: NNCF's EfficientNet-B0 at chance there). Simulated: the
    fastest form is right in batches and wrong one at a time as read; it is scored by the lower, so
    the next fastest within the drop is chosen."""
    pytest.importorskip("openvino", reason="pip install -e '.[openvino]' (CI installs it)")
    from pathlib import Path


    from compressor.deploy import choice, runtimes

    latency = {0: 2.0, 1: 1.0, 2: 1.5, 3: 3.0, 4: 2.5, 5: 2.6, 6: 2.7, 7: 2.8}  # by candidate number

    class Fake(runtimes.Session):  # the label of each calibration image is written in its first pixel
        runtime = "openvino"

        def __init__(self, path, threads=None, runtime=None, precision="fp32", static=True):
            self.path, self.static = Path(path), static
            self.i = _candidate_number(self.path)

        def __call__(self, x):
            y = x[:, 0, 0, 0].astype(int)
            wrong = self.i == 1 and not self.static and len(x) == 1
            return np.eye(10, dtype=np.float32)[(y + wrong) % 10]

        def input_shape(self):
            return [3, 16, 16]

    monkeypatch.setattr(choice, "session", Fake)
    monkeypatch.setattr(choice, "nncf_available", lambda: False)
    monkeypatch.setattr(choice, "pass_times", lambda sess, *a, **k: np.array([latency[sess.i]]))
    calib = _labelled_calibration(student_dir, tmp_path / "m.onnx")
    rows = choice.choose_int8_form(tmp_path / "m.onnx", {"openvino": tmp_path / "q.xml"}, calib,
                                   max_drop=1.0)["openvino"].candidates
    assert rows[1]["calibration_accuracy_batch1_dynamic"] == 0.0 and rows[1]["calibration_accuracy"] == 0.0
    assert not rows[1]["within_drop"] and not rows[1].get("chosen")
    assert rows[2].get("chosen") and rows[2]["calibration_accuracy"] == rows[2]["calibration_accuracy_batch1_dynamic"] == 1.0
    assert (tmp_path / "q.xml").is_file()


def _activations_of(path) -> str:
    """'s8' when the QDQ model's activations are int8, 'u8' when uint8."""
    import onnx

    g = onnx.load(str(path)).graph
    inits = {t.name: t for t in g.initializer}
    zp = next(inits[n.input[2]] for n in g.node if n.op_type == "QuantizeLinear" and len(n.input) > 2)
    return "s8" if zp.data_type == onnx.TensorProto.INT8 else "u8"


def _refuse_on_openvino(monkeypatch, refused) -> None:
    """OpenVINO refuses to compile the int8 files `refused(path)` names, as it does s8 activations on
    an AMX-INT8 Xeon ("No suitable implementations"): simulated on any CPU."""
    from compressor.deploy import choice

    real = choice.session

    def picky(path, threads=None, runtime=None, precision="fp32", static=True):
        if runtime == "openvino" and refused(path):
            raise CompressorError(f"openvino cannot load {path}: No suitable implementations. This may indicate "
                                  "that the provided memory descriptors are not compatible with any implementation.")
        return real(path, threads, runtime, precision, static)

    monkeypatch.setattr(choice, "session", picky)


def test_a_form_a_runtime_refuses_is_recorded_and_skipped(student_dir, tmp_path, monkeypatch):
    """OpenVINO refusing the s8 forms ends neither the export nor the run: the refused candidates are
    listed with their error, OpenVINO's file is one of the forms it runs."""
    pytest.importorskip("openvino", reason="pip install -e '.[openvino]' (CI installs it)")
    _refuse_on_openvino(monkeypatch, lambda path: Path(path).name.startswith("candidate") and Path(path).suffix == ".onnx"
                        and _activations_of(path) == "s8")
    m = export(student_dir, data=SYN, out=tmp_path / "e", int8=True, runtime="all", calibration_batches=2,
               device="cpu")
    ov, ort = m["runtimes"]["openvino"], m["runtimes"]["onnxruntime"]
    refused = [c for c in ov["int8_candidates"] if "error" in c]
    assert len(refused) == 4 and all(c["activations"] == "s8" and "No suitable implementations" in c["error"]
                                     and c["latency_ms"] is None and not c.get("chosen") for c in refused)
    assert "candidate" not in refused[0]["error"]  # the reason, not the temporary file's name
    assert ov["int8_form"]["activations"] != "s8" and "4 refused by openvino" in ov["int8_choice"]
    assert not any("error" in c for c in ort["int8_candidates"]) and "int8" in ov["forms"]
    assert (tmp_path / "e" / "model.int8.xml").is_file() and m["status"] == "ok"


@pytest.mark.slow
def test_a_runtime_that_runs_no_int8_form_is_recorded_and_the_export_goes_on(student_dir, tmp_path, monkeypatch):
    pytest.importorskip("openvino", reason="pip install -e '.[openvino]' (CI installs it)")
    from helpers import cli, one_line_error

    _refuse_on_openvino(monkeypatch, lambda path: Path(path).name.startswith("candidate"))  # NNCF's too
    m = export(student_dir, data=SYN, out=tmp_path / "e", int8=True, runtime="all", calibration_batches=2,
               device="cpu")
    ov = m["runtimes"]["openvino"]
    assert ov["int8_form"] is None and "openvino runs none of the" in ov["error_int8"]
    assert "int8" not in ov["forms"] and ov["deploy_form"] in ov["forms"] and m["status"] == "ok"
    assert not (tmp_path / "e" / "model.int8.xml").exists() and (tmp_path / "e" / "model.int8.onnx").is_file()
    # what the user asked for runs nowhere: one line
    one_line_error(cli("export", student_dir, "--data", "synthetic", "--int8", "--runtime", "openvino",
                       "--calibration-batches", "2", "--device", "cpu", "--out", tmp_path / "ov"),
                   "openvino runs none of the")
    one_line_error(cli("export", student_dir, "--data", "synthetic", "--int8", "--runtime", "openvino", "--activations",
                       "s8", "--stem", "int8", "--per-channel", "--calibration-batches", "2", "--device", "cpu",
                       "--out", tmp_path / "ov1"), "No suitable implementations")


def test_openvino_fp32_is_float32_and_reduced_floats_are_forms_of_their_own(student_dir, tmp_path, monkeypatch):
    """fp32 on OpenVINO is float32 (its CPU plugin would run bf16 on an AMX/AVX-512-BF16 CPU); the bf16
    and fp16 forms the runtime reports are measured beside it, each with its accuracy and latency;
    on a CPU whose runtime reports none (simulated), only fp32 is."""
    pytest.importorskip("openvino", reason="pip install -e '.[openvino]' (CI installs it)")
    from compressor.deploy.runtimes import reduced_float_forms

    from compressor.stages import export_stage as stage_module
    m = export(student_dir, data=SYN, out=tmp_path / "e", runtime="openvino", device="cpu")
    ov = m["runtimes"]["openvino"]
    assert ov["max_abs_diff_fp32"] <= 1e-4 and ov["max_abs_diff_fp32_batch1"] <= 1e-4
    assert ov["inference_precision_fp32"] == "f32"
    reported = reduced_float_forms("openvino")
    assert ov["forms"] == ["fp32", *reported]
    for form in reported:
        # the fp32 file run in bf16/fp16: a few test images may flip, not more
        assert abs(ov[f"accuracy_{form}"] - ov["accuracy_fp32"]) <= 0.02 and ov[f"latency_ms_{form}"] > 0
        assert ov[f"inference_precision_{form}"] == {"bf16": "bf16", "fp16": "f16"}[form]
    assert ov["deploy_form"] in ov["forms"] and (tmp_path / "e" / ov["deploy_file"].split()[0]).is_file()
    monkeypatch.setattr(stage_module, "reduced_float_forms", lambda runtime: [])  # a CPU without bf16/fp16 units
    m = export(student_dir, data=SYN, out=tmp_path / "plain", runtime="openvino", device="cpu")
    assert m["runtimes"]["openvino"]["forms"] == ["fp32"] and m["deploy_form"] == "fp32"
    assert "accuracy_bf16" not in m


def test_reduced_float_forms_are_what_the_runtime_reports(monkeypatch):
    pytest.importorskip("openvino", reason="pip install -e '.[openvino]' (CI installs it)")
    import openvino

    from compressor.deploy.runtimes import reduced_float_forms

    for caps, forms in ((["FP32", "INT8"], []), (["BF16", "FP32", "INT8"], ["bf16"]),
                        (["BF16", "FP32", "FP16", "INT8"], ["bf16", "fp16"])):
        monkeypatch.setattr(openvino.Core, "get_property", lambda self, dev, key, caps=caps: caps)
        assert reduced_float_forms("openvino") == forms
    assert reduced_float_forms("onnxruntime") == []


def test_int8_that_loses_more_than_the_budget_fails_by_default(workdir, student_dir, tmp_path, monkeypatch):
    """With --max-drop unset, an int8 model more than 1 point below fp32 is a failed export: exit 1, one
    line naming the drop and what to try, the artifact kept and marked failed."""
    from compressor.deploy import choice

    from helpers import cli, one_line_error

    from compressor.stages import export_stage as stage_module
    real = choice.choose_int8_form
    monkeypatch.setattr(stage_module, "choose_int8_form",
                        lambda f, q, calib, **kw: real(f, q, [(x * 1000, y) for x, y in calib], **kw))
    out = tmp_path / "broken"
    line = one_line_error(cli("export", student_dir, "--data", "synthetic", "--int8", "--runtime", "onnxruntime",
                              "--calibration-batches", "2", "--device", "cpu", "--out", out), "accuracy points")
    assert "--max-drop unset" in line and "try --calibration-method" in line and "marked failed" in line
    assert "run compress quantize" in line  # the escalation: quantization-aware training recovers it
    m = _metrics(out)
    assert m["status"] == "failed" and m["accuracy_drop_points"] > 1.0 and m["max_drop"] is None
    assert m["deploy_form"] == "fp32" and (out / "model.int8.onnx").is_file()


def _report_latencies(monkeypatch, ms_of_file) -> None:
    """Export measures every latency as usual, then reports ms_of_file(the file's name) instead."""
    from compressor.deploy import runtimes
    from compressor.stages import export_stage as stage_module
    real = runtimes.latency_ms

    def reported(sess, *a, **k):
        real(sess, *a, **k)
        return ms_of_file(sess.path.name)

    monkeypatch.setattr(stage_module, "latency_ms", reported)  # at batch 1
    monkeypatch.setattr(runtimes, "latency_ms", reported)  # at --latency-batch, the forms in turn (interleaved_ms)


def test_int8_slower_than_fp32_prints_one_warning_line(student_dir, tmp_path, monkeypatch):
    from helpers import cli

    _report_latencies(monkeypatch, lambda name: 9.0 if "int8" in name else 3.0)
    res = cli("export", student_dir, "--data", "synthetic", "--int8", "--runtime", "onnxruntime",
              "--calibration-batches", "2", "--device", "cpu", "--out", tmp_path / "slow")
    assert res.exit_code == 0, res.output
    warned = [ln for ln in res.output.splitlines() if ln.startswith("warning:")]
    assert len(warned) == 1 and "int8 on onnxruntime is not faster than fp32 (9.00 vs 3.00 ms" in warned[0]
    assert "ship fp32 (model.onnx, 3.00 ms" in warned[0]
    assert _metrics(tmp_path / "slow")["deploy_form"] == "fp32"


def test_forms_that_time_within_a_tie_ship_the_more_precise_one(student_dir, tmp_path, monkeypatch):
    """int8 times 2 % faster than fp32 at batch 64, closer than the timings can order them: the export
    names fp32, the first listed, so one model names the same deploy form from one export to the next."""
    from compressor.deploy.choice import first_within_tie

    assert first_within_tie({"fp32": 1.0, "bf16": 0.99, "int8": 0.5}) == "int8"
    assert first_within_tie({"fp32": 1.0, "bf16": 0.99, "int8": 0.975}) == "fp32"
    assert first_within_tie({"fp32": 1.0, "bf16": 0.9, "int8": 0.88}) == "bf16"
    _report_latencies(monkeypatch, lambda name: 2.94 if "int8" in name else 3.0)
    m = export(student_dir, data=SYN, out=tmp_path / "e", int8=True, runtime="onnxruntime", calibration_batches=2,
               device="cpu", max_drop=100.0)
    assert m["latency_ms_int8"] < m["latency_ms_fp32"] and m["deploy_form"] == "fp32"


def test_the_forms_are_timed_in_turn_so_a_burst_does_not_choose_the_deploy_form(student_dir, tmp_path, monkeypatch):
    """A neighbour's burst slows the machine while one form is timed. Timed once each, one after the
    other, int8 (twice as fast as float32 here) would read slower and lose; timed in turn over rounds,
    each form's median leaves the burst out and int8 is the deploy form."""
    from compressor.deploy import runtimes
    from compressor.stages import export_stage as stage_module

    calls = []

    def reported(sess, shape, batch, *a, **k):
        calls.append(sess.path.name)
        burst = 4.0 if len(calls) == 2 else 1.0  # the second timing at batch 64 runs during a burst
        return (1.0 if "int8" in sess.path.name else 2.0) * burst

    monkeypatch.setattr(runtimes, "latency_ms", reported)  # the batch-64 timings; batch 1's are real
    m = export(student_dir, data=SYN, out=tmp_path / "e", int8=True, runtime="onnxruntime", calibration_batches=2,
               device="cpu")
    assert calls[:2] == ["model.onnx", "model.int8.onnx"] and len(calls) == 2 * stage_module.DEPLOY_ROUNDS
    assert m["latency_ms_fp32"] == 2.0 and m["latency_ms_int8"] == 1.0
    assert m["accuracy_drop_points"] <= 1.0 and m["deploy_form"] == "int8"


@pytest.mark.slow
def test_a_recipe_runs_to_its_end_where_openvino_refuses_some_int8_forms(tmp_path, monkeypatch):
    """The quickstart's shape (teach ... export --int8, OpenVINO installed) on a CPU whose OpenVINO refuses
    the s8 forms, as an AMX-INT8 Xeon's does: the run completes, the refusals are in metrics.json."""
    pytest.importorskip("openvino", reason="pip install -e '.[openvino]' (CI installs it)")
    import yaml

    from helpers import cli

    _refuse_on_openvino(monkeypatch, lambda path: Path(path).name.startswith("candidate") and Path(path).suffix == ".onnx"
                        and _activations_of(path) == "s8")
    recipe = {"name": "refused", "seed": 0, "device": "cpu", "data": {"name": "synthetic"},
              "stages": [{"teach": {"model": "convverytiny", "epochs": 1}},
                         {"export": {"int8": True, "calibration_batches": 2, "max_drop": 5.0}}]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    res = cli("run", tmp_path / "r.yaml", "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    ov = _metrics(tmp_path / "run" / "export")["runtimes"]["openvino"]
    assert sum("No suitable implementations" in c.get("error", "") for c in ov["int8_candidates"]) == 4
    assert f"deploy {ov['deploy_form']}" in res.output  # the run's summary names each runtime's deploy form


@pytest.mark.slow
def test_nncf_form_that_loses_on_the_test_split_falls_back_to_the_best_qdq_form(student_dir, tmp_path, monkeypatch):
    """NNCF's file is chosen on the calibration images (simulated: fastest there); where it then loses more
    than the budget on the test split (simulated), the best QDQ form is shipped instead, verified,
    and the switch recorded; no hidden file stays behind."""
    pytest.importorskip("openvino", reason="pip install -e '.[openvino]' (CI installs it)")
    from compressor.deploy import choice, int8

    if not int8.nncf_available():
        pytest.skip("pip install nncf (the openvino extra installs it)")
    from compressor.stages import export_stage as stage_module
    real_verify = stage_module._verify
    monkeypatch.setattr(choice, "pass_times",
                        lambda sess, *a, **k: np.array([1.0 if sess.path.suffix == ".xml" else 2.0]))
    calls = []

    def verify(runtime, kind, *a, **k):
        preds = real_verify(runtime, kind, *a, **k)
        if runtime == "openvino" and kind == "int8" and not calls:
            calls.append(kind)
            a[-1]["accuracy_int8"] = a[-1]["accuracy_fp32"] - 0.05  # NNCF's file: 5 points lost on the test split
        return preds

    monkeypatch.setattr(stage_module, "_verify", verify)
    out = tmp_path / "e"
    m = export(student_dir, data=SYN, out=out, int8=True, runtime="openvino", calibration_batches=2, device="cpu")
    assert m["int8_fallback"]["from"]["quantizer"] == "nncf" and m["int8_fallback"]["test_drop_points"] == 5.0
    assert m["int8_form"]["quantizer"] in ("onnxruntime", "layers") and "lost 5.00 points" in m["int8_choice"]
    chosen = [c for c in m["int8_candidates"] if c.get("chosen")]
    assert len(chosen) == 1 and chosen[0]["quantizer"] == m["int8_form"]["quantizer"]
    assert m["accuracy_int8"] > m["accuracy_fp32"] - 0.05 and m["status"] == "ok"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_nncf_form_stays_where_the_qdq_fallback_loses_more(student_dir, tmp_path, monkeypatch):
    """NNCF's file loses 5 points on the test split (simulated), the QDQ form 8 (simulated): NNCF's
    file, and its figures, are what is shipped; the rejected fallback is recorded."""
    pytest.importorskip("openvino", reason="pip install -e '.[openvino]' (CI installs it)")
    from compressor.deploy import choice, int8

    if not int8.nncf_available():
        pytest.skip("pip install nncf (the openvino extra installs it)")
    from compressor.stages import export_stage as stage_module
    real_verify = stage_module._verify
    monkeypatch.setattr(choice, "pass_times",
                        lambda sess, *a, **k: np.array([1.0 if sess.path.suffix == ".xml" else 2.0]))
    calls = []

    def verify(runtime, kind, *a, **k):
        preds = real_verify(runtime, kind, *a, **k)
        if runtime == "openvino" and kind == "int8":
            calls.append(kind)
            a[-1]["accuracy_int8"] = a[-1]["accuracy_fp32"] - (0.05 if len(calls) == 1 else 0.08)
        return preds

    monkeypatch.setattr(stage_module, "_verify", verify)
    out = tmp_path / "e"
    with pytest.raises(Exception, match="loses 5.00 accuracy points"):  # over the default budget: a failed export
        export(student_dir, data=SYN, out=out, int8=True, runtime="openvino", calibration_batches=2, device="cpu")
    m = _metrics(out)
    assert len(calls) == 2 and m["int8_form"]["quantizer"] == "nncf"
    assert m["int8_fallback"]["test_drop_points"] == 8.0 and "rejected" in m["int8_fallback"]
    assert round(100 * (m["accuracy_fp32"] - m["accuracy_int8"]), 2) == 5.0
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_a_reduced_float_file_on_onnxruntime_is_shipped_as_it_is(student_dir, tmp_path, monkeypatch):
    """--fp16 on onnxruntime: where model.fp16.onnx is the deploy form, it is named without OpenVINO's hint."""
    _report_latencies(monkeypatch, lambda name: 1.0 if "fp16" in name else 2.0)
    m = export(student_dir, data=SYN, out=tmp_path / "e", fp16=True, runtime="onnxruntime", device="cpu")
    assert m["deploy_form"] == "fp16" and m["deploy_file"] == "model.fp16.onnx"
