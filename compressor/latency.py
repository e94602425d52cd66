"""Structured pruning to a latency budget measured on the user's runtime and CPU.

Ratios mislead: the same fraction of channels saves a lot of time in one layer and almost none in
another (memory-bound depthwise layers, kernels that work in blocks). So the time is measured, not
counted. A `LatencyMeter` times a candidate network as the export would ship it: exported to ONNX
(int8: quantized as the export quantizes it), run by the chosen runtime at the chosen batch on this
CPU; every timing is cached by (widths, input size, runtime, form, batch, threads, CPU).

`cut_to_latency` removes channels until the measured latency is at a target. In the `latency`
allocation (the default, after HALP, Shen et al., NeurIPS 2022) each round times, for every prunable
group, the network with a slice of that group's channels removed (a lookup table of the milliseconds
each slice saves, measured on this network as it now is), weighs the slices by importance per
millisecond saved (its channels' first-order Taylor importance, the loss their removal is estimated to
cost, as HALP ranks them; without data, the share of the layer's filter norms the slice removes), picks
the least important set of slices whose savings cover the gap (a knapsack, as HALP solves one), and
takes them cheapest per millisecond first, re-measuring the real network after each. The
`uniform` allocation removes the same fraction of every group's channels, the fraction found by
bisection: the ratio pruning the first is measured against.
"""

from __future__ import annotations

import copy
import hashlib
import shutil
import tempfile
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn

from compressor import CompressorError
from compressor.artifacts import atomic_write_json, json_digest, read_json
from compressor.console import log, progress
from compressor.deploy import qat
from compressor.deploy.choice import SLOW, allowed_drop, choose_int8_form, first_within_tie
from compressor.deploy.graph import export_onnx
from compressor.deploy.int8 import Int8Form, preprocess, quantize_nncf, quantize_preprocessed
from compressor.deploy.runtimes import (OPENVINO_PRECISION, cpu_flags, fast_ms, pass_times, predict_batches,
                                        reduced_float_forms, session)
from compressor.models import remove_channels
from compressor.sparsity import (channel_costs, channel_groups, filter_norms, groups_by_resolution, plan_structured,
                                 weakest)

SLICE = 0.125  # a slice: this fraction of a group's channels (at least --round-to), the unit one round removes
SLICES = (1, 2, 4)  # the cuts of each group a round times: this many slices
MAX_ROUNDS = 32  # lookup-table rounds toward one step's target before giving up on it
STALL_ROUNDS = 3  # rounds in a row that measure no faster than the fastest network so far: the prune stops
PAIRS = 3  # alternating rounds of the reference and a candidate, per timing (their fast passes compared)
VERIFY_TRIES = 3  # checks of a step's result, each followed by more cuts where it reads over the target
VERIFY_PAIRS = 9  # per check of a step's result (`verify`): the cuts kept are those timed fastest, often read low
TURN_ROUNDS = 15  # rounds that time files in turn: the forms' references (`anchor`), the last network (`check`)
RESOLUTION = 0.02  # a cut saving less than this fraction of the network's time is within the timing's noise
COVER_BINS = 200  # parts of a round's gap the cuts' savings are counted in when the least important cover is sought
TAYLOR_BATCHES = 8  # training batches (64 images) the Taylor importance is estimated on, each round


def widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every convolution: what identifies a pruned network of one architecture."""
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


@dataclass
class LatencyMeter:
    """Times a network as the export would ship it; `measure(model) -> ms`. `cache`: a JSON file of
    earlier timings (None: none kept).

    The first network measured is the reference (the unpruned model), timed on its own; every other
    is timed against it, the two files alternating in PAIRS rounds of fresh sessions, and reported
    as the reference's time x the ratio of the two files' fast passes (`fast_ms`). A shared
    machine's speed drifts (on a 2-core cloud VM the same file measured 1x or 2.5x minutes apart), and
    a drift that lasts longer than the pairs cancels in the ratio, so timings taken at different times
    (a lookup table, the cache) stay comparable.

    `anchored`: the forms whose references were timed together, in turn (`anchor`), in place of each
    on its own; part of every key. The forms' timings then compare with each other as they compare
    within a form.
    """

    input_shape: list[int]
    runtime: str = "onnxruntime"
    form: str = "fp32"
    batch: int = 64
    cache: Path | None = None
    threads: int | None = None
    int8_form: Int8Form = Int8Form()  # form int8: how the QDQ file is made (`export_int8_form` chooses it)
    anchored: str | None = None  # the forms and rounds `anchor` timed this meter's reference with (None: alone)
    timings: int = 0  # networks actually timed (not read from the cache)
    _table: dict = field(default_factory=dict)
    _machine: dict = field(default_factory=dict)  # threads and CPU flags: read once, part of every key
    _reference: nn.Module | None = None  # the first network measured
    _files: dict = field(default_factory=dict)  # the reference's file per setting (key -> path)

    def __post_init__(self) -> None:
        if self.cache is not None and self.cache.is_file():
            self._table = read_json(self.cache)
        self._machine = {"threads": self.threads or torch.get_num_threads(), "cpu": cpu_flags()}
        self._dir = Path(tempfile.mkdtemp(prefix="compressor-latency-"))
        weakref.finalize(self, shutil.rmtree, self._dir, True)

    def key(self, model: nn.Module) -> str:
        reference = None if self._reference is None else widths(self._reference)
        return json_digest({"architecture": type(model).__name__, "widths": widths(model), "input": self.input_shape,
                            "runtime": self.runtime, "form": self.form, "batch": self.batch,
                            "int8_form": self.int8_form.label() if self.form == "int8" else None,
                            "against": reference, "anchored": self.anchored,
                            **self._machine})

    def measure(self, model: nn.Module) -> float:
        if self._reference is None:
            self._reference = copy.deepcopy(model).cpu().eval()
        key = self.key(model)
        if key not in self._table:
            self._store(key, self._time(model))
        return self._table[key]

    def _store(self, key: str, ms: float) -> None:
        self._table[key] = ms
        self.timings += 1
        if self.cache is not None:  # merged into the file: other meters (forms) write their timings there too
            _cache_put(self.cache, key, ms)

    def verify(self, model: nn.Module) -> float:
        """Time `model` again, independently and longer (VERIFY_PAIRS pairs), and keep that timing in
        place of the earlier one. An allocation keeps the cuts measured fastest, and of noisy timings
        those are the ones read low (on OpenVINO a quickstart student measured at 0.47 of the unpruned
        model in 3 pairs ran at 0.51-0.55 of it in 15 rounds): the step's result is checked before it
        counts as reaching its target."""
        if self._reference is None or self.key(model) == self.key(self._reference):
            return self.measure(model)
        key = self.key(model)
        self._store(key, self._time(model, VERIFY_PAIRS))
        return self._table[key]

    def _time(self, model: nn.Module, pairs: int = PAIRS) -> float:
        reference = self._reference_file()
        if self.key(model) == self.key(self._reference):
            return self._median_ms(reference)
        reference_ms = self.measure(self._reference)
        with tempfile.TemporaryDirectory(dir=self._dir) as tmp:
            return reference_ms * _ratio(self, self._file(model, Path(tmp)), self, reference, pairs)

    def _reference_file(self) -> Path:
        """The reference network's file in this meter's form (written once)."""
        key = self.key(self._reference)
        if key not in self._files:
            self._files[key] = self._file(self._reference, self._dir / f"reference-{len(self._files)}")
        return self._files[key]

    def _file(self, model: nn.Module, where: Path) -> Path:
        """`model` as the export would write it for this form, into the folder `where`."""
        where.mkdir(parents=True, exist_ok=True)
        path = where / "probe.onnx"
        export_onnx(copy.deepcopy(model).cpu().eval(), path, self.input_shape)
        if self.form != "int8":
            return path
        rng = np.random.default_rng(0)  # random calibration: only the speed counts
        calibration = [rng.standard_normal((8, *self.input_shape)).astype(np.float32) for _ in range(2)]
        if self.int8_form.quantizer == "nncf":
            quantize_nncf(path, where / "probe.int8.xml", calibration)
            return where / "probe.int8.xml"
        if self.int8_form.quantizer == "layers":
            qat.write_calibrated(model, self.input_shape, [torch.from_numpy(x) for x in calibration],
                                 where / "probe.int8.onnx")
            return where / "probe.int8.onnx"
        quantize_preprocessed(preprocess(path, where), where / "probe.int8.onnx", calibration, self.int8_form, "minmax")
        return where / "probe.int8.onnx"

    def _median_ms(self, path: Path) -> float:
        """The file's median pass (ms) in a fresh session: one file's timing in a round of files timed in turn."""
        return float(np.median(self._latency(path)))

    def _latency(self, path: Path) -> np.ndarray:
        """The ms of each forward pass of the file at `batch` in a fresh session (at most about half a second)."""
        # a reduced float form (OpenVINO's bf16, fp16): the float32 file run in that precision, as the export does
        precision = self.form if self.form in OPENVINO_PRECISION else "fp32"
        sess = session(path, threads=self.threads, runtime=self.runtime, precision=precision)
        return pass_times(sess, self.input_shape, self.batch, runs=30, budget_s=0.5)


def _ratio(meter: LatencyMeter, path: Path, other: LatencyMeter, other_path: Path, pairs: int) -> float:
    """How much longer `meter` runs `path` than `other` runs `other_path`: the ratio of their fast passes
    (`fast_ms`) over `pairs` alternating rounds of fresh sessions."""
    passes = [(meter._latency(path), other._latency(other_path)) for _ in range(pairs)]
    return fast_ms([a for a, _ in passes]) / fast_ms([b for _, b in passes])


def anchor(meters: list[LatencyMeter], model: nn.Module, rounds: int = TURN_ROUNDS) -> None:
    """Time the reference `model` in every meter's form in `rounds` interleaved rounds (each form's file
    in a fresh session in turn, as the export times its forms and `benchmarks/int8_latency.py` its
    files) and keep each form's median over the rounds of its median pass as that meter's reference.
    Each form timed alone, minutes apart, is off from the others by the machine's drift in between;
    one form timed against another in a few pairs by their fast passes was off by 10-15 % either way
    on OpenVINO here (int8 read at 0.88 of float32 where interleaved rounds ran it at 0.65-0.73), and
    where two forms lie that close the fastest form, and a budget set from it, was a coin toss."""
    label = f"{','.join(m.form for m in meters)}/{rounds}"
    for m in meters:
        m.anchored = label
        m._reference = copy.deepcopy(model).cpu().eval()
    if all(m.key(model) in m._table for m in meters):
        return
    for m in meters:
        m._reference_file()  # every file written before the rounds start
    medians = _in_turn([lambda m=m: m._time(model) for m in meters], rounds,  # the reference: its median pass
                       "prune: timing the forms' references in turn")
    for m, ms in zip(meters, medians):
        m._store(m.key(model), ms)


def _in_turn(timings: list[Callable[[], float]], rounds: int, desc: str) -> list[float]:
    """Each timing's median over `rounds` rounds, every timing run in turn in each round, so a drift of
    the machine's speed moves them all alike (`runtimes.interleaved_ms` does this for sessions; these
    go through the meters, whose `_latency` opens each file in its form)."""
    rounds_ms: list[list[float]] = [[] for _ in timings]
    with progress(desc, rounds * len(timings)) as bar:
        for _ in range(rounds):
            for timing, ms in zip(timings, rounds_ms):
                ms.append(timing())
                bar.advance(1)
    return [float(np.median(ms)) for ms in rounds_ms]


def _cache_put(cache: Path, key: str, value) -> None:
    table = read_json(cache) if cache.is_file() else {}
    table[key] = value
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cache, table)


def _weights_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def export_int8_form(model: nn.Module, input_shape: list[int], runtime: str,
                     calibration: list[tuple[np.ndarray, np.ndarray]], batch: int = 64, threads: int | None = None,
                     cache: Path | None = None,
                     test: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None) -> tuple[Int8Form | None, str]:
    """The int8 form the export would ship for `model` on `runtime`, chosen as the export chooses it
    (`choose_int8_form` with its defaults: every form open, timed at `batch`, the fastest within the
    accuracy budget on the labelled `calibration` images), and why. None where the export would ship
    no int8 file: the runtime runs none of the forms on this CPU, or none is within the budget (the
    export then fails by default), or, given the `test` images the export names its deploy form on, the
    form loses more than the budget there (NNCF's form: and the QDQ form the export falls back to as
    well; the export then ships a float form). Kept in `cache` per (weights, input, runtime, batch,
    threads, CPU): the choice times forms that may lie within noise of each other, and every prune of
    one model (other seeds, the other allocation) then times the same form against the same reference
    timing."""
    key = json_digest({"int8_form_of": _weights_digest(model), "input": input_shape, "runtime": runtime,
                       "batch": batch, "threads": threads or torch.get_num_threads(), "cpu": cpu_flags(),
                       "judged_on_test": test is not None})
    if cache is not None and cache.is_file() and key in (table := read_json(cache)):
        form, why = table[key]
        return (Int8Form(**form) if form else None), why
    limit = allowed_drop(None)
    with tempfile.TemporaryDirectory(prefix="compressor-int8-form-") as tmp:
        fp32 = Path(tmp) / "model.onnx"
        twin = copy.deepcopy(model).cpu().eval()
        export_onnx(twin, fp32, input_shape)
        out = Path(tmp) / ("model.int8.xml" if runtime == "openvino" else "model.int8.onnx")
        batches = [torch.from_numpy(x) for x, _ in calibration]
        write = lambda path: qat.write_calibrated(twin, input_shape, batches, path)  # noqa: E731
        choice = choose_int8_form(fp32, {runtime: out}, calibration, threads=threads, batch=batch, stage="prune",
                                  write_layers=write)[runtime]
        chosen = next((c for c in choice.candidates if c.get("chosen")), None)
        if choice.form is None:
            form, why = None, f"{runtime} runs none of the int8 forms on this CPU ({choice.error})"
        elif chosen is not None and not chosen["within_drop"]:
            form, why = None, (f"no int8 form is within the export's accuracy budget on the calibration images (the "
                               f"best loses {chosen['drop_points']:.2f} points)")
        else:
            form, why = choice.form, choice.form.label()
            if test is not None:
                drop = int8_drop(fp32, choice.path, runtime, test, threads)
                if drop > limit and choice.fallback is not None:  # the export's fallback from NNCF's form
                    fallback_drop = int8_drop(fp32, choice.fallback, runtime, test, threads)
                    if fallback_drop < drop:
                        form, drop = choice.fallback_form, fallback_drop
                if drop > limit:
                    form, why = None, (f"{form.label()} loses {drop:.2f} accuracy points on the test split, more than "
                                       f"the export's {limit:g}-point budget: it would ship a float form")
    if cache is not None:
        _cache_put(cache, key, [asdict(form) if form else None, why])
    return form, why


def int8_drop(fp32: Path, int8: Path, runtime: str, test: Iterable[tuple[torch.Tensor, torch.Tensor]],
              threads: int | None = None) -> float:
    """The accuracy points the `int8` file loses against the `fp32` file on `test` (a loader: read
    once per file, never held whole) on `runtime`, as the export measures them (its float32 file in
    float32)."""
    accuracy = []
    for path in (fp32, int8):
        logits, labels = predict_batches(session(path, threads, runtime), test, f"prune: test split, {path.stem}")
        accuracy.append(float((logits.argmax(1) == labels).mean()))
    return 100 * (accuracy[0] - accuracy[1])


@dataclass
class DeployMeter:
    """The latency the export would ship: on each network, that of the form the export would name
    (`first_within_tie` of the forms' meters: the fastest, or the first listed within TIE of it; a narrower
    network may run fastest in another form than the unpruned one)."""

    meters: dict[str, LatencyMeter]
    _checked: dict = field(default_factory=dict)  # widths -> (ms, form) as `check` read them

    def measure(self, model: nn.Module) -> float:
        return self.meters[self.fastest(model)].measure(model)

    def fastest(self, model: nn.Module) -> str:
        """The form the export would ship `model` in, by the meters."""
        return first_within_tie({f: m.measure(model) for f, m in self.meters.items()})

    def verify(self, model: nn.Module) -> float:
        """The fastest form's `LatencyMeter.verify`; the latency now measured (another form may now be the fastest)."""
        self.meters[self.fastest(model)].verify(model)
        return self.measure(model)

    def check(self, model: nn.Module, rounds: int = TURN_ROUNDS) -> float:
        """`model`'s latency as a budget is judged (`benchmarks/latency_budget.py`): its file in every form
        and the unpruned model's in every form timed in turn in `rounds` rounds, each file's median over
        the rounds; the unpruned model's latency x the ratio of the fastest form's median to the unpruned
        model's fastest. Kept apart from the meters' timings (`reading`), whose scale the cuts are
        measured in. Those read low here: a prune keeps the cuts timed fastest, stops at the first timing
        under its target and counts a network in whichever form read fastest; on OpenVINO a zoo
        MobileNetV3-Small its meters read at 0.43 of the unpruned model ran at 0.6 of it in such rounds."""
        meters = list(self.meters.values())
        reference = meters[0]._reference
        if reference is None or meters[0].key(model) == meters[0].key(reference):
            return self.measure(model)
        ms, form = self._in_turn(model, rounds)
        self._checked[json_digest(widths(model))] = (ms, form)
        return ms

    def _in_turn(self, model: nn.Module, rounds: int) -> tuple[float, str]:
        """`check`'s timing: `model`'s latency and fastest form by the rounds."""
        meters = list(self.meters.values())
        with tempfile.TemporaryDirectory(dir=meters[0]._dir) as tmp:
            files = [(m, m._reference_file()) for m in meters] + [(m, m._file(model, Path(tmp) / m.form))
                                                                   for m in meters]
            medians = _in_turn([lambda m=m, path=path: m._median_ms(path) for m, path in files], rounds,
                               "prune: timing the network and the unpruned one in turn")
        # the form each would ship in: the meters are listed in the export's order of preference
        shipped = first_within_tie(dict(enumerate(medians[len(meters):])))
        reference = first_within_tie(dict(enumerate(medians[:len(meters)])))
        unpruned = self.measure(meters[0]._reference)
        return unpruned * medians[len(meters) + shipped] / medians[reference], meters[shipped].form

    def reading(self, model: nn.Module) -> tuple[float, str]:
        """`model`'s latency and fastest form: `check`'s where it was checked, else the meters'."""
        return self._checked.get(json_digest(widths(model)), (self.measure(model), self.fastest(model)))

    @property
    def timings(self) -> int:
        return sum(m.timings for m in self.meters.values())


