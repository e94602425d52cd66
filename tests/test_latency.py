"""Structured pruning to a latency budget, with a fake latency model (deterministic, no timing)."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from compressor import CompressorError
from compressor.artifacts import load_artifact
from compressor.latency import PAIRS, TURN_ROUNDS, VERIFY_PAIRS, DeployMeter, LatencyMeter, deploy_meter, cut_to_latency, latency_round, step_epochs, step_targets, widths
from compressor.models import create_model, remove_channels
from compressor.stages import prune

from helpers import SYN, cli

SHAPE = [3, 16, 16]


def fake_latency(cost_per_channel: dict[str, float]):
    """ms = sum over convolutions of output channels x that layer's cost per channel: a deterministic
    stand-in for a runtime, where some layers' channels cost far more time than others'."""

    def measure(model: nn.Module) -> float:
        return sum(m.out_channels * cost_per_channel.get(n, 1e-4)
                   for n, m in model.named_modules() if isinstance(m, nn.Conv2d))

    return measure


def check_by_the_meters(monkeypatch) -> None:
    """`DeployMeter.check` reads what the meters read (it times real files: tests that fake `_time` fake it too)."""
    monkeypatch.setattr(DeployMeter, "_in_turn", lambda self, model, rounds: (self.measure(model), self.fastest(model)))


def student(seed: int = 0, equal_norms: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model("convtiny", num_classes=10, in_chans=3).eval()
    if equal_norms:  # every filter of every layer the same norm: importance cannot tell them apart
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.Conv2d):
                    m.weight.copy_(m.weight / m.weight.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
    return model


def test_the_chosen_widths_meet_the_budget():
    measure = fake_latency({"blocks.0.0": 1e-3, "blocks.1.0": 2e-4, "blocks.2.0": 5e-5})
    model = student()
    start = measure(model)
    cuts = cut_to_latency(model, SHAPE, measure, 0.5 * start, round_to=8)
    assert measure(model) <= 0.5 * start and cuts and cuts[-1].latency_ms == measure(model)
    assert all(w % 8 == 0 for w in widths(model).values())
    with torch.no_grad():
        assert model(torch.zeros(2, *SHAPE)).shape == (2, 10)  # still a working network


def test_importance_per_millisecond_decides_what_goes_first():
    """With every filter equally important, the layer whose channels save the most time loses
    channels first; make that layer's weakest filters important and another layer's go first."""
    costly = {"blocks.0.0": 1e-5, "blocks.1.0": 1e-4, "blocks.2.0": 1e-3}
    measure = fake_latency(costly)
    model = student(equal_norms=True)
    plan, saved = latency_round(model, SHAPE, measure, gap_ms=1e9, exclude=(), round_to=8)  # no cut covers it
    assert plan[0]["layer"] == "blocks.2.0" and saved > 0
    # half of blocks.1.0's filters weak: per millisecond saved, its slice is now the cheaper cut
    with torch.no_grad():
        w = model.blocks[1][0].weight
        w[: w.shape[0] // 2].mul_(0.01)
    plan, _ = latency_round(model, SHAPE, measure, gap_ms=1e9, exclude=(), round_to=8)
    assert plan[0]["layer"] == "blocks.1.0"


def test_uniform_allocation_cuts_every_group_by_one_fraction():
    measure = fake_latency({"blocks.0.0": 1e-3, "blocks.1.0": 2e-4, "blocks.2.0": 5e-5})
    model = student()
    before = widths(model)
    target = 0.6 * measure(model)
    cut_to_latency(model, SHAPE, measure, target, round_to=1, allocation="uniform")
    assert measure(model) <= target
    kept = [widths(model)[n] / before[n] for n in ("blocks.0.0", "blocks.1.0", "blocks.2.0")]
    assert max(kept) - min(kept) < 0.05  # the same fraction, up to rounding to whole channels


def test_uniform_allocation_finds_a_fraction_where_the_narrowest_is_slow():
    """Very narrow int8 convolutions can run slower than wider ones: the narrowest uniform cut missing
    the budget does not make it impossible."""
    linear = fake_latency({"blocks.0.0": 1e-3, "blocks.1.0": 2e-4, "blocks.2.0": 5e-5})

    def measure(model: nn.Module) -> float:
        return linear(model) + (1.0 if min(widths(model).values()) < 16 else 0.0)

    model = student()
    target = 0.6 * measure(model)
    cut_to_latency(model, SHAPE, measure, target, round_to=8, allocation="uniform")
    assert measure(model) <= target and min(widths(model).values()) >= 16


def test_an_impossible_budget_is_one_line():
    measure = fake_latency({})
    model = student()
    with pytest.raises(CompressorError, match="cannot be reached without removing a whole layer") as e:
        cut_to_latency(model, SHAPE, measure, 1e-9, round_to=8)
    assert "\n" not in str(e.value)
    with pytest.raises(CompressorError, match="cannot be reached without removing a whole layer"):
        cut_to_latency(student(), SHAPE, measure, 1e-9, round_to=8, allocation="uniform")


def test_the_last_third_of_the_epochs_is_held_at_the_budget():
    assert [step_epochs(e) for e in (0, 1, 2, 3, 4, 6)] == [[0], [1], [1, 1], [1, 2], [1, 1, 2], [1, 1, 1, 3]]


def test_step_targets_walk_geometrically_to_the_budget():
    t = step_targets(8.0, 2.0, 2)
    assert t == pytest.approx([4.0, 2.0])
    assert step_targets(8.0, 2.0, 0) == pytest.approx([2.0])


def test_the_meter_caches_per_network_and_setting(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(LatencyMeter, "_time", lambda self, model, pairs=None: calls.append(1) or 1.0)
    meter = LatencyMeter(SHAPE, cache=tmp_path / "latency.json")
    model = student()
    assert meter.measure(model) == meter.measure(model) == 1.0 and len(calls) == 1
    again = LatencyMeter(SHAPE, cache=tmp_path / "latency.json")  # a later run reads the file
    assert again.measure(model) == 1.0 and len(calls) == 1
    assert LatencyMeter(SHAPE, form="int8", cache=tmp_path / "latency.json").measure(model) == 1.0 and len(calls) == 2


def test_prune_to_a_latency_budget_records_its_steps_and_rebuilds(student_dir, teacher_dir, tmp_path, monkeypatch):
    measure = fake_latency({"blocks.0.0": 1e-3, "blocks.1.0": 2e-4, "blocks.2.0": 5e-5})
    monkeypatch.setattr(LatencyMeter, "_time",
                        lambda self, model, pairs=None: measure(model) * (2 if self.form == "fp32" else 1))
    check_by_the_meters(monkeypatch)
    start = measure(load_artifact(student_dir).model)
    m = prune(str(student_dir), data=SYN, structured=True, target_latency_ms=0.5 * start, epochs=3,
              teacher=str(teacher_dir), out=tmp_path / "p", device="cpu")
    b = m["latency_budget"]
    assert b["form"] == "int8"  # auto: the faster form of the unpruned model
    assert len(b["steps"]) == 2 and b["steps"][0]["target_ms"] > b["steps"][1]["target_ms"] == pytest.approx(0.5 * start)
    assert b["latency_ms"] <= 0.5 * start and b["latency_ms_before"] == pytest.approx(start)
    art = load_artifact(tmp_path / "p")  # model.json's plans replay every cut
    assert measure(art.model) == pytest.approx(b["latency_ms"]) and m["channels_removed"]
    assert [s["step"] for s in m["history"]] == [1, 2, 2]  # the last third of the epochs held at the budget


@pytest.mark.parametrize("allocation", ["latency", "uniform"])
def test_a_step_counts_only_once_a_longer_independent_timing_confirms_it(student_dir, tmp_path, monkeypatch,
                                                                         allocation):
    """The allocation keeps the cuts timed fastest, and noisy timings of those read low. Here every
    first (short) timing reads 20 % low, the longer one 10 % low, and only the final check (the files
    timed in turn, as the budget is judged) reads true: the prune cuts on until the check meets the
    target, so the network really runs within the budget. The final network is checked exactly once.
    The latency allocation times a network the longer way when the round that made it ends and beside
    its check (a reading kept from the round can have read low: the check's correction would be off by
    it), and its further cut starts from that reading: no network twice more. Uniform's bisection reads
    short timings, corrected by the longer one: each network timed so once, as its step's check."""
    measure = fake_latency({"blocks.0.0": 1e-3, "blocks.1.0": 2e-4, "blocks.2.0": 5e-5})
    longer, checked = [], []

    def timed(self, model, pairs=PAIRS):
        longer.extend([widths(model)] * (pairs == VERIFY_PAIRS))
        return measure(model) * (0.8 if pairs == PAIRS else 0.9)

    def in_turn(self, model, rounds):
        checked.append(widths(model))
        return measure(model), "fp32"

    monkeypatch.setattr(LatencyMeter, "_time", timed)
    monkeypatch.setattr(DeployMeter, "_in_turn", in_turn)
    start = measure(load_artifact(student_dir).model)
    m = prune(str(student_dir), data=SYN, structured=True, target_latency_ms=0.6 * start, epochs=2, form="fp32",
              allocation=allocation, out=tmp_path / "p", device="cpu")
    pruned = load_artifact(tmp_path / "p").model
    assert measure(pruned) <= 0.6 * start
    assert m["latency_budget"]["latency_ms"] == pytest.approx(measure(pruned))
    assert checked.count(widths(pruned)) == 1
    assert max(map(longer.count, longer)) == {"latency": 2, "uniform": 1}[allocation]


