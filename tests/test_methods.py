import itertools
import json
import math

import pytest
import torch

from compressor.distill import METHODS, VID, AT, FitNet
from compressor.distill.features import pair_layers
from compressor.distill.functional import (attention_map, attention_transfer_loss, gaussian_nll, logit_mse_loss,
                                           rkd_loss)
from compressor.models import ConvNet, create_model
from compressor.stages import distill

from helpers import SYN


def test_logit_mse_matches_formula():
    s = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    t = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    assert logit_mse_loss(s, t).item() == pytest.approx((1 + 0 + 1 + 4) / 4)


def test_attention_map_by_hand():
    f = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])  # (1, 2 channels, 1, 2)
    # mean over channels of |A|^2: [(1 + 9) / 2, (4 + 0) / 2] = [5, 2], then L2-normalized
    assert attention_map(f).tolist()[0] == pytest.approx([5 / math.sqrt(29), 2 / math.sqrt(29)])


def test_attention_transfer_loss_by_hand_with_pooling():
    s1 = torch.tensor([[[[1.0, 0.0]]]])  # map [1, 0]
    t1 = torch.tensor([[[[0.0, 2.0]]]])  # map [0, 4] -> normalized [0, 1]
    # pair 2: student 1x2, teacher 2x2 pooled to 1x2 (mean of columns of its |A|^2 map)
    s2 = torch.tensor([[[[1.0, 1.0]]]])  # normalized [.7071, .7071]
    t2 = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])  # |A|^2 pooled -> [1, 0]
    expected = ((1 - 0) ** 2 + (0 - 1) ** 2) / 2 + ((1 / math.sqrt(2) - 1) ** 2 + (1 / math.sqrt(2)) ** 2) / 2
    assert attention_transfer_loss([s1, s2], [t1, t2]).item() == pytest.approx(expected, rel=1e-6)


def _rkd_reference(s, t, wd, wa):
    """Loop-by-loop reading of Park et al.: potentials, then Huber loss (smooth L1, beta 1)."""
    n = len(s)

    def dist(e):
        d = [[float(torch.dist(e[i], e[j])) for j in range(n)] for i in range(n)]
        mu = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        return [d[i][j] / mu for i in range(n) for j in range(n)]

    def angle(e):
        out = []
        for j, i, k in itertools.product(range(n), repeat=3):
            a, b = e[i] - e[j], e[k] - e[j]
            na, nb = float(a.norm()), float(b.norm())
            out.append(0.0 if na == 0 or nb == 0 else float(a @ b) / (na * nb))
        return out

    def huber(x, y):
        v = [abs(p - q) for p, q in zip(x, y)]
        return sum(0.5 * d * d if d < 1 else d - 0.5 for d in v) / len(v)

    return wd * huber(dist(s), dist(t)) + wa * huber(angle(s), angle(t))


def test_rkd_loss_against_its_formula():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 3, generator=g), torch.randn(5, 7, generator=g)  # dimensions may differ
    assert rkd_loss(s, t, 25.0, 50.0).item() == pytest.approx(_rkd_reference(s, t, 25.0, 50.0), rel=1e-4)


def test_rkd_is_invariant_to_scale():
    s = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    assert rkd_loss(s, 2 * s).item() == pytest.approx(0.0, abs=1e-6)


def test_gaussian_nll():
    mean, t = torch.zeros(1, 2, 1, 1), torch.ones(1, 2, 1, 1)
    var = torch.tensor([1.0, 4.0])
    expected = 0.5 * ((1 / 1 + math.log(1)) + (1 / 4 + math.log(4))) / 2
    assert gaussian_nll(mean, var, t).item() == pytest.approx(expected)


def test_pairs_all_builds_t_times_s_pairs_for_4_stage_teacher_and_3_stage_student():
    teacher = ConvNet((8, 16, 32, 64), 32, num_classes=10, in_chans=3)  # 4 stages
    student = create_model("convverytiny", num_classes=10, in_chans=3)  # 3 stages
    t_layers = [i["module"] for i in teacher.feature_info]
    s_layers = [i["module"] for i in student.feature_info]
    pairs = pair_layers(t_layers, s_layers, "all")
    assert len(pairs) == 12 and set(pairs) == set(itertools.product(t_layers, s_layers))
    vid = VID(student, teacher, pairs=pairs, input_shape=[3, 16, 16])
    assert len(vid.regressors) == 12
    _, losses = vid.forward_train(torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3]))
    assert torch.isfinite(losses["loss_vid"])
    matched = pair_layers(t_layers, s_layers, "matched")
    assert len(matched) == 3 and matched[-1] == (t_layers[-1], s_layers[-1])