def deploy_meter(model: nn.Module, input_shape: list[int], runtime: str, form: str = "auto", batch: int = 64,
                 cache: Path | None = None, int8_form: Int8Form | None = None) -> DeployMeter:
    """Meters of `form` on `runtime`, or with auto of every form the export measures there on this CPU
    (float32, the reduced floats the runtime runs natively, int8 in `int8_form`: the form the export
    would ship, `export_int8_form`; None: int8 is not measured, an error with --form int8)."""
    floats = reduced_float_forms(runtime)
    if form in ("bf16", "fp16") and form not in floats:
        raise CompressorError(f"--form {form}: {runtime} does not run {form} natively on this CPU")
    if form == "int8" and int8_form is None:
        raise CompressorError(f"--form int8: the export would ship no int8 file of this model on {runtime}; "
                              "use --form fp32 or auto")
    forms = ["fp32", *floats, *(["int8"] if int8_form is not None else [])] if form == "auto" else [form]
    meters = {f: LatencyMeter(input_shape, runtime, f, batch, cache) for f in forms}
    if "int8" in meters:
        meters["int8"].int8_form = int8_form
    if len(forms) > 1:  # the forms' references timed together: the forms' timings compare
        anchor(list(meters.values()), model)
    fastest = min(m.measure(model) for m in meters.values())
    # a form over SLOW x the fastest on the unpruned model is not timed on its narrower networks (as the export does)
    return DeployMeter({f: m for f, m in meters.items() if m.measure(model) <= SLOW * fastest})