def test_the_check_times_the_network_and_the_unpruned_one_in_turn_by_their_medians(monkeypatch):
    """A pruned network's passes spread more than the unpruned one's (a few fast, most slow): the
    meter's fast passes read it at a quarter of the unpruned model, the medians of the files timed in
    turn at half, the figure a budget is judged on. The check reads that, counts the form that runs
    fastest in the rounds, and leaves the meters' own timings (the scale cuts are measured in) as
    they were."""
    from compressor.latency import anchor

    def fake_file(self, model, where):
        return Path(str(sum(widths(model).values())))

    def fake_latency(self, path):
        full = float(path.name) == sum(widths(student()).values())
        passes = np.array([1.0] * 4 if full else [0.5] * 2 + [1.0] * 8)  # ten passes: the 10th percentile 0.5
        return passes * float(path.name) * {"fp32": 2.0, "int8": 1.0}[self.form]

    monkeypatch.setattr(LatencyMeter, "_file", fake_file)
    monkeypatch.setattr(LatencyMeter, "_latency", fake_latency)
    reference = student()
    full = sum(widths(reference).values())
    meters = {f: LatencyMeter(SHAPE, form=f) for f in ("fp32", "int8")}
    anchor(list(meters.values()), reference)
    meter = DeployMeter(meters)
    narrow = student()
    remove_channels(narrow, SHAPE, [{"layer": n, "removed": list(range(w // 2))} for n, w in widths(narrow).items()])
    assert meter.measure(narrow) == pytest.approx(full / 4) and meter.fastest(narrow) == "int8"
    assert meter.check(narrow) == pytest.approx(full / 2)
    assert meter.reading(narrow) == (pytest.approx(full / 2), "int8")
    assert meter.measure(narrow) == pytest.approx(full / 4)
    assert meter.check(reference) == meter.reading(reference)[0] == full


def test_the_meter_counts_the_form_the_export_would_ship_where_forms_time_within_a_tie(monkeypatch):
    """int8 reads 2 % faster than fp32: closer than the timings order them (TIE), so the export would ship
    fp32 (`first_within_tie`), and the prune counts the network at fp32's latency; at 10 % faster, int8's."""
    for int8_factor, shipped in ((0.98, "fp32"), (0.9, "int8")):
        monkeypatch.setattr(LatencyMeter, "measure", lambda self, model, f=int8_factor:
                            sum(widths(model).values()) * (f if self.form == "int8" else 1.0))
        meter = DeployMeter({f: LatencyMeter(SHAPE, form=f) for f in ("fp32", "int8")})
        full = sum(widths(student()).values())
        assert meter.fastest(student()) == shipped
        assert meter.measure(student()) == pytest.approx(full * (1.0 if shipped == "fp32" else int8_factor))


def test_a_network_the_check_still_reads_over_the_budget_is_one_warning_line(student_dir, tmp_path, monkeypatch):
    """The check (the files timed in turn) reads every network a little over the budget, however far
    the prune cuts toward it: after its further cuts the prune ends, its metrics say so, and one
    warning line tells the user what to do."""
    measure = fake_latency({"blocks.0.0": 1e-3, "blocks.1.0": 2e-4, "blocks.2.0": 5e-5})
    start = measure(load_artifact(student_dir).model)
    target = 0.6 * start
    monkeypatch.setattr(LatencyMeter, "_time", lambda self, model, pairs=None: measure(model))
    monkeypatch.setattr(DeployMeter, "_in_turn", lambda self, model, rounds: (max(measure(model), 1.01 * target),
                                                                              "fp32"))
    res = cli("prune", student_dir, "--data", SYN, "--structured", "--target-latency", f"{target:.6f}", "--form",
              "fp32", "--finetune-epochs", "1", "--device", "cpu", "--out", tmp_path / "p")
    assert res.exit_code == 0, res.output
    warned = [ln for ln in res.output.splitlines() if ln.startswith("warning:")]
    assert len(warned) == 1 and "over the budget" in warned[0] and "--latency-batch" in warned[0], res.output
    import json
    b = json.loads((tmp_path / "p" / "metrics.json").read_text())["latency_budget"]
    assert b["latency_ms"] == pytest.approx(1.01 * target, rel=1e-3) and b["latency_ms"] > b["target_ms"]


def test_a_further_cut_that_cannot_reach_the_check_keeps_the_checked_network(student_dir, tmp_path, monkeypatch):
    """The check reads every network three times as slow as the meters: the further cut aims at a third
    of the budget in the meters' scale, which no width reaches. The prune keeps the network it checked
    (the cut tried on a copy), warns in one line and exits 0; the artifact rebuilds."""
    measure = fake_latency({"blocks.0.0": 1e-3, "blocks.1.0": 2e-4, "blocks.2.0": 5e-5})
    start = measure(load_artifact(student_dir).model)
    target = 0.6 * start
    monkeypatch.setattr(LatencyMeter, "_time", lambda self, model, pairs=None: measure(model))
    monkeypatch.setattr(DeployMeter, "_in_turn", lambda self, model, rounds: (3 * measure(model), "fp32"))
    res = cli("prune", student_dir, "--data", SYN, "--structured", "--target-latency", f"{target:.6f}", "--form",
              "fp32", "--finetune-epochs", "1", "--device", "cpu", "--out", tmp_path / "p")
    assert res.exit_code == 0, res.output
    assert "no further cut" in res.output
    warned = [ln for ln in res.output.splitlines() if ln.startswith("warning:")]
    assert len(warned) == 1 and "over the budget" in warned[0], res.output
    import json
    b = json.loads((tmp_path / "p" / "metrics.json").read_text())["latency_budget"]
    pruned = load_artifact(tmp_path / "p").model
    assert b["latency_ms"] == pytest.approx(3 * measure(pruned)) and measure(pruned) <= target


def test_a_step_whose_rounds_stall_keeps_the_fastest_network_and_the_prune_goes_on(student_dir, tmp_path,
                                                                                     monkeypatch):
    """Narrower reads no faster below 75 % of the start during the first step (a floor the meters and
    the check both read; gone, with the readings taken under it, once it has fine-tuned): its
    rounds stall short of its target, 71 %. After progress that is one log line, the step keeps the
    fastest network its rounds measured, and the second step reaches the budget: exit 0, no warning.
    A prune whose first rounds make nothing faster stops in one line."""
    import json

    from compressor.stages import prune_stage

    base = fake_latency({"blocks.0.0": 1e-3, "blocks.1.0": 2e-4, "blocks.2.0": 5e-5})
    start = base(load_artifact(student_dir).model)
    floor = [0.75 * start]
    measure = lambda model: max(floor[0], base(model))  # noqa: E731
    monkeypatch.setattr(LatencyMeter, "_time", lambda self, model, pairs=None: measure(model))
    check_by_the_meters(monkeypatch)
    finetune, made, post_init = prune_stage._finetune, [], LatencyMeter.__post_init__
    monkeypatch.setattr(LatencyMeter, "__post_init__", lambda self: (made.append(self), post_init(self))[1])

    def lifted(*args, **kwargs):
        floor[0] = 0.0
        for m in made:  # the readings taken under the floor forgotten
            m._table.clear()
        return finetune(*args, **kwargs)

    monkeypatch.setattr(prune_stage, "_finetune", lifted)
    args = ["--data", SYN, "--structured", "--target-latency", f"{0.5 * start:.6f}", "--form", "fp32",
            "--finetune-epochs", "2", "--device", "cpu"]
    res = cli("prune", student_dir, *args, "--out", tmp_path / "p")
    assert res.exit_code == 0, res.output
    assert "step 1: pruning stopped at" in res.output and "keeps the fastest network" in res.output, res.output
    assert not [ln for ln in res.output.splitlines() if ln.startswith("warning:")], res.output
    steps = json.loads((tmp_path / "p" / "metrics.json").read_text())["latency_budget"]["steps"]
    assert steps[0]["widths"] and steps[0]["rounds"]  # kept its cuts, though short of its target
    assert steps[1]["latency_ms"] <= 0.5 * start
    floor[0] = start  # nothing reads faster than the unpruned network
    monkeypatch.setattr(prune_stage, "_finetune", finetune)
    res = cli("prune", student_dir, *args, "--out", tmp_path / "q")
    assert res.exit_code == 1 and not (tmp_path / "q").exists()
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("error: pruning stopped at") and "--runtime" in last, res.output


@pytest.mark.parametrize("floor, reaches", [(0.7, False), (0.505, True)])
def test_a_budget_the_last_step_cannot_reach_is_one_line(student_dir, tmp_path, monkeypatch, floor, reaches):
    """Narrower reads no faster below `floor` of the start (the meters and the check both read it), and
    the budget is half the start. The first step reaches its target (71 %); the last step's rounds stall.
    At 70 %, far over the budget, the prune stops in one line and writes nothing. At 50.5 %, within what
    the timings resolve (RESOLUTION), it keeps the fastest network and ends with the warning, exit 0."""
    base = fake_latency({"blocks.0.0": 1e-3, "blocks.1.0": 2e-4, "blocks.2.0": 5e-5})
    start = base(load_artifact(student_dir).model)
    measure = lambda model: max(floor * start, base(model))  # noqa: E731
    monkeypatch.setattr(LatencyMeter, "_time", lambda self, model, pairs=None: measure(model))
    check_by_the_meters(monkeypatch)
    budget = f"{0.5 * start:.6f}"
    res = cli("prune", student_dir, "--data", SYN, "--structured", "--target-latency", budget,
              "--form", "fp32", "--finetune-epochs", "2", "--device", "cpu", "--out", tmp_path / "p")
    assert "step 2: pruning stopped at" not in res.output or reaches, res.output
    if reaches:
        assert res.exit_code == 0, res.output
        assert "step 2: pruning stopped at" in res.output and "keeps the fastest network" in res.output, res.output
        warned = [ln for ln in res.output.splitlines() if ln.startswith("warning:")]
        assert len(warned) == 1 and "over the budget" in warned[0], res.output
    else:
        assert res.exit_code == 1 and not (tmp_path / "p").exists(), res.output
        last = res.output.strip().splitlines()[-1]
        assert last.startswith("error: pruning stopped at") and f"short of {float(budget):.4g} ms" in last, res.output
        assert "prune: step 1:" in res.output  # the first step reached its target and fine-tuned


@pytest.mark.parametrize("args, needle", [(["--target-latency", "1"], "pass --structured too"),
                                          (["--structured"], "give --sparsity or --target-latency"),
                                          (["--sparsity", "0.5", "--form", "int8"], "--form apply with --target-latency"),
                                          (["--structured", "--target-latency", "-1"], "--target-latency"),
                                          (["--structured", "--sparsity", "0.5", "--importance", "taylor"],
                                           "--importance taylor ranks channels per millisecond")])
def test_budget_options_refuse_bad_combinations(student_dir, tmp_path, args, needle):
    res = cli("prune", student_dir, "--data", SYN, *args, "--out", tmp_path / "x")
    assert res.exit_code != 0
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("error:") and needle in last, res.output


def test_a_recipe_prunes_to_its_budget_and_the_report_draws_the_curve(tmp_path, monkeypatch):
    import json

    import yaml

    measure = fake_latency({})
    monkeypatch.setattr(LatencyMeter, "_time", lambda self, model, pairs=None: measure(model))
    check_by_the_meters(monkeypatch)
    recipe = {"name": "budget", "seed": 0, "device": "cpu", "data": {"name": SYN},
              "stages": [{"teach": {"model": "convtiny", "epochs": 1}},
                         {"distill": {"student": "convverytiny", "epochs": 1}},
                         {"prune": {"structured": True, "target_latency_ms": 0.008, "finetune_epochs": 1,
                                    "teacher": True}}]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    res = cli("run", tmp_path / "r.yaml", "--out", tmp_path / "run", "--quiet")
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "run" / "prune" / "metrics.json").read_text())
    assert m["latency_budget"]["latency_ms"] <= 0.008
    res = cli("report", tmp_path / "run")
    assert res.exit_code == 0, res.output
    assert "## Accuracy and latency" in (tmp_path / "run" / "report.md").read_text()
    assert (tmp_path / "run" / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_int8_form_measured_is_the_one_the_export_would_ship(student_dir, teacher_dir, tmp_path, monkeypatch):
    """int8 is timed in the form the export chooses (its choice function, on the labelled images it
    calibrates on, at the batch measured), not merely the fastest form: a per-tensor or layers-only
    form the export keeps is the one timed, and every prune sharing the cache times that one. Where the
    export would ship no int8 file (no form within its budget, or none the runtime runs), int8 is not
    measured, and --form int8 is one line."""
    import compressor.latency as latency
    from compressor.data import load_data
    from compressor.deploy.choice import Int8Choice
    from compressor.deploy.int8 import Int8Form

    chosen, calls = Int8Form("fp32", "s8", False), []

    def choose(fp32, outputs, calibration, **kw):
        calls.append((sorted(outputs), len(calibration), calibration[0][1].dtype.kind, kw["batch"]))
        row = {"chosen": True, "within_drop": within, "drop_points": 0.2 if within else 3.5}
        return {rt: Int8Choice(chosen, Path(p), [], [row]) for rt, p in outputs.items()}

    measure = fake_latency({"blocks.0.0": 1e-3, "blocks.1.0": 2e-4, "blocks.2.0": 5e-5})
    timed, judged = [], []
    monkeypatch.setattr(latency, "choose_int8_form", choose)
    monkeypatch.setattr(latency, "int8_drop", lambda fp32, int8, runtime, test, threads=None:
                        judged.append(sum(len(y) for _, y in test)) or 0.2)
    monkeypatch.setattr(LatencyMeter, "_time", lambda self, model, pairs=None: timed.append(self.int8_form) or
                        measure(model) * (1.25 if self.form == "fp32" else 1))  # within SLOW: both timed
    check_by_the_meters(monkeypatch)
    start = measure(load_artifact(student_dir).model)
    within = True
    m = prune(str(student_dir), data=SYN, structured=True, target_latency_ms=0.7 * start, epochs=1,
              latency_batch=16, out=tmp_path / "p", device="cpu")
    b = m["latency_budget"]
    assert calls == [(["onnxruntime"], 8, "i", 16)]  # the export's 8 calibration batches, labelled, at the batch
    test_images = sum(len(y) for _, y in load_data(SYN, image_size=SHAPE[-1]).loader("test", 256))
    assert judged == [test_images]  # and its drop on the whole test split, where the export judges it
    assert b["forms_measured"] == ["fp32", "int8"] and b["form"] == "int8" and b["int8_form"] == chosen.label()
    assert chosen in timed
    within = False  # the choice is kept in the cache beside --out: another prune of this model reuses it
    m = prune(str(student_dir), data=SYN, structured=True, target_latency_ms=0.7 * start, epochs=1, seed=1,
              latency_batch=16, out=tmp_path / "p2", device="cpu")
    assert len(calls) == 1 and m["latency_budget"]["int8_form"] == chosen.label()
    m = prune(str(student_dir), data=SYN, structured=True, target_latency_ms=0.7 * 1.25 * start, epochs=1,
              out=tmp_path / "other" / "q", device="cpu")
    assert m["latency_budget"]["forms_measured"] == ["fp32"] and m["latency_budget"]["int8_form"] is None
    with pytest.raises(CompressorError, match="--form int8: the export would ship no int8 file"):
        prune(str(student_dir), data=SYN, structured=True, target_latency_ms=0.5 * start, form="int8",
              out=tmp_path / "r", device="cpu")


def test_an_int8_form_that_loses_more_than_the_budget_on_the_test_split_is_not_measured(student_dir, tmp_path,
                                                                                      monkeypatch):
    """The form chosen on the calibration images loses 1.13 points on the test split, where the export
    names its deploy form: the export ships float32, so the prune measures float32 only, and says why."""
    import compressor.latency as latency
    from compressor.deploy.choice import Int8Choice
    from compressor.deploy.int8 import Int8Form

    def choose(fp32, outputs, calibration, **kw):
        row = {"chosen": True, "within_drop": True, "drop_points": 0.4}
        return {rt: Int8Choice(Int8Form(), Path(p), [], [row]) for rt, p in outputs.items()}

    measure = fake_latency({"blocks.0.0": 1e-3, "blocks.1.0": 2e-4, "blocks.2.0": 5e-5})
    monkeypatch.setattr(latency, "choose_int8_form", choose)
    monkeypatch.setattr(latency, "int8_drop", lambda *a, **kw: 1.13)
    monkeypatch.setattr(LatencyMeter, "_time", lambda self, model, pairs=None:
                        measure(model) * (1.25 if self.form == "fp32" else 1))
    check_by_the_meters(monkeypatch)
    start = measure(load_artifact(student_dir).model)
    res = cli("prune", student_dir, "--data", SYN, "--structured", "--target-latency", f"{start:.6f}",
              "--finetune-epochs", "1", "--device", "cpu", "--out", tmp_path / "p")
    assert res.exit_code == 0, res.output
    assert "loses 1.13 accuracy points on the test split" in res.output and "not measured" in res.output, res.output
    import json
    b = json.loads((tmp_path / "p" / "metrics.json").read_text())["latency_budget"]
    assert b["forms_measured"] == ["fp32"] and b["int8_form"] is None and b["form"] == "fp32"


def test_the_meter_writes_every_int8_form_the_export_can_choose(tmp_path):
    """Each form the export may ship (onnxruntime's QDQ forms, compress quantize's scheme calibrated,
    NNCF's where installed) is written by the meter as a file the runtime runs."""
    from compressor.deploy.int8 import LAYERS_FORM, NNCF_FORM, Int8Form, nncf_available
    from compressor.deploy.runtimes import session

    forms = [Int8Form("fp32", "s8", False), LAYERS_FORM] + ([NNCF_FORM] if nncf_available() else [])
    for i, form in enumerate(forms):
        meter = LatencyMeter(SHAPE, "openvino" if form is NNCF_FORM else "onnxruntime", "int8", int8_form=form)
        path = meter._file(student(), tmp_path / str(i))
        out = session(path, runtime=meter.runtime)(torch.zeros(2, *SHAPE).numpy())
        assert out.shape == (2, 10), form


def test_a_reduced_float_form_the_runtime_runs_is_measured_and_can_be_the_budgets_form(student_dir, teacher_dir,
                                                                                        tmp_path, monkeypatch):
    """On a CPU where OpenVINO reports bf16 (simulated here on any CPU), auto measures bf16 beside fp32
    and int8 as the export does, and prunes in bf16 where it is the fastest; the meter runs the float32
    file in bf16 (the precision hint), as the export's deploy file is run."""
    import compressor.latency as latency

    measure = fake_latency({"blocks.0.0": 1e-3, "blocks.1.0": 2e-4, "blocks.2.0": 5e-5})
    scale = {"fp32": 2.0, "bf16": 0.8, "int8": 1.0}
    monkeypatch.setattr(LatencyMeter, "_time", lambda self, model, pairs=None: measure(model) * scale[self.form])
    check_by_the_meters(monkeypatch)
    monkeypatch.setattr(latency, "reduced_float_forms", lambda runtime: ["bf16"])
    start = 0.8 * measure(load_artifact(student_dir).model)
    m = prune(str(student_dir), data=SYN, structured=True, target_latency_ms=0.5 * start, epochs=1,
              teacher=str(teacher_dir), runtime="openvino", out=tmp_path / "p", device="cpu")
    b = m["latency_budget"]
    assert b["form"] == b["form_before"] == "bf16" and b["forms_measured"] == ["bf16", "int8"]  # fp32: over SLOW x
    assert b["latency_ms"] <= 0.5 * start
    monkeypatch.setattr(latency, "reduced_float_forms", lambda runtime: [])
    with pytest.raises(CompressorError, match="does not run bf16 natively"):
        prune(str(student_dir), data=SYN, structured=True, target_latency_ms=0.5 * start, form="bf16",
              runtime="openvino", out=tmp_path / "q", device="cpu")

    seen = []
    monkeypatch.undo()
    monkeypatch.setattr(latency, "session", lambda path, threads=None, runtime=None, precision="fp32":
                        seen.append((Path(path).suffix, runtime, precision)))
    monkeypatch.setattr(latency, "pass_times", lambda *a, **k: np.ones(3))
    LatencyMeter(SHAPE, "openvino", "bf16").measure(student())
    assert seen == [(".onnx", "openvino", "bf16")]


def test_the_last_cut_is_the_least_important_that_closes_the_gap():
    """Where some cut alone covers what is left of the gap, the least important of those is taken, not
    the cheapest per millisecond (which can be a cut far larger than needed)."""
    linear = fake_latency({"blocks.0.0": 1e-6, "blocks.1.0": 1e-6, "blocks.2.0": 5e-4})

    def measure(model: nn.Module) -> float:  # blocks.1.0 saves its time only once at 32 channels or fewer
        return linear(model) + (0.05 if widths(model)["blocks.1.0"] > 32 else 0.0)

    model = student(equal_norms=True)
    # per ms, blocks.1.0 down to 32 is the cheapest cut (half its channels for 0.05 ms), but one slice of
    # blocks.2.0 (16 channels, 0.008 ms) covers a 0.006 ms gap at a quarter of the importance
    plan, saved = latency_round(model, SHAPE, measure, gap_ms=0.006, exclude=(), round_to=8)
    assert [(p["layer"], len(p["removed"])) for p in plan] == [("blocks.2.0", 16)]
    assert saved == pytest.approx(0.008)


def test_a_round_takes_the_least_important_cuts_that_together_cover_the_gap():
    """One cut alone covers the gap, but two smaller ones of other units cover it at less importance:
    the round takes the two, cheapest per millisecond first; a saving under the timing's resolution
    does not count toward a cover."""
    from compressor.latency import _Option, _pick

    big, a, b = _Option(0, [], 10.0, saved=1.0), _Option(1, [], 2.0, saved=0.6), _Option(2, [], 2.5, saved=0.5)
    assert _pick([big, a, b], gap_ms=1.0) == [a, b]
    assert _pick([big, a, b], gap_ms=1.2) == [a, big]  # a and b no longer cover it; the big cut is needed
    assert _pick([big, a, b], gap_ms=9.0) == [a, b, big]  # nothing covers it: each unit's cut, by ms
    assert _pick([big, a, b], gap_ms=1.0, resolution_ms=0.55) == [big]  # b's saving is within the noise


def test_a_round_stops_at_the_first_of_its_cuts_that_reaches_the_target():
    """Cuts together can save more than their savings alone (here any two layers narrowed save a bonus
    as large as the third layer's cut): the round takes its picks one at a time, cheapest per
    millisecond first, and stops where the network reads at or under the target."""
    full, saves = widths(student()), {"blocks.0.0": 0.010, "blocks.1.0": 0.012, "blocks.2.0": 0.014}

    def together(bonus: float):  # a layer saves its time once narrowed at all: one slice of each is the cover
        def measure(model: nn.Module) -> float:
            narrowed = [n for n, w in widths(model).items() if w != full[n]]
            return 0.1 - sum(saves[n] for n in narrowed) - (bonus if len(narrowed) >= 2 else 0.0)
        return measure

    gap = sum(saves.values())
    plan, saved = latency_round(student(equal_norms=True), SHAPE, together(0.0), gap, exclude=(), round_to=8)
    assert sorted(p["layer"] for p in plan) == ["blocks.0.0", "blocks.1.0", "blocks.2.0"]
    model, measure = student(equal_norms=True), together(0.011)
    plan, saved = latency_round(model, SHAPE, measure, gap, exclude=(), round_to=8)
    assert [p["layer"] for p in plan] == ["blocks.2.0", "blocks.1.0"] and saved == pytest.approx(0.026)
    remove_channels(model, SHAPE, plan)
    assert measure(model) <= 0.1 - gap + 1e-12


def test_taylor_importance_is_the_loss_a_channel_costs_comparable_between_layers():
    """A channel that no longer reaches the output (its filter, BatchNorm and downstream weights zero)
    costs nothing: Taylor importance 0, the first its slice removes; the scores are not normalised
    per layer, and the model comes back as it went in (mode, no gradients)."""
    from compressor.latency import taylor_importance

    model = student().train()
    with torch.no_grad():
        block, after = model.blocks[1], model.blocks[2][0]
        for t in (block[0].weight[3], block[1].weight[3:4], block[1].bias[3:4], after.weight[:, 3]):
            t.zero_()
    torch.manual_seed(0)
    batches = [(torch.randn(8, *SHAPE), torch.randint(0, 10, (8,))) for _ in range(2)]
    scores = taylor_importance(batches, SHAPE)(model)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert {n: len(s) for n, s in scores.items()} == {n: w for n, w in widths(model).items()}
    assert scores["blocks.1.0"][3] == 0 and (scores["blocks.1.0"] >= 0).all()
    assert scores["blocks.1.0"].argmin() == 3
    assert scores["blocks.0.0"].sum() != pytest.approx(scores["blocks.2.0"].sum())  # loss units, not shares


def test_pruning_stops_in_one_line_where_narrower_is_no_faster():
    """Where the time left is not in the convolutions' width (a runtime's fixed costs), no slice saves
    time: none is taken, and the run stops in one line instead of cutting the network to nothing."""
    base = fake_latency({"blocks.0.0": 1e-3, "blocks.1.0": 2e-4, "blocks.2.0": 5e-5})
    floor = 0.8 * base(student())

    def measure(model: nn.Module) -> float:
        return max(floor, base(model))

    model = student()
    with pytest.raises(CompressorError, match="no longer makes the network faster") as e:
        cut_to_latency(model, SHAPE, measure, 0.5 * base(student()), round_to=8)
    assert "\n" not in str(e.value)
    assert base(model) >= 0.6 * base(student())  # stopped near the floor, not cut down to the narrowest


def test_timings_against_the_reference_survive_a_machine_that_drifts(monkeypatch):
    """A shared machine's speed drifts between timings; each candidate is timed against the reference
    (the first network measured) in alternating pairs, so the drift cancels: a network with half
    the channels measures half the reference's time, whatever the machine's speed by then."""
    calls = []

    def fake_file(self, model, where):
        return Path(str(sum(widths(model).values())))  # the file's "cost": the network's channels

    def fake_latency(self, path):
        calls.append(path)
        slowdown = 2.0 ** (len(calls) // 2)  # the machine halves its speed every two timings
        return np.array([1.0, 1.0, 1.0, 3.0]) * float(path.name) * slowdown  # its passes, one slowed by a burst

    monkeypatch.setattr(LatencyMeter, "_file", fake_file)
    monkeypatch.setattr(LatencyMeter, "_latency", fake_latency)
    meter = LatencyMeter(SHAPE)
    reference = student()
    full = sum(widths(reference).values())
    assert meter.measure(reference) == full  # timed on its own, first
    narrow = student()
    plan = [{"layer": n, "removed": list(range(w // 2))} for n, w in widths(narrow).items()]
    remove_channels(narrow, SHAPE, plan)
    assert meter.measure(narrow) == pytest.approx(full / 2)
    assert len(calls) == 1 + 2 * PAIRS


def test_the_forms_references_are_timed_against_each_other(monkeypatch, tmp_path):
    """Every form's timings are relative to its own reference file, so the forms compare only as well as
    their references do. Two references each timed on its own, at different times, are off by the
    machine's drift between them; `anchor` times them in turn in interleaved rounds and keeps each
    form's median, so neither the drift between rounds nor a burst within one moves them: int8 here
    runs at half of float32, whatever the machine's speed when each was timed."""
    import compressor.latency as latency
    from compressor.deploy.int8 import Int8Form

    calls, slowdown, rounds = [], [1.0], [False]

    def fake_file(self, model, where):
        return Path(str(sum(widths(model).values())))

    def fake_latency(self, path):
        calls.append(path)
        # in the rounds: every third round at a third of the speed, and one form's timing in the first
        # slowed by a neighbour's burst
        drift = 3.0 if rounds[0] and (len(calls) - 1) // 2 % 3 == 2 else 1.0
        burst = 5.0 if rounds[0] and len(calls) == 1 else 1.0
        return (np.array([1.0, 1.0, 1.0, 3.0]) * float(path.name) * {"fp32": 2.0, "int8": 1.0}[self.form]
                * slowdown[0] * drift * burst)

    monkeypatch.setattr(LatencyMeter, "_file", fake_file)
    monkeypatch.setattr(LatencyMeter, "_latency", fake_latency)
    reference = student()
    full = sum(widths(reference).values())
    assert LatencyMeter(SHAPE, form="fp32").measure(reference) == 2 * full
    slowdown[0] = 2.0  # later, the machine runs at half the speed
    assert LatencyMeter(SHAPE, form="int8").measure(reference) == 2 * full  # on its own: the drift, not int8's speed
    slowdown[0], rounds[0] = 1.0, True
    calls.clear()
    cache = tmp_path / "latency.json"
    fp32, int8 = LatencyMeter(SHAPE, form="fp32", cache=cache), LatencyMeter(SHAPE, form="int8", cache=cache)
    latency.anchor([fp32, int8], reference)
    assert len(calls) == 2 * TURN_ROUNDS
    assert fp32.measure(reference) == 2 * full and int8.measure(reference) == full
    assert fp32.anchored == int8.anchored == f"fp32,int8/{TURN_ROUNDS}"
    narrow = student()
    remove_channels(narrow, SHAPE, [{"layer": n, "removed": list(range(w // 2))} for n, w in widths(narrow).items()])
    assert int8.measure(narrow) == pytest.approx(full / 2) and fp32.measure(narrow) == pytest.approx(full)
    calls.clear()  # another prune of the model (a seed, the other allocation): its references read from the cache
    again = [LatencyMeter(SHAPE, form="fp32", cache=cache), LatencyMeter(SHAPE, form="int8", cache=cache)]
    latency.anchor(again, reference)
    assert not calls and [m.measure(reference) for m in again] == [2 * full, full]

    monkeypatch.setattr(latency, "reduced_float_forms", lambda runtime: ["bf16"])
    monkeypatch.setattr(LatencyMeter, "_latency", lambda self, path: np.array([1.0]))
    meters = deploy_meter(student(), SHAPE, "openvino", int8_form=Int8Form()).meters
    assert list(meters) == ["fp32", "bf16", "int8"]
    assert {m.anchored for m in meters.values()} == {f"fp32,bf16,int8/{TURN_ROUNDS}"}
    assert LatencyMeter(SHAPE).anchored is None and deploy_meter(student(), SHAPE, "openvino", "fp32").meters[
        "fp32"].anchored is None


def test_the_cuts_a_round_picks_are_confirmed_by_the_longer_timing():
    """Of many short, noisy timings the fastest read low, and a round picks exactly those. Here the
    short timing reads every cut of blocks.1.0 far faster than it is; the longer timing reads true:
    the round re-times what it picked, drops blocks.1.0 (it saves little) and takes blocks.2.0."""
    true = fake_latency({"blocks.0.0": 1e-6, "blocks.1.0": 1e-6, "blocks.2.0": 1e-4})
    start = widths(student())["blocks.1.0"]

    def short(model: nn.Module) -> float:  # blocks.1.0 narrower than it was: reads 0.5 ms faster
        return true(model) - (0.5 if widths(model)["blocks.1.0"] < start else 0.0)

    confirmed = []

    def confirm(model: nn.Module) -> float:
        confirmed.append(widths(model))
        return true(model)

    model = student(equal_norms=True)
    plan, _ = latency_round(model, SHAPE, short, gap_ms=1e-4, exclude=(), round_to=8)
    assert [p["layer"] for p in plan] == ["blocks.1.0"]  # unconfirmed: the noise decides
    plan, saved = latency_round(model, SHAPE, short, gap_ms=1e-4, exclude=(), round_to=8, confirm=confirm)
    assert [p["layer"] for p in plan] == ["blocks.2.0"] and saved == pytest.approx(16 * 1e-4)
    assert any(w["blocks.1.0"] < start for w in confirmed)  # it was picked, then re-timed
    cut_to_latency(model, SHAPE, short, true(student()) - 1e-3, round_to=8, confirm=confirm)
    assert widths(model)["blocks.1.0"] == start and true(model) <= true(student()) - 1e-3


@pytest.mark.parametrize("stall_rounds, reaches", [(1, False), (3, True)])
def test_a_round_that_reads_slower_within_the_noise_does_not_end_the_prune(monkeypatch, stall_rounds, reaches):
    """Near the target the gap is within the timing's noise, and a round's network can read slower than
    the one before though channels went; only STALL_ROUNDS such rounds in a row end the prune. Here
    the longer timing reads the first network with all three layers narrowed (the first round's, whose
    three picks were each confirmed alone) twice as slow: slower than the unpruned one."""
    import compressor.latency as latency

    true = fake_latency({"blocks.0.0": 1e-3, "blocks.1.0": 2e-4, "blocks.2.0": 5e-5})
    full, fooled = widths(student()), []

    def confirm(model: nn.Module) -> float:
        slow = all(w != full[n] for n, w in widths(model).items() if n.startswith("blocks")) and not fooled
        fooled.extend([widths(model)] * slow)
        return true(model) * (2.0 if slow else 1.0)

    monkeypatch.setattr(latency, "STALL_ROUNDS", stall_rounds)
    model = student()
    target = true(model) - 0.02  # more than one slice of blocks.0.0 saves: the first round cuts all three layers
    if reaches:
        cut_to_latency(model, SHAPE, true, target, round_to=8, confirm=confirm)
        assert true(model) <= target
    else:
        with pytest.raises(CompressorError, match="no longer makes the network faster"):
            cut_to_latency(model, SHAPE, true, target, round_to=8, confirm=confirm)
    assert len(fooled) == 1


def test_a_cut_narrows_every_group_that_shares_a_resolution():
    """A slice of one of many groups saves less than a timing of the whole network resolves: a round's
    unit is the groups whose largest feature map is the same size, cut together by one fraction."""
    from compressor.sparsity import channel_groups, groups_by_resolution

    model = create_model("resnet10t", num_classes=10, in_chans=3).eval()
    units = groups_by_resolution(model, [3, 32, 32])
    assert sorted(n for u in units for n in u) == sorted(channel_groups(model, [3, 32, 32])[1])  # each group once
    assert ["layer2.0.downsample.1", "layer2.0.conv1"] in units and len(units) == 5
    measure = fake_latency({"layer2.0.conv1": 1e-2, "layer2.0.downsample.1": 1e-2})
    # one slice of each (16 channels, 0.16 ms) saves 0.32 ms; a gap one group's slice does not cover
    plan, saved = latency_round(model, [3, 32, 32], measure, gap_ms=0.2, exclude=(), round_to=8)
    assert sorted(p["layer"] for p in plan) == ["layer2.0.conv1", "layer2.0.downsample.1"]
    assert saved == pytest.approx(0.32, abs=0.01)
    before = widths(model)
    assert all(len(p["removed"]) == before[p["layer"]] // 8 for p in plan)  # one slice (an eighth) of each


def test_a_gap_under_a_units_slice_is_closed_by_half_its_groups(monkeypatch):
    """Where one slice of a whole unit would save far more than the gap, the round can take one slice of
    half the unit's groups (by their channels' multiply-accumulates), the least important per
    multiply-accumulate; a unit whose slice saves under twice the timing's resolution is not split."""
    from compressor.sparsity import channel_costs

    model = create_model("resnet10t", num_classes=10, in_chans=3).eval()
    # a channel of layer2.0.conv1 (64 -> 128, 3x3, on 4x4 positions) and its input to conv2 (128 -> 128, 3x3)
    assert channel_costs(model, [3, 32, 32])["layer2.0.conv1"] == (64 + 128) * 9 * 16
    linear, split = fake_latency({"layer2.0.conv1": 1e-2, "layer2.0.downsample.1": 1e-2}), []

    def measure(m: nn.Module) -> float:  # notes each network timed with one of the unit's two groups narrowed
        w = widths(m)
        split.append((w["layer2.0.conv1"] < 128) != (w["layer2.0.downsample.1"] < 128))
        return linear(m)

    plan, saved = latency_round(model, [3, 32, 32], measure, gap_ms=0.1, exclude=(), round_to=8)
    assert [(p["layer"], len(p["removed"])) for p in plan] in ([("layer2.0.conv1", 16)],
                                                              [("layer2.0.downsample.1", 16)])
    assert saved == pytest.approx(0.16, abs=0.01) and any(split)
    # the unit's slice (0.32 ms of 2.7) under twice the resolution: no half of it is timed, the whole is taken
    monkeypatch.setattr("compressor.latency.RESOLUTION", 0.07)
    split.clear()
    plan, _ = latency_round(model, [3, 32, 32], measure, gap_ms=0.1, exclude=(), round_to=8)
    assert sorted(p["layer"] for p in plan) == ["layer2.0.conv1", "layer2.0.downsample.1"] and not any(split)


def test_a_step_times_the_network_it_starts_from_afresh():
    """The meters keep one reading per network (by its widths); one taken before fine-tuning can have
    read low (here the short timing of the unpruned widths reads 30 % low). With the longer timing, a
    step times its starting network afresh and cuts to the target instead of counting it as there."""
    base = fake_latency({"blocks.0.0": 1e-3, "blocks.1.0": 2e-4, "blocks.2.0": 5e-5})
    full = widths(student())
    start = base(student())

    def short(model: nn.Module) -> float:
        return 0.7 * base(model) if widths(model) == full else base(model)

    model = student()
    cuts = cut_to_latency(model, SHAPE, short, 0.8 * start, round_to=8, confirm=base)
    assert cuts and base(model) <= 0.8 * start