def test_channels_really_shrink_teacher_features():
    teacher = ConvNet((8, 16, 32), 32, num_classes=10, in_chans=3)
    student = create_model("convverytiny", num_classes=10, in_chans=3)
    pairs = [("blocks.2", "blocks.2")]
    keep = {"blocks.2": [0, 5, 7]}
    at = AT(student, teacher, pairs=pairs, input_shape=[3, 16, 16], channels=keep)
    _, _, _, t = at.features(torch.randn(2, 3, 16, 16))
    full = teacher.blocks[2](teacher.pool(teacher.blocks[1](teacher.pool(teacher.blocks[0](torch.randn(1, 3, 16, 16))))))
    assert t["blocks.2"].shape[1] == 3 < full.shape[1]
    vid = VID(student, teacher, pairs=pairs, input_shape=[3, 16, 16], channels=keep)
    assert vid.regressors[0].mean[-1].out_channels == 3


# dkd at the paper's CIFAR-100 weights (NCKD 8 at T = 4, for 240 epochs) makes its knowledge term 15x
# the cross-entropy in a one-epoch run: it learns, but more slowly than the student alone.
SLOW_IN_ONE_EPOCH = {"dkd"}
CHANCE = 0.1  # synthetic data: 10 balanced classes


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_offline_on_synthetic(method, workdir, teacher_dir):
    out = workdir / f"method-{method}"
    m = distill(teacher=teacher_dir, student="convverytiny", data=SYN, out=out, method=method,
                channels=None, epochs=1, lr=0.05, control=True, device="cpu")
    assert {"accuracy", "agreement", "teacher_accuracy"} <= set(m)
    assert m["accuracy"] > 2 * CHANCE, m  # every method learns in one epoch
    if method not in SLOW_IN_ONE_EPOCH:  # and at its defaults none wrecks the student: within 10 points of it alone
        assert m["accuracy"] >= m["control_accuracy"] - 0.10, m
    spec = json.loads((out / "model.json").read_text())
    assert spec["settings"]["method"] == method
    info = METHODS[method]
    for k, v in info.defaults.items():  # the method's own defaults are what it ran with, and recorded
        assert spec["settings"][k] == v, k


def test_feature_methods_leave_teacher_frozen_and_in_eval():
    teacher = ConvNet((8, 16, 32), 32, num_classes=10, in_chans=3)
    student = create_model("convverytiny", num_classes=10, in_chans=3)
    pairs = pair_layers(["blocks.0", "blocks.1", "blocks.2"], ["blocks.0", "blocks.1", "blocks.2"])
    for cls in (AT, VID, FitNet):
        d = cls(student, teacher, pairs=pairs, input_shape=[3, 16, 16])
        d.train()
        assert not teacher.training
        _, losses = d.forward_train(torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3]))
        sum(losses.values()).backward()
        assert all(p.grad is None for p in teacher.parameters())
        d.close()
        student.zero_grad(set_to_none=True)


@pytest.mark.slow
def test_online_scheme_trains_both_and_reports_per_chunk(workdir, teacher_dir):
    from compressor.artifacts import load_artifact
    before = {k: v.clone() for k, v in load_artifact(teacher_dir).model.state_dict().items()}
    out = workdir / "online"
    m = distill(teacher=teacher_dir, student="convverytiny", data=SYN, out=out, scheme="online",
                chunk_size=400, buffer_chunks=2, epochs_per_buffer=1, distill_after=2, trainable=r"blocks\.2",
                lr=0.05, device="cpu")
    chunks = m["chunks"]
    assert len(chunks) == 3600 // 400
    assert [c["distilling"] for c in chunks] == [False, False] + [True] * 7
    assert all(c["teacher_val_accuracy"] > 2 * CHANCE for c in chunks)  # the teacher came trained and stays so
    assert chunks[-1]["student_val_accuracy"] > chunks[0]["student_val_accuracy"]  # the student learns over the stream
    assert {"accuracy", "agreement", "teacher_accuracy"} <= set(m)
    # the saved teacher artifact is untouched; only the in-memory copy trained
    assert all(torch.equal(before[k], v) for k, v in load_artifact(teacher_dir).model.state_dict().items())