@dataclass
class Cut:
    """One removal: the plan model.json replays, and what it was measured to give."""

    plan: list[dict]
    latency_ms: float


def _slice(conv: nn.Conv2d, round_to: int) -> int:
    """Channels one slice of this group removes; 0 when the group is as narrow as it may get."""
    n = max(round_to, int(conv.out_channels * SLICE) // round_to * round_to)
    return n if conv.out_channels - n >= round_to else 0


def _apply(model: nn.Module, input_shape: list[int], plan: list[dict]) -> nn.Module:
    remove_channels(model, input_shape, plan)
    return model


Scores = Callable[[nn.Module], dict[str, torch.Tensor]]  # a network -> each prunable group's channel importances


def taylor_importance(batches: list[tuple[torch.Tensor, torch.Tensor]], input_shape: list[int],
                      exclude: tuple[str, ...] = ()) -> Scores:
    """First-order Taylor importance (Molchanov et al., CVPR 2019; HALP ranks channels by it): for each
    channel of each prunable group, |weight x gradient| of the cross-entropy on `batches`, summed over
    every parameter the channel's removal takes (the convolution's filter, its BatchNorm, the inputs
    downstream; torch-pruning's GroupTaylorImportance, not normalised per layer). It estimates the loss
    the removal costs, so a slice of one layer and of another compare directly."""

    def scores(model: nn.Module) -> dict[str, torch.Tensor]:
        import torch.nn.functional as F
        import torch_pruning as tp

        was = model.training
        model.eval()  # the running statistics stay as they are
        model.zero_grad(set_to_none=True)
        device = next(model.parameters()).device
        for x, y in batches:
            (F.cross_entropy(model(x.to(device)), y.to(device)) / len(batches)).backward()
        dg, roots = channel_groups(model, input_shape, exclude)
        modules, imp = dict(model.named_modules()), tp.importance.GroupTaylorImportance(group_reduction="sum",
                                                                                        normalizer=None)
        out = {}
        for name in roots:
            conv = modules[name]
            group = dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(conv.out_channels)))
            out[name] = imp(group).detach().float().cpu()
        model.zero_grad(set_to_none=True)
        model.train(was)
        return out

    return scores


