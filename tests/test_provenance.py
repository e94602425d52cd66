"""Artifacts that travel and explain themselves: inputs recorded relative to the artifact (with their
weights' digest), the lineage, the model card, timm's config.json."""

import json
import os
import shutil
import tarfile

import pytest
import torch
import yaml

from compressor.artifacts import load_artifact
from compressor.provenance import lineage_line, locate_input

from helpers import SYN, cli


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A small quickstart-shaped run, made from its own working directory with a relative --out."""
    base = tmp_path_factory.mktemp("made")
    recipe = {"name": "travel", "seed": 0, "device": "cpu", "data": {"name": SYN},
              "stages": [{"teach": {"model": "convtiny", "epochs": 1}},
                         {"distill": {"student": "convverytiny", "epochs": 1, "control": True}},
                         {"prune": {"sparsity": 0.5, "finetune_epochs": 1, "teacher": True}},
                         {"export": {"int8": True, "calibration_batches": 2, "runtime": "onnxruntime"}}]}
    (base / "r.yaml").write_text(yaml.safe_dump(recipe))
    cwd = os.getcwd()
    os.chdir(base)
    try:
        res = cli("run", "r.yaml", "--out", "run", "--quiet")
    finally:
        os.chdir(cwd)
    assert res.exit_code == 0, res.output
    return base / "run"


def _report(run, where):
    cwd = os.getcwd()
    os.chdir(where)
    try:
        res = cli("report", run, "--json")
    finally:
        os.chdir(cwd)
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    rep.pop("report")
    return rep


def test_a_run_copied_elsewhere_reports_the_same_and_its_export_evaluates(run_dir, tmp_path):
    before = _report(run_dir, run_dir.parent)
    with tarfile.open(tmp_path / "run.tar", "w") as tar:
        tar.add(run_dir, arcname="copied")
    (tmp_path / "there").mkdir()
    with tarfile.open(tmp_path / "run.tar") as tar:
        tar.extractall(tmp_path / "there", filter="data")
    moved = tmp_path / "there" / "copied"
    elsewhere = tmp_path / "another-cwd"
    elsewhere.mkdir()
    after = _report(moved, elsewhere)
    assert after == before  # the same tables, read through the copy
    # what the copy's distill read is the copy's own teacher, found relative to it and matched by digest
    student = load_artifact(moved / "distill", with_model=False)
    assert student.spec.inputs["teacher"]["path"] == "../teach"
    assert locate_input(moved / "distill", student.spec, "teacher") == moved / "distill" / "../teach"
    for target in (moved / "export", moved / "export" / "model.int8.onnx"):
        res = cli("eval", target, "--data", SYN)
        assert res.exit_code == 0, res.output
    res = cli("run", run_dir.parent / "r.yaml", "--out", moved)  # the recipe again, on the copy: nothing reruns
    assert res.exit_code == 0 and res.output.count("unchanged and verified, skipped") == 4, res.output
    exported = json.loads((moved / "export" / "metrics.json").read_text())
    res = cli("eval", moved / "export" / "model.onnx", "--data", SYN, "--json")
    assert json.loads(res.stdout)["accuracy"] == pytest.approx(exported["accuracy_fp32"], abs=1e-9)


def test_a_missing_or_replaced_input_is_named_in_one_line(run_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    shutil.copytree(copy / "distill", copy / "teach", dirs_exist_ok=True)  # another model where the teacher was
    res = cli("report", copy)
    assert res.exit_code != 0
    line = res.output.strip().splitlines()[-1]
    assert line.startswith("error: cannot find the teacher of") and "whose weights hash to" in line, res.output
    shutil.rmtree(copy / "teach")
    assert "cannot find the teacher of" in cli("report", copy).output


def test_lineage_and_model_card_in_every_artifact(run_dir):
    lineage = load_artifact(run_dir / "export", with_model=False).spec.lineage
    assert [s["stage"] for s in lineage] == ["teach", "distill", "prune", "export"]
    assert [s["path"] for s in lineage] == ["../teach", "../distill", "../prune", "."]
    assert lineage[1]["settings"]["method"] == "kd" and lineage[2]["settings"]["sparsity"] == 0.5
    for step in lineage[:-1]:  # each step's digest is the weights of the artifact it names
        spec = load_artifact(run_dir / "export" / step["path"], with_model=False).spec
        assert spec.lineage[-1]["digest"] == step["digest"]
    assert lineage_line(lineage).startswith("teach convtiny (")
    for stage in ("teach", "distill", "prune", "export"):
        card = (run_dir / stage / "README.md").read_text()
        metrics = json.loads((run_dir / stage / "metrics.json").read_text())
        assert "## Lineage" in card and f"**{stage}**" in card
        assert f"| accuracy | {metrics['accuracy']:.4f} |" in card
        assert "compress run r.yaml --out run --quiet" in card or "from Python" in card
    assert "Lineage: teach convtiny" in (run_dir / "report.md").read_text()


def test_timm_builds_a_dense_timm_artifact_from_its_directory_alone(tmp_path):
    import timm

    from compressor.stages import teach

    out = tmp_path / "mnv3"
    teach(data=SYN, model="mobilenetv3_small_050", epochs=0, out=out, device="cpu")
    ours = load_artifact(out)
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = torch.randn(4, *ours.spec.input_shape)
    with torch.no_grad():
        assert torch.equal(model(x), ours.model(x))
    cfg = model.pretrained_cfg
    assert list(cfg["mean"]) == pytest.approx(ours.spec.mean) and list(cfg["std"]) == pytest.approx(ours.spec.std)
    assert tuple(cfg["input_size"]) == tuple(ours.spec.input_shape) and model.num_classes == ours.spec.num_classes
    config = json.loads((out / "config.json").read_text())
    assert config["label_names"] == ours.spec.class_names and "tag" not in config["pretrained_cfg"]
    card = (out / "README.md").read_text()
    assert 'timm.create_model("local-dir:mnv3", pretrained=True)' in card and "hf upload" in card


def test_no_timm_config_where_timm_cannot_build_the_model(run_dir):
    """Built-in architectures (and structured-pruned or fake-quantized ones) get the card, not config.json."""
    assert not (run_dir / "distill" / "config.json").exists()
    assert (run_dir / "distill" / "README.md").is_file()
