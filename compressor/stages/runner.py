"""The skeleton every stage shares, in one place: validate the config, refuse an --out that is an
input, lock the output, assemble the artifact atomically, record seed, versions and wall time,
clear checkpoints, and turn a full disk into one line.

A stage is a function of a `StageRun` decorated with `@stage(name, ConfigClass)`; the decorated
function takes the config (or its fields as keywords) and returns metrics.json's content.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from compressor import CompressorError, distributed, provenance
from compressor.artifacts import ArtifactWriter, base_metrics
from compressor.config import LINEAGE_SETTINGS, Config, field_extra, input_dirs, input_fields
from compressor.stages.metrics import check_metrics
from compressor.training import resolve_device
from compressor.training.checkpoint import Checkpoints

DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


@dataclass
class StageRun:
    """What a stage body works with."""

    name: str
    cfg: Config
    device: torch.device
    writer: ArtifactWriter
    checkpoints: Checkpoints | None

    def fingerprint(self, data_identity: dict) -> dict:
        """What a resumable checkpoint must have been written with: the settings, the data and,
        under torchrun, the number of processes."""
        world = {"world_size": distributed.world_size()} if distributed.world_size() > 1 else {}
        return {**self.cfg.settings(), "data": data_identity, **world}


def stage(name: str, config: type[Config], *, trains: bool = False):
    """Make `body(run: StageRun) -> metrics` a stage function `fn(cfg=None, **options) -> metrics`."""

    def decorate(body):
        @functools.wraps(body)
        def run(cfg=None, /, **options) -> dict:
            return execute(name, as_config(config, cfg, options), body, trains)

        run.config = config
        return run

    return decorate


def as_config(config: type[Config], first, options: dict) -> Config:
    """A stage's config from a config object, or from keywords (the positional argument, e.g. the
    model directory, may come first as in the CLI)."""
    if isinstance(first, Config):
        if options:
            raise TypeError(f"pass a {config.__name__} or keyword options, not both")
        return first
    if first is not None:
        arg = next(n for n, f in config.model_fields.items() if field_extra(f).get("argument"))
        options = {arg: first, **options}
    return config.make(**options)


def execute(name: str, cfg: Config, body, trains: bool) -> dict:
    """Run a stage body. Under torchrun every process runs it; only rank 0 locks --out, writes the
    artifact and checkpoints (the others assemble theirs in a private temporary directory that is
    thrown away), and all wait for rank 0 before returning."""
    started = time.time()
    out = Path(cfg.out).expanduser().absolute()
    check_apart(out, input_dirs(cfg))
    distributed.init(cfg.device)
    device = distributed.device_for(resolve_device(cfg.device))
    main = distributed.is_main()
    checkpoints = None
    try:
        with output_lock(out) if main else _private(out) as target:
            checkpoints = Checkpoints(out, name, cfg.resume, write=main) if trains else None
            with ArtifactWriter(target) as writer:
                metrics = body(StageRun(name, cfg, device, writer, checkpoints))
                metrics.update(base_metrics(cfg.seed, started))
                check_metrics(name, {**writer.model_sizes, **metrics})
                settings = cfg.settings()
                provenance.record(writer.dir, out, name, input_fields(cfg),
                                  {k: settings.get(k) for k in LINEAGE_SETTINGS.get(name, ())},
                                  {**writer.model_sizes, **metrics})
                writer.commit(metrics)
    except OSError as e:
        if e.errno not in DISK_ERRORS:
            raise
        if checkpoints is not None and e.errno in (errno.ENOSPC, errno.EDQUOT):
            checkpoints.clear()  # nothing half-written stays behind
        where = e.filename or out
        raise CompressorError(f"{name}: cannot write {where}: {e.strerror}; free space or choose another --out "
                              "(nothing was replaced)") from None
    if checkpoints is not None:
        checkpoints.clear()
    distributed.barrier()  # the artifact is whole before any process reads it
    if metrics.get("status") == "failed":
        raise CompressorError(f"{metrics['failure']}; artifact written to {cfg.out} and marked failed")
    return metrics


def check_apart(out: Path, inputs: list[Path]) -> None:
    """--out must not be an input artifact nor lie inside one (it would be replaced or polluted)."""
    real = out.resolve()
    for inp in inputs:
        r = inp.resolve()
        if real == r or r in real.parents:
            where = "is" if real == r else "lies inside"
            raise CompressorError(f"--out {out} {where} the input artifact {inp}; choose another directory")


@contextmanager
def output_lock(out: Path):
    """One writer per --out: a second process is refused in one line naming the first."""
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = out.parent / f".{out.name}.lock"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise CompressorError(f"--out {out} is being written by another compress process (pid {holder}); "
                                  "wait for it to finish or choose another --out") from None
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the previous holder removed the file between our open and lock: take a fresh one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield out
    finally:
        try:
            os.unlink(lock)
        except OSError:
            pass
        os.close(fd)


@contextmanager
def _private(out: Path):
    """Where a torchrun process other than rank 0 assembles its (discarded) copy of the artifact."""
    tmp = Path(tempfile.mkdtemp(prefix="compress-rank-"))
    try:
        yield tmp / out.name
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