def magnitude_share(model: nn.Module) -> dict[str, torch.Tensor]:
    """Each convolution's filter norms as shares of its layer's total: a slice of a narrow layer and the
    same fraction of a wide one weigh the same (the importance without data)."""
    norms = {n: filter_norms(m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    return {n: v / v.sum().clamp_min(1e-12) for n, v in norms.items()}


@dataclass
class _Option:
    """One cut a round can take: the same number of slices of every group of one unit (`plan`: the
    channels removed per group), their importance and the ms they save."""

    unit: int
    plan: list[dict]
    importance: float
    saved: float = 0.0
    confirmed: bool = False

    @property
    def per_ms(self) -> float:
        return self.importance / max(self.saved, 1e-3)

    def applied(self, model: nn.Module, input_shape: list[int]) -> nn.Module:
        return _apply(copy.deepcopy(model), input_shape, self.plan)


def latency_round(model: nn.Module, input_shape: list[int], measure: Callable[[nn.Module], float], gap_ms: float,
                  exclude: tuple[str, ...], round_to: int, scores: Scores = magnitude_share,
                  confirm: Callable[[nn.Module], float] | None = None) -> tuple[list[dict], float]:
    """One round of the `latency` allocation. The unit of a cut is the prunable groups that share a
    feature-map resolution (`groups_by_resolution`; on a plain network, one group each): a slice of one
    of MobileNetV3's 27 groups saves less time than timing the whole network resolves, a slice of every
    group at one resolution does. Time, for every unit, the network without 1, 2 and 4 slices of the
    least important channels (by `scores`) of each of its groups (kernels work in blocks, so one slice
    can measure slower where two measure much faster) and, where one slice of a unit saves twice the
    timing's resolution or more, without one slice of half its groups (`_half`: the cut that closes a
    gap the whole unit's slice would overshoot by far). Pick the least important cuts, at most one per
    unit, whose savings cover `gap_ms` (`_pick`). With `confirm` (a longer, independent timing),
    every cut picked is timed again by it and the picks redone until each one's saving is a confirmed
    one: of many short, noisy timings the fastest read low, and the picks are exactly those. The picks
    are then taken cheapest per millisecond first, the network timed (by `confirm` where given) after
    each, until it reads at or under `now - gap_ms`: cuts together save more than their savings
    alone. Returns the plan (per group) of the cuts taken and their predicted saving; an empty plan
    when no group can narrow or no cut measures faster (one that does not is never taken)."""
    now = measure(model)
    modules = dict(model.named_modules())
    importances = scores(model)
    options, ones = [], []
    for u, unit in enumerate(groups_by_resolution(model, input_shape, exclude)):
        for k in SLICES:
            plan = []
            for name in unit:
                conv, n = modules[name], _slice(modules[name], round_to)
                if n and conv.out_channels - k * n >= round_to:
                    plan.append({"layer": name, "removed": weakest(importances[name], k * n),
                                 "channels": conv.out_channels})
            if not plan:
                break
            options.append(_Option(u, plan, _importance(importances, plan)))
            if k == 1:
                ones.append(options[-1])
    _time(options, model, input_shape, measure, now)
    # the closing cut: where one slice of a unit saves more than the timing resolves twice over, half its
    # groups (by their channels' cost) can close a gap the whole unit's slice would overshoot
    costs, halves = None, []
    for o in ones:
        if len(o.plan) > 1 and o.saved >= 2 * RESOLUTION * now:
            costs = costs or channel_costs(model, input_shape, exclude)
            plan = _half(o.plan, importances, costs)
            halves.append(_Option(o.unit, plan, _importance(importances, plan)))
    if halves:
        _time(halves, model, input_shape, measure, now)
        options += halves
    while True:
        # a cut measured no faster is not worth a channel
        picked = _pick([o for o in options if o.saved > 0], gap_ms, RESOLUTION * now)
        todo = [o for o in picked if not o.confirmed] if confirm is not None else []
        if not todo:
            break
        for o in todo:
            o.saved, o.confirmed = now - confirm(o.applied(model, input_shape)), True
    # the picks' savings were each measured alone, and together they can save more (on MobileNetV3-Small
    # rounds predicted to stop at their targets ran 17-22 % under them): taken one at a time, cheapest per
    # millisecond first, the round stops at the first that reads at or under the target (those predicted
    # to save under half the gap are not timed)
    timing = confirm or measure
    for j in range(1, len(picked)):
        if sum(o.saved for o in picked[:j]) < gap_ms / 2:
            continue
        if timing(_apply(copy.deepcopy(model), input_shape, [p for o in picked[:j] for p in o.plan])) <= now - gap_ms:
            picked = picked[:j]
            break
    return [p for o in picked for p in o.plan], sum(o.saved for o in picked)


def _importance(importances: dict[str, torch.Tensor], plan: list[dict]) -> float:
    return sum(float(importances[p["layer"]][p["removed"]].sum()) for p in plan)


def _time(options: list[_Option], model: nn.Module, input_shape: list[int], measure: Callable[[nn.Module], float],
          now: float) -> None:
    with progress("prune: latency round", len(options)) as bar:
        for o in options:
            o.saved = now - measure(o.applied(model, input_shape))
            bar.advance(1, f"{o.plan[0]['layer']}{f' and {len(o.plan) - 1} more' if len(o.plan) > 1 else ''}")


def _half(plan: list[dict], importances: dict[str, torch.Tensor], costs: dict[str, float]) -> list[dict]:
    """Of a unit's cut, the groups whose channels are least important per multiply-accumulate, as many
    as take the nearest to half the cut's multiply-accumulates (at least one group, never all)."""
    macs = {p["layer"]: len(p["removed"]) * costs[p["layer"]] for p in plan}
    order = sorted(plan, key=lambda p: _importance(importances, [p]) / max(macs[p["layer"]], 1e-12))
    taken = [sum(macs[p["layer"]] for p in order[:j]) for j in range(1, len(order))]
    j = min(range(len(taken)), key=lambda i: abs(taken[i] - sum(macs.values()) / 2)) + 1
    return sorted(order[:j], key=plan.index)


def _pick(options: list[_Option], gap_ms: float, resolution_ms: float = 0.0) -> list[_Option]:
    """The least important cuts, at most one per unit, whose savings together cover `gap_ms` (a
    multiple-choice knapsack over the savings in COVER_BINS parts of the gap, each rounded down, so a
    set counted as covering does), cheapest per millisecond first: a cut far larger than the gap needs
    costs more importance than a smaller one that covers it. Only cuts that save at least
    `resolution_ms` count toward a cover: the least important cuts are those that save least, and a sum
    of savings within the timing's noise is a sum of noise (on MobileNetV3-Small a round whose cover
    took such cuts, 15 narrowings, predicted 3.28 ms and ran at 3.79). Where no set covers the gap,
    each unit's cheapest cut per millisecond."""
    units: dict[int, list[_Option]] = {}
    for o in options:
        units.setdefault(o.unit, []).append(o)
    best: dict[int, tuple[float, list[_Option]]] = {0: (0.0, [])}  # parts covered -> (importance, cuts)
    for cuts in units.values():
        grown = dict(best)
        for covered, (importance, picked) in best.items():
            for o in (o for o in cuts if o.saved >= resolution_ms):
                parts = min(COVER_BINS, covered + int(o.saved / gap_ms * COVER_BINS))
                if parts not in grown or importance + o.importance < grown[parts][0]:
                    grown[parts] = (importance + o.importance, [*picked, o])
        best = grown
    if COVER_BINS in best:
        return sorted(best[COVER_BINS][1], key=lambda o: o.per_ms)
    return sorted((min(c, key=lambda o: o.per_ms) for c in units.values()), key=lambda o: o.per_ms)


def uniform_plan(model: nn.Module, input_shape: list[int], measure: Callable[[nn.Module], float], target_ms: float,
                 exclude: tuple[str, ...], round_to: int, iterations: int = 7) -> list[dict]:
    """The smallest fraction of every group's channels whose removal measures at or under `target_ms`:
    the first of the eighths (1/8 ... 7/8, then 0.95) that does, then bisection below it (latency is
    not monotonic in width: very narrow int8 convolutions can run slower than wider ones, so the
    narrowest cut is no test of what is possible). One line when none of the eighths does."""

    def trial(ratio: float) -> tuple[list[dict], float]:
        plan = plan_structured(model, input_shape, ratio, exclude=exclude, round_to=round_to)
        return plan, measure(_apply(copy.deepcopy(model), input_shape, plan))

    lo, hi, best, fastest = 0.0, None, None, float("inf")
    for ratio in (*(k / 8 for k in range(1, 8)), 0.95):
        try:
            plan, ms = trial(ratio)
        except CompressorError:  # so small a fraction that no group loses a channel
            lo = ratio
            continue
        fastest = min(fastest, ms)
        if ms <= target_ms:
            hi, best = ratio, plan
            break
        lo = ratio
    if best is None:
        _impossible(target_ms, fastest, round_to)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        try:
            plan, ms = trial(mid)
        except CompressorError:
            lo = mid
            continue
        if ms <= target_ms:
            hi, best = mid, plan
        else:
            lo = mid
    return best


class Stalled(CompressorError):
    """`cut_to_latency` stopped short of its target: its rounds no longer made the network faster.
    `kept`: its cuts up to the fastest network it measured (those after it bought no time);
    `best_ms`: that network's latency."""

    def __init__(self, message: str, kept: list[Cut], best_ms: float):
        super().__init__(message)
        self.kept, self.best_ms = kept, best_ms


def cut_to_latency(model: nn.Module, input_shape: list[int], measure: Callable[[nn.Module], float], target_ms: float,
                   exclude: tuple[str, ...] = (), round_to: int = 1, allocation: str = "latency",
                   scores: Scores = magnitude_share, confirm: Callable[[nn.Module], float] | None = None,
                   start_ms: float | None = None) -> list[Cut]:
    """Remove channels from `model` (in place) until `measure(model)` is at most `target_ms`; the
    `latency` allocation ranks channels by `scores` (recomputed each round) and, with `confirm` (a
    longer, independent timing), times the network it starts from (unless the caller has just timed
    it so: `start_ms`), each round's picks and each round's result by it. Returns the cuts made, each
    with its plan and the latency measured after it. One line when the target cannot be reached
    without removing a whole layer; `Stalled` (one line, with the cuts worth keeping) when rounds stop
    making the network faster."""
    cuts: list[Cut] = []
    now = measure(model)
    if allocation == "uniform":
        if now <= target_ms:
            return cuts
        plan = uniform_plan(model, input_shape, measure, target_ms, exclude, round_to)
        _apply(model, input_shape, plan)
        return [Cut(plan, measure(model))]
    if allocation != "latency":
        raise CompressorError(f"--allocation must be latency or uniform, got '{allocation}'")
    if confirm is not None:
        confirm = _once(confirm)  # a round of one cut ends on the network its pick was confirmed on
        # the network as it is now, timed afresh: its reading is kept per widths, and the one kept can be
        # a reading taken before fine-tuning that read low; rounds that cannot beat it stall
        now = confirm(model) if start_ms is None else start_ms
    best, stalled, best_at = now, 0, 0
    for k in range(1, MAX_ROUNDS + 1):
        if now <= target_ms:
            return cuts
        plan, predicted = latency_round(model, input_shape, measure, now - target_ms, exclude, round_to, scores,
                                        confirm)
        if not plan and all(_slice(m, round_to) == 0 for m in _roots(model, input_shape, exclude)):
            _impossible(target_ms, now, round_to)  # every group at its narrowest: `now` is the narrowest network's
        if plan:
            _apply(model, input_shape, plan)
            expected, now = now - predicted, (confirm or measure)(model)
            cuts.append(Cut(plan, now))
            log(f"prune: round {k}: {now:.3f} ms (predicted {expected:.3f}, target {target_ms:.4g}); narrowed "
                + ", ".join(f"{p['layer']} to {p['channels'] - len(p['removed'])}" for p in plan))
        # a round that reads no faster than the fastest so far may be noise where the gap is within it:
        # only STALL_ROUNDS of them in a row end the prune
        stalled = 0 if now < best else stalled + 1
        if now < best:
            best, best_at = now, len(cuts)
        if not plan or stalled >= STALL_ROUNDS:
            raise Stalled(
                f"pruning stopped at {now:.3f} ms, short of {target_ms:.4g} ms: removing channels no longer makes "
                f"the network faster on this runtime and CPU (the time left is not in the convolutions' width); raise "
                f"the budget, or measure another --form or --runtime", cuts[:best_at], best)
    raise Stalled(f"pruning did not reach {target_ms:.4g} ms in {len(cuts)} rounds (at {now:.3f} ms); the latency "
                  "measured is too noisy for this budget: raise --latency-batch or the budget", cuts[:best_at], best)


def _once(confirm: Callable[[nn.Module], float]) -> Callable[[nn.Module], float]:
    """`confirm`, timing each network (by its widths) once: a second long timing adds only its noise."""
    seen: dict[str, float] = {}

    def timed(model: nn.Module) -> float:
        key = json_digest(widths(model))
        if key not in seen:
            seen[key] = confirm(model)
        return seen[key]

    return timed


def _roots(model: nn.Module, input_shape: list[int], exclude: tuple[str, ...]) -> list[nn.Conv2d]:
    modules = dict(model.named_modules())
    return [modules[n] for n in channel_groups(model, input_shape, exclude)[1]]


def _impossible(target_ms: float, fastest_ms: float, round_to: int) -> None:
    raise CompressorError(f"--target-latency {target_ms:g} ms cannot be reached without removing a whole layer: "
                          f"the fastest network measured with the prunable convolutions cut down to as few as "
                          f"{round_to} channel{'s' if round_to > 1 else ''} runs in {fastest_ms:.3f} ms; raise the "
                          f"budget, or use a smaller architecture")


def step_epochs(epochs: int) -> list[int]:
    """The fine-tuning epochs after each pruning step toward a budget: one each, the last step's also
    the last third of them (held at the budget, as gradual pruning holds its final sparsity)."""
    if epochs <= 1:
        return [epochs]
    steps = epochs - epochs // 3
    return [1] * (steps - 1) + [epochs - steps + 1]


def step_targets(start_ms: float, target_ms: float, steps: int) -> list[float]:
    """The latency each pruning step aims at: a geometric path from `start_ms` to `target_ms`."""
    steps = max(1, steps)
    return [start_ms * (target_ms / start_ms) ** (k / steps) for k in range(1, steps + 1)]

