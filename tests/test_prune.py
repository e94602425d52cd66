import json

import pytest
import torch

from compressor.artifacts import load_artifact, load_state_dict
from compressor.models import count_params, create_model
from compressor.sparsity import (GradualMasker, cubic_sparsity, default_exclusions, magnitude_masks, plan_structured,
                              prunable_layers)
from compressor.stages import evaluate, export, prune, select
from compressor.config import TrainConfig
from compressor.training import Supervised, fit

from helpers import SYN


def test_cubic_schedule_values():
    assert cubic_sparsity(0, 100, 0.6) == pytest.approx(0.0)
    assert cubic_sparsity(50, 100, 0.6) == pytest.approx(0.6 * (1 - 0.5**3))
    assert cubic_sparsity(25, 100, 0.8) == pytest.approx(0.8 * (1 - 0.75**3))
    assert cubic_sparsity(100, 100, 0.6) == pytest.approx(0.6)
    assert cubic_sparsity(150, 100, 0.6) == pytest.approx(0.6)  # holds after the ramp
    values = [cubic_sparsity(t, 40, 0.6) for t in range(41)]
    assert values == sorted(values)


def test_layer_scope_prunes_each_layer_to_the_target():
    m = create_model("convtiny", num_classes=10, in_chans=3)
    layers = prunable_layers(m, default_exclusions(m))
    assert "blocks.0.0" not in layers and "fc" not in layers and "fc1" in layers
    masks = magnitude_masks(layers, 0.5, "layer")
    for name, mask in masks.items():
        assert 1 - mask.float().mean().item() >= 0.5, name


def test_zeros_stay_zero_through_finetuning(teacher_dir):
    model = load_artifact(teacher_dir).model
    layers = prunable_layers(model)
    masker = GradualMasker(layers, 0.7, total_steps=0, schedule="oneshot")
    zero_before = {n: (m.weight == 0).clone() for n, m in layers.items()}
    from compressor.data import load_data

    fit(Supervised(model), load_data("synthetic"), TrainConfig(epochs=1, lr=0.05), after_step=masker)
    for n, m in layers.items():
        assert torch.all(m.weight[zero_before[n]] == 0), n


def test_gradual_prune_stage_reaches_target_and_shrinks_zip(workdir, student_dir):
    out = workdir / "pruned-gradual"
    m = prune(student_dir, data=SYN, out=out, sparsity=0.6, schedule="gradual", finetune_epochs=2, device="cpu")
    state = load_state_dict(out / "model.safetensors")
    assert m["sparsity"] >= 0.6
    names = [n for n in m["sparsity_per_layer"]]
    zeros = sum(int((state[f"{n}.weight"] == 0).sum()) for n in names) / sum(state[f"{n}.weight"].numel() for n in names)
    assert zeros >= 0.6 and zeros == pytest.approx(m["sparsity"])
    assert "blocks.0.0" not in names and "fc" not in names  # excluded by default
    assert m["zipped_bytes"] < m["zipped_bytes_before"]


def test_structured_model_reloads_and_matches_saved_outputs(workdir, student_dir):
    out = workdir / "pruned-structured"
    m = prune(student_dir, data=SYN, out=out, sparsity=0.5, structured=True, finetune_epochs=1, device="cpu")
    assert m["params"] < m["params_before"] and m["latency_ms"] > 0 and m["latency_ms_before"] > 0
    art = load_artifact(out)  # rebuilt from model.json alone (plan replayed), then weights loaded
    assert count_params(art.model) == m["params"]
    assert evaluate(out, data=SYN)["accuracy"] == pytest.approx(m["accuracy"])
    e = export(out, data=SYN, out=workdir / "pruned-structured-export", device="cpu")
    assert e["max_abs_diff_fp32"] < 1e-3 and e["accuracy_fp32"] == pytest.approx(m["accuracy"])
    spec = json.loads((out / "model.json").read_text())
    assert spec["structured_pruning"][0][0]["removed"]


def test_discriminability_importance_removes_lowest_scores():
    m = create_model("convtiny", num_classes=10, in_chans=3)
    g = torch.Generator().manual_seed(0)
    scores = {"blocks.1": torch.rand(64, generator=g).tolist(), "blocks.2": torch.rand(128, generator=g).tolist()}
    plan = plan_structured(m, [3, 16, 16], 0.25, "discriminability", scores, default_exclusions(m))
    by_layer = {p["layer"]: p["removed"] for p in plan}
    assert set(by_layer) == {"blocks.1.0", "blocks.2.0"}
    for layer, conv in (("blocks.1", "blocks.1.0"), ("blocks.2", "blocks.2.0")):
        s = torch.tensor(scores[layer])
        expected = torch.argsort(s)[: len(s) // 4].sort().values.tolist()
        assert by_layer[conv] == expected


def test_discriminability_from_a_select_artifact(workdir, student_dir):
    sel = workdir / "student-select"
    select(student_dir, data=SYN, out=sel, top_k=4, device="cpu")
    m = prune(student_dir, data=SYN, out=workdir / "pruned-disc", sparsity=0.5, structured=True,
              importance="discriminability", channels=str(sel), finetune_epochs=0, device="cpu")
    assert m["params"] < m["params_before"]


def test_pruned_weights_are_a_plain_state_dict_any_reader_loads(workdir, student_dir):
    """Acceptance: safetensors.torch.load_file + load_state_dict(strict=True) on the model rebuilt
    from model.json; a plain reader counts at least the requested sparsity of zeros."""
    from safetensors.torch import load_file

    from compressor.models import build_from_spec

    out = workdir / "pruned-plain"
    m = prune(student_dir, data=SYN, out=out, sparsity=0.6, finetune_epochs=1, device="cpu")
    state = load_file(str(out / "model.safetensors"))
    model = build_from_spec(json.loads((out / "model.json").read_text()))
    model.load_state_dict(state, strict=True)
    names = list(m["sparsity_per_layer"])
    weights = [state[f"{n}.weight"] for n in names]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros >= 0.6
    assert m["zipped_bytes"] < 0.6 * m["zipped_bytes_before"]  # zeros stored as zeros still zip away


@pytest.mark.parametrize("method", sorted(__import__("compressor.distill", fromlist=["METHODS"]).METHODS))
def test_prune_fine_tunes_with_every_method_as_distill_does(method, workdir, teacher_dir, student_dir):
    """Acceptance: the method's whole protocol runs in prune too (fitnet's kd phase, l2tww's meta step)."""
    m = prune(student_dir, data=SYN, out=workdir / f"prune-{method}", sparsity=0.5, finetune_epochs=1,
              teacher=teacher_dir, method=method, train_size=512, device="cpu")
    history = m["history"]
    assert m["sparsity"] >= 0.5 and len(history) == 1
    assert "loss_ce" in history[0], history[0]
    if method == "fitnet":
        assert "loss_kd" in history[0] and "loss_hint" not in history[0]
    if method == "l2tww":
        assert m["cost"]["steps"] == 4 and m["cost"]["meta_gradient"] == "second-order"
    spec = json.loads((workdir / f"prune-{method}" / "model.json").read_text())
    assert spec["settings"]["prune"]["method"] == method


def test_structured_plans_keep_multiples_of_round_to():
    model = create_model("convtiny", num_classes=10, in_chans=1)
    exact = plan_structured(model, [1, 28, 28], 0.6, round_to=1)
    rounded = plan_structured(model, [1, 28, 28], 0.6, round_to=8)
    assert [p["channels"] - len(p["removed"]) for p in exact] == [52, 26, 13]
    assert [p["channels"] - len(p["removed"]) for p in rounded] == [56, 32, 16]  # rounded up, never below
