"""Resumable training checkpoints, and Ctrl-C / SIGTERM that stop cleanly.

A stage that trains keeps its checkpoints in a hidden directory beside its output,
`.<out name>.checkpoint/<fit tag>.pt` (one file per training loop of the stage: `main`, `control`,
...). The file is rewritten atomically at the end of every epoch and when a signal stops training
after the current step, and removed once the stage's artifact is committed. It holds the task's
weights, the optimizer and scheduler, epoch and step, the history so far and every RNG state
(Python, NumPy, torch); the data order and augmentation are functions of (seed, epoch, index), so
restoring these and skipping the finished batches of the epoch resumes the run bit for bit on CPU.
It is read back with `torch.load(weights_only=True)`: no pickled code ever runs.
"""

from __future__ import annotations

import io
import random
import shutil
import signal
import threading
from pathlib import Path

import numpy as np
import torch

from compressor import CompressorError
from compressor.artifacts import atomic_write_bytes, json_digest

SIGNAL_EXIT = {"SIGINT": 130, "SIGTERM": 143}


class Interrupted(CompressorError):
    """Training stopped on a signal after saving a checkpoint; exit with 128 + signal number."""

    def __init__(self, message: str, signame: str) -> None:
        super().__init__(message)
        self.exit_code = SIGNAL_EXIT.get(signame, 1)


class StopSignals:
    """While active, SIGINT and SIGTERM only set `received`; the loop stops after its current step.

    A second signal is recorded too and changes nothing: the checkpoint is still written once.
    """

    def __init__(self) -> None:
        self.received: str | None = None
        self._old: dict = {}

    def _handler(self, signum, frame) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py = random.getstate()
    return {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos),
                                                      int(has_gauss), float(cached)],
            "python": [py[0], list(py[1]), py[2]]}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def checkpoint_dir(out: str | Path) -> Path:
    """Where the checkpoints of the stage writing `out` live: `.<out name>.checkpoint/` beside it."""
    out = Path(out).expanduser().absolute()
    return out.parent / f".{out.name}.checkpoint"


def has_checkpoint(out: str | Path) -> bool:
    return any(checkpoint_dir(out).glob("*.pt"))


class Checkpoints:
    """The checkpoints of one stage run, beside its output directory `out`."""

    def __init__(self, out: str | Path, stage: str, resume: bool = False, *, write: bool = True) -> None:
        self.dir = checkpoint_dir(out)
        self.resume, self.write = resume, write  # under torchrun only rank 0 writes; every rank reads
        if resume and not has_checkpoint(out):
            raise CompressorError(f"--resume: no checkpoint of {stage} for {Path(out).expanduser().absolute()} "
                                  f"(looked in {self.dir}); run without --resume to start fresh")
        if not resume and self.dir.exists() and write:
            shutil.rmtree(self.dir, ignore_errors=True)  # a fresh run starts from nothing

    def fit(self, tag: str, fingerprint: dict) -> FitCheckpoint:
        return FitCheckpoint(self, tag, fingerprint)

    def clear(self) -> None:
        if self.write:
            shutil.rmtree(self.dir, ignore_errors=True)


class FitCheckpoint:
    """Save and restore the state of one training loop (`fit`) of a stage."""

    def __init__(self, owner: Checkpoints, tag: str, fingerprint: dict) -> None:
        self.owner, self.tag = owner, tag
        self.path = owner.dir / f"{tag}.pt"
        self.fingerprint = json_digest(fingerprint)

    def load(self) -> dict | None:
        """The saved state when resuming and this loop has one; None to start it from scratch."""
        if not self.owner.resume or not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is refused the same way
            raise CompressorError(f"checkpoint {self.path} cannot be read ({str(e).splitlines()[0][:120]}); "
                                  "run without --resume to start fresh") from None
        if state.get("fingerprint") != self.fingerprint:
            raise CompressorError(f"checkpoint {self.path} was written by a run with other settings, data or "
                                  "model; resume with the same command, or run without --resume")
        return state

    def save(self, state: dict) -> None:
        if not self.owner.write:
            return
        self.owner.dir.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save({**state, "fingerprint": self.fingerprint, "tag": self.tag}, buf)
        atomic_write_bytes(self.path, buf.getvalue())