def test_online_trains_only_matching_teacher_params(teacher_dir):
    from compressor.artifacts import load_artifact
    from compressor.data import load_data
    from compressor.config import DistillConfig
    from compressor.distill.online import train_online

    teacher = load_artifact(teacher_dir).model
    before = {k: v.clone() for k, v in teacher.named_parameters()}
    student = create_model("convverytiny", num_classes=10, in_chans=3)
    cfg = DistillConfig.make(data="synthetic", student="convverytiny", teacher=str(teacher_dir), out="unused",
                             scheme="online", lr=0.05, chunk_size=1800, buffer_chunks=1, epochs_per_buffer=1,
                             distill_after=0, trainable=r"^fc\.")
    train_online(student, teacher, load_data("synthetic"), cfg, {"temperature": 4.0, "alpha": 0.5},
                 torch.device("cpu"))
    changed = {k for k, v in teacher.named_parameters() if not torch.equal(before[k], v)}
    assert changed and all(k.startswith("fc.") or k.startswith("fc1.") for k in changed), changed
    assert "blocks.0.0.weight" not in changed


@pytest.mark.slow
def test_self_scheme_needs_no_teacher_and_drops_heads(workdir):
    out = workdir / "self"
    m = distill(teacher=None, student="convverytiny", data=SYN, out=out, scheme="self",
                epochs=1, lr=0.05, control=True, device="cpu")
    assert m["accuracy"] >= m["control_accuracy"] - 0.10 and "agreement" not in m
    from compressor.artifacts import load_state_dict

    saved = set(load_state_dict(out / "model.safetensors"))
    plain = set(create_model("convverytiny", num_classes=10, in_chans=3).state_dict())
    assert saved == plain  # auxiliary heads are not part of the exported student
    assert any("loss_aux_kd" in row for row in m["history"])


@pytest.mark.slow
def test_l2tww_updates_meta_networks_and_reports_cost(workdir, teacher_dir):
    from compressor.artifacts import load_artifact
    from compressor.distill import L2TWW

    teacher = load_artifact(teacher_dir).model
    student = create_model("convverytiny", num_classes=10, in_chans=3)
    pairs = pair_layers(["blocks.0", "blocks.1", "blocks.2"], ["blocks.0", "blocks.1", "blocks.2"], "all")
    d = L2TWW(student, teacher, pairs=pairs, input_shape=[3, 16, 16])
    assert len(d.meta) == 9
    before = [p.clone() for p in d.meta.parameters()]
    opt = torch.optim.SGD(d.student_parameters(), lr=0.05)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    _, losses = d.train_step(x, y, opt)
    assert set(losses) == {"loss_ce", "loss_wfm"} and all(torch.isfinite(v) for v in losses.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, d.meta.parameters())), "meta-networks did not move"
    assert all(p.grad is None for p in teacher.parameters())
    d.close()
    m = distill(teacher=teacher_dir, student="convverytiny", data=SYN, out=workdir / "l2tww-cost", method="l2tww",
                pairs="all", epochs=1, lr=0.05, device="cpu")
    assert m["cost"]["seconds_per_step"] > 0 and m["cost"]["peak_memory_mb"] > 0 and m["cost"]["steps"] > 0


@pytest.mark.slow
def test_the_registry_is_the_one_list_of_methods(tmp_path):
    """CLI choices, recipe validation and the docs' method table all come from the registry."""
    from pathlib import Path


    from compressor import CompressorError
    from compressor.distill.registry import method_table_markdown
    from compressor.recipe import parse_recipe

    import subprocess
    import sys

    names = list(METHODS)
    choices = ", ".join(f"'{n}'" for n in names)
    for args in (["distill", "--student", "s"], ["prune", "S", "--sparsity", "0.5"]):
        res = subprocess.run([sys.executable, "-m", "compressor.cli.main", *args, "--data", "synthetic", "--out",
                              str(tmp_path / "x"), "--method", "xx"], capture_output=True, text=True)
        assert res.returncode == 2 and f"is not one of {choices}." in res.stderr, res.stderr
    with pytest.raises(CompressorError) as e:
        parse_recipe({"name": "x", "data": {"name": "synthetic"},
                      "stages": [{"teach": {"model": "convtiny"}}, {"distill": {"student": "convtiny", "method": "xx"}}]})
    assert all(f"'{n}'" in str(e.value) for n in names)
    page = (Path(__file__).parent.parent / "docs" / "concepts" / "methods.md").read_text()
    assert method_table_markdown() in page, "the docs' method table is stale: python -m compressor.distill.registry"
    from compressor.config import DistillOptions
    from compressor.distill.registry import WEIGHTS

    for option in WEIGHTS:  # --help gives each method's default, read from the registry (no second copy)
        help_text = " ".join(DistillOptions.model_fields[option].description.split())
        for info in METHODS.values():
            if option in info.defaults:
                assert f"{info.name} {info.defaults[option]:g}" in help_text, (option, info.name, help_text)


