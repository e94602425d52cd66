"""Students that start where users start (--student-init, --student-pretrained), Hinton's transfer to
classes absent from the transfer set (--omit-classes, --bias-shift), and the teacher assistant."""

import json

import pytest
import torch

from compressor import CompressorError
from compressor.artifacts import load_artifact
from compressor.stages import distill

from helpers import SYN, cli


def test_student_init_starts_from_those_weights(teacher_dir, student_dir, tmp_path):
    """Zero epochs from a distilled student's weights give that student's accuracy, bit for bit."""
    m = distill(teacher=teacher_dir, student="convverytiny", data=SYN, epochs=0, device="cpu",
                student_init=str(student_dir / "model.safetensors"), out=tmp_path / "s")
    assert m["accuracy"] == json.loads((student_dir / "metrics.json").read_text())["accuracy"]
    a, b = load_artifact(tmp_path / "s").model.state_dict(), load_artifact(student_dir).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert load_artifact(tmp_path / "s", with_model=False).spec.lineage[-1]["settings"]["student_init"].endswith(
        "model.safetensors")


def test_student_init_with_another_head_needs_reinit_head(teacher_dir, student_dir, tmp_path):
    state = load_artifact(student_dir).model.state_dict()
    state["fc.weight"], state["fc.bias"] = torch.zeros(5, state["fc.weight"].shape[1]), torch.zeros(5)
    from safetensors.torch import save_file

    save_file(state, tmp_path / "five.safetensors")
    res = cli("distill", "--teacher", teacher_dir, "--student", "convverytiny", "--data", SYN, "--epochs", "0",
              "--student-init", tmp_path / "five.safetensors", "--out", tmp_path / "x")
    assert res.exit_code != 0 and "has a 5-class head" in res.output and "--reinit-head" in res.output
    m = distill(teacher=teacher_dir, student="convverytiny", data=SYN, epochs=0, device="cpu",
                student_init=str(tmp_path / "five.safetensors"), reinit_head=True, out=tmp_path / "y")
    kept = load_artifact(tmp_path / "y").model.state_dict()
    assert torch.equal(kept["blocks.0.0.weight"], state["blocks.0.0.weight"])
    assert kept["fc.weight"].shape[0] == 10 and m["accuracy"] >= 0


@pytest.mark.parametrize("bad, needle", [({"student_pretrained": True, "student_init": "w.safetensors"}, "either"),
                                         ({"reinit_head": True}, "--student-init too"),
                                         ({"bias_shift": True}, "pass it too"),
                                         ({"omit_classes": "3,x"}, "class indices"),
                                         ({"scheme": "assistant"}, "needs --assistant"),
                                         ({"assistant": "convtiny"}, "--scheme assistant only")])
def test_the_new_options_refuse_impossible_combinations(teacher_dir, tmp_path, bad, needle):
    with pytest.raises(CompressorError, match=needle):
        distill(teacher=teacher_dir, student="convverytiny", data=SYN, out=tmp_path / "o", **bad)


def test_omitted_classes_are_learned_from_the_teacher_after_the_bias_shift(teacher_dir, tmp_path):
    """The transfer set holds no image of class 3: the student alone never predicts it; the distilled
    student does once its bias is raised to give 3 the teacher's share of the validation predictions."""
    m = distill(teacher=teacher_dir, student="convverytiny", data=SYN, epochs=2, device="cpu", omit_classes="3",
                bias_shift=True, control=True, out=tmp_path / "o")
    assert m["control_accuracy_omitted"] == 0.0
    assert m["accuracy_omitted_before_shift"] < m["accuracy_omitted"]
    assert m["bias_shift"]["3"] > 0
    assert m["accuracy_omitted"] >= 0.5
    spec = load_artifact(tmp_path / "o", with_model=False).spec
    assert spec.data["omit_classes"] == [3]
    res = cli("distill", "--teacher", teacher_dir, "--student", "convverytiny", "--data", SYN,
              "--omit-classes", "10", "--out", tmp_path / "bad")
    assert res.exit_code != 0 and "has classes 0-9" in res.output.strip().splitlines()[-1]


def test_assistant_scheme_keeps_the_assistant_and_teaches_the_student_from_it(teacher_dir, tmp_path):
    m = distill(teacher=teacher_dir, student="convverytiny", data=SYN, epochs=1, device="cpu", scheme="assistant",
                assistant="convtiny", out=tmp_path / "ta")
    assert m["assistant"]["architecture"] == "convtiny" and 0 < m["assistant"]["accuracy"] <= 1
    helper = load_artifact(tmp_path / "ta" / "assistant")
    assert helper.spec.architecture == "convtiny"
    assert m["assistant"]["accuracy"] == json.loads((tmp_path / "ta" / "assistant" / "metrics.json").read_text())[
        "accuracy"]
    assert load_artifact(tmp_path / "ta").spec.architecture == "convverytiny"