def test_an_option_the_method_does_not_use_is_refused(teacher_dir, tmp_path):
    from compressor import CompressorError

    with pytest.raises(CompressorError, match="--method kd does not use --beta"):
        distill(teacher=teacher_dir, student="convverytiny", data=SYN, out=tmp_path / "x", beta=2.0)
    with pytest.raises(CompressorError, match="--method at does not use --temperature"):
        distill(teacher=teacher_dir, student="convverytiny", data=SYN, out=tmp_path / "x", method="at", temperature=3)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_dkd_and_dist_in_a_recipe(tmp_path):
    """dkd distills, dist fine-tunes the pruned student: both methods through `compress run`'s recipe keys,
    with dkd's warm-up recorded as a loss that grows over the first epoch(s)."""
    from compressor.recipe import parse_recipe, run_recipe

    recipe = parse_recipe({"name": "dkd-dist", "seed": 0, "device": "cpu", "data": {"name": "synthetic"},
                           "stages": [{"teach": {"model": "convtiny", "epochs": 1}},
                                      {"distill": {"student": "convverytiny", "epochs": 2, "method": "dkd",
                                                   "gamma": 4.0}},
                                      {"prune": {"sparsity": 0.5, "finetune_epochs": 1, "teacher": True,
                                                 "method": "dist", "beta": 2.0}}]}, "test")
    out = tmp_path / "run"
    run_recipe(recipe, out)
    d = json.loads((out / "distill" / "metrics.json").read_text())
    p = json.loads((out / "prune" / "metrics.json").read_text())
    assert {"loss_ce", "loss_dkd"} <= set(d["history"][0]) and {"loss_ce", "loss_dist"} <= set(p["history"][0])
    settings = json.loads((out / "prune" / "model.json").read_text())["settings"]
    assert settings["gamma"] == 4.0 and settings["beta"] == 1.0  # distill with dkd: TCKD 1 by default
    assert settings["prune"]["method"] == "dist" and settings["prune"]["beta"] == 2.0
    assert d["accuracy"] > 0.3 and p["accuracy"] > 0.3


def test_dkd_warms_up_its_kd_terms_linearly():
    from compressor.distill import DKD

    teacher = ConvNet((8, 16, 32), 32, num_classes=10, in_chans=3)
    d = DKD(create_model("convverytiny", num_classes=10, in_chans=3), teacher, input_shape=[3, 16, 16])
    d.phases(36)  # the paper's 20 of 240 epochs: 3 of 36
    weights = []
    for epoch in (1, 2, 3, 4):
        d.on_batch(epoch, torch.arange(4))
        weights.append(d.warmup_weight())
    assert weights == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0])


@pytest.mark.slow
def test_min_gain_fails_a_student_below_its_control_and_a_warning_says_so_without_it(teacher_dir, tmp_path):
    """dkd at its defaults for one epoch on synthetic data lands far below the student alone (see
    KNOWN_TO_HURT): --min-gain 0 fails the stage in one line, keeping the artifact marked failed;
    without the flag the stage succeeds and one warning names both accuracies, --quiet or not."""
    from helpers import cli, cli_subprocess, one_line_error, one_stderr_line

    args = ["distill", "--teacher", teacher_dir, "--student", "convverytiny", "--data", "synthetic", "--method", "dkd",
            "--epochs", "1", "--control", "--device", "cpu", "--quiet"]
    res = cli_subprocess(*args, "--min-gain", "0", "--out", tmp_path / "gated")
    one_stderr_line(res, "points below the student alone")
    assert "more than --min-gain 0" in res.stderr and res.returncode == 1
    m = json.loads((tmp_path / "gated" / "metrics.json").read_text())
    assert m["status"] == "failed" and m["gain_points"] < 0 and m["min_gain"] == 0
    assert m["gain_points"] == pytest.approx(100 * (m["accuracy"] - m["control_accuracy"]), abs=1e-3)
    res = cli_subprocess(*args, "--out", tmp_path / "warned")
    assert res.returncode == 0, res.stderr
    warnings = [ln for ln in res.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and f"({m['accuracy']:.4f})" in warnings[0] and f"({m['control_accuracy']:.4f})" in warnings[0]
    assert json.loads((tmp_path / "warned" / "metrics.json").read_text()).get("status", "ok") == "ok"
    one_line_error(cli("distill", "--teacher", teacher_dir, "--student", "convverytiny", "--data", "synthetic",
                       "--min-gain", "0", "--out", tmp_path / "x"), "--min-gain compares")
    assert not (tmp_path / "x").exists()


def test_the_run_summary_marks_a_stage_worse_than_its_input_or_control():
    from compressor.report import worse_notes

    row = {"accuracy": 0.80, "accuracy_int8": None, "input_accuracy": None, "control_accuracy": 0.82}
    assert worse_notes(row) == ["WORSE than the student alone"]
    assert worse_notes({**row, "control_accuracy": 0.80}) == []  # a tie is not worse
    pruned = {"accuracy": 0.87, "accuracy_int8": None, "input_accuracy": 0.88, "control_accuracy": None}
    assert worse_notes(pruned) == ["WORSE than its input (0.8800)"]
    exported = {"accuracy": 0.88, "accuracy_int8": 0.879, "input_accuracy": 0.88, "control_accuracy": None}
    assert worse_notes(exported) == ["WORSE than its input (0.8800)"]  # the int8 model is what ships
    assert worse_notes({**exported, "accuracy_int8": 0.88}) == []


@pytest.mark.parametrize("method", ["at", "rkd", "vid"])
def test_balance_fixes_the_knowledge_scale_on_the_first_batch_and_keeps_it(method):
    """Balanced (the default), the knowledge term equals the cross-entropy on the first training batch
    (times beta / alpha); the scale then stays fixed, is part of the state a checkpoint saves, and a
    distiller restored from it does not measure again. --no-balance leaves the raw term."""
    from compressor.distill import build_distiller, resolve_options

    torch.manual_seed(0)
    teacher = ConvNet((8, 16, 32), 32, num_classes=10, in_chans=3)
    student = create_model("convverytiny", num_classes=10, in_chans=3)

    def make(balance=True):
        torch.manual_seed(1)  # vid's regressors: the same initial weights in every distiller
        opts = resolve_options(method, {"balance": balance, "pairs": "matched"}, {"balance"})
        return build_distiller(method, student, teacher, input_shape=[3, 16, 16], options=opts).train()

    d = make()
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    _, losses = d.forward_train(x, y)
    key = f"loss_{method}"
    assert losses[key].item() == pytest.approx(abs(losses["loss_ce"].item()) * d.beta / d.alpha, rel=1e-5)
    scale = float(d.knowledge_scale)
    assert scale > 0 and "knowledge_scale" in d.state_dict()
    _, later = d.forward_train(torch.randn(8, 3, 16, 16), y)
    assert float(d.knowledge_scale) == scale
    restored = make()
    restored.load_state_dict(d.state_dict())
    restored.forward_train(torch.randn(8, 3, 16, 16), y)
    assert float(restored.knowledge_scale) == scale  # resumed: the same scale, not measured again
    raw = make(balance=False)
    _, raw_losses = raw.forward_train(x, y)
    assert float(raw.knowledge_scale) == 0
    assert raw_losses[key].item() == pytest.approx(losses[key].item() / scale, rel=1e-4)


FEATURE_METHODS = ("fitnet", "at", "rkd", "vid", "l2tww")
# digits are not mirror images and fill their 8x8 frame: milder crops than photographs, no flips
DIGITS = {"data": "imagefolder", "image_size": 32, "workers": 0, "device": "cpu", "scale": 0.5, "hflip": 0.0,
          "color_jitter": 0.0}
STUDENT_BUDGET = {"epochs": 15, "batch_size": 32, "lr": 0.05}  # about 600 steps: long enough to converge


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Real images: scikit-learn's handwritten digits as a 32-px folder (1,437 train, 360 test), a timm
    resnet18 teacher, and the convverytiny student trained alone with the students' budget and seed."""
    from compressor.stages import teach

    from helpers import write_digits_folder

    base = tmp_path_factory.mktemp("digits")
    root = write_digits_folder(base / "data")
    teacher = base / "teacher"
    t = teach(**DIGITS, data_root=root, model="resnet18", epochs=15, lr=0.05, out=teacher)
    alone = distill(**DIGITS, **STUDENT_BUDGET, data_root=root, teacher=teacher, student="convverytiny",
                    method="kd", control=True, out=base / "kd")
    return {"root": root, "teacher": teacher, "teacher_accuracy": t["accuracy"],
            "alone": alone["control_accuracy"], "base": base}


@pytest.mark.slow
@pytest.mark.parametrize("method", FEATURE_METHODS)
def test_feature_methods_at_their_defaults_keep_up_with_the_student_alone_on_real_images(method, digits):
    """Issue #13's case: on a small folder of real images (scanned digits), every feature method at its
    defaults scores at least the student alone minus half a point (same budget and seed)."""
    assert digits["teacher_accuracy"] > 0.85
    m = distill(**DIGITS, **STUDENT_BUDGET, data_root=digits["root"], teacher=digits["teacher"],
                student="convverytiny", method=method, out=digits["base"] / method)
    assert m["accuracy"] >= digits["alone"] - 0.005, (m["accuracy"], digits["alone"])


def test_lit_feeds_each_stage_exactly_the_regressed_teacher_output_of_the_stage_before():
    import torch.nn.functional as F

    from compressor.distill import LIT

    teacher = ConvNet((8, 16, 32), 32, num_classes=10, in_chans=3)
    student = create_model("convverytiny", num_classes=10, in_chans=3)  # (16, 32, 64): every size differs
    pairs = pair_layers(["blocks.0", "blocks.1", "blocks.2"], ["blocks.0", "blocks.1", "blocks.2"])
    d = LIT(student, teacher, pairs=pairs, input_shape=[3, 16, 16])
    seen = {}
    hooks = [student.blocks[j].register_forward_hook(lambda m, args, out, j=j: seen.__setitem__(j, args[0]))
             for j in (1, 2)]
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():  # the teacher's stage outputs, by hand
        t0 = teacher.blocks[0](x)
        t1 = teacher.blocks[1](teacher.pool(t0))
    d.train()
    d.begin_phase("lit")
    _, losses = d.forward_train(x, torch.tensor([0, 1, 2, 3]))
    # stage 1 reads teacher stage 0 (8 ch, 16 px) through a 1x1 conv to 16 ch, pooled to its 8 px input
    assert torch.allclose(seen[1], F.adaptive_avg_pool2d(F.conv2d(t0, d.feed[0].proj.weight), 8), atol=1e-6)
    assert torch.allclose(seen[2], F.adaptive_avg_pool2d(F.conv2d(t1, d.feed[1].proj.weight), 4), atol=1e-6)
    losses["loss_lit"].backward()
    assert student.blocks[0][0].weight.grad is not None and student.fc.weight.grad is None  # no head loss yet
    assert all(p.grad is None for p in teacher.parameters())
    d.begin_phase("main")  # end to end: the hooks pass the student's own activations through
    d.forward_train(x, torch.tensor([0, 1, 2, 3]))
    with torch.no_grad():
        own = student.pool(student.blocks[0](x))
    assert torch.allclose(seen[1], own, atol=1e-6)
    d.close()
    for h in hooks:
        h.remove()
    assert not student.blocks[1]._forward_pre_hooks  # close() leaves the student off-the-shelf


def test_lit_refuses_a_student_with_another_number_of_stages(tmp_path):
    from compressor import CompressorError
    from compressor.distill import build_distiller

    teacher = ConvNet((8, 16, 32, 64), 32, num_classes=10, in_chans=3)
    student = create_model("convverytiny", num_classes=10, in_chans=3)
    with pytest.raises(CompressorError, match="the teacher has 4 .* and the student 3"):
        build_distiller("lit", student, teacher, input_shape=[3, 16, 16])


@pytest.mark.slow
def test_vid_lambdas_weigh_each_pair_and_a_matrix_of_the_wrong_shape_is_one_line(teacher_dir, tmp_path):
    from compressor import CompressorError
    from helpers import cli_subprocess, one_stderr_line

    teacher = ConvNet((8, 16, 32, 64), 32, num_classes=10, in_chans=3)
    student = create_model("convverytiny", num_classes=10, in_chans=3)
    t_layers, s_layers = [i["module"] for i in teacher.feature_info], [i["module"] for i in student.feature_info]
    matrix = [[0.1 * (i + 1) + 0.01 * j for j in range(3)] for i in range(4)]  # 4 teacher x 3 student layers
    vid = VID(student, teacher, pairs=pair_layers(t_layers, s_layers, "all"), input_shape=[3, 16, 16], lambdas=matrix)
    assert vid.lambdas.tolist() == pytest.approx([v for row in matrix for v in row])
    with pytest.raises(CompressorError, match="a 3x4 matrix but the layer pairs need 4x3"):
        VID(student, teacher, pairs=pair_layers(t_layers, s_layers, "all"), input_shape=[3, 16, 16],
            lambdas=[row[:3] + [0] for row in matrix[:3]])
    matched = pair_layers(t_layers, s_layers, "matched")  # 3 pairs: weight off them is refused
    with pytest.raises(CompressorError, match="not a layer pair"):
        VID(student, teacher, pairs=matched, input_shape=[3, 16, 16], lambdas=[[1.0] * 3 for _ in range(3)])
    res = cli_subprocess("distill", "--data", "synthetic", "--teacher", teacher_dir, "--student", "convverytiny",
                         "--method", "vid", "--pairs", "all", "--lambdas", "1,0;0,1", "--epochs", "1",
                         "--out", tmp_path / "x", "--quiet")
    one_stderr_line(res, "--lambdas is a 2x2 matrix but the layer pairs need 3x3")
    res = cli_subprocess("distill", "--data", "synthetic", "--teacher", teacher_dir, "--student", "convverytiny",
                         "--method", "vid", "--lambdas", "1,0;0", "--out", tmp_path / "x")
    one_stderr_line(res, "--lambdas: every row needs as many entries as the first (2)")
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_born_again_generation_k_is_distilled_from_generation_k_minus_1(teacher_dir, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "ban"
    m = distill(teacher=teacher_dir, data=SYN, out=out, scheme="born-again", generations=3, ensemble=True,
                epochs=1, lr=0.05, device="cpu")
    gens = m["generations"]
    assert [g["generation"] for g in gens] == [1, 2, 3]
    assert [g["teacher"] for g in gens] == ["teacher", "generations/1", "generations/2"]
    for k in (1, 2):  # generation k + 1's teacher is generation k: its accuracy is k's, measured again
        assert gens[k]["teacher_accuracy"] == gens[k - 1]["accuracy"]
        assert gens[k]["teacher_params"] == gens[k - 1]["params"]
    spec = json.loads((out / "model.json").read_text())
    teacher_spec = json.loads((teacher_dir / "model.json").read_text())
    assert spec["architecture"] == teacher_spec["architecture"]  # the student defaults to the teacher's
    for k in (1, 2, 3):  # each generation is a complete artifact of its own, in standard files
        gen = out / "generations" / str(k)
        net = create_model(spec["architecture"], num_classes=10, in_chans=3)
        net.load_state_dict(load_file(gen / "model.safetensors"), strict=True)
        assert json.loads((gen / "metrics.json").read_text())["accuracy"] == gens[k - 1]["accuracy"]
    assert (out / "model.safetensors").read_bytes() == (out / "generations" / "3" / "model.safetensors").read_bytes()
    assert m["accuracy"] == gens[-1]["accuracy"]
    assert m["ensemble_accuracy"] >= min(g["accuracy"] for g in gens) - 0.05  # averaging does not lose much
    assert m["ensemble_accuracy"] == gens[-1]["ensemble_accuracy"]


@pytest.mark.slow
def test_teacher_assistant_runs_on_real_images(digits):
    """--scheme assistant on the digits folder: resnet18 teaches convtiny, which teaches convverytiny,
    with the students' budget; both learn the digits (the docs put the result beside direct kd)."""
    m = distill(**DIGITS, **STUDENT_BUDGET, data_root=digits["root"], teacher=digits["teacher"],
                student="convverytiny", method="kd", scheme="assistant", assistant="convtiny",
                out=digits["base"] / "assistant")
    assert m["assistant"]["accuracy"] > 0.85 and m["accuracy"] > 0.85, m
    assert (digits["base"] / "assistant" / "assistant" / "model.safetensors").is_file()
