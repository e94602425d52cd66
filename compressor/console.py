"""Where progress goes: stderr, a rich bar on a TTY, plain lines otherwise, nothing when quiet."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

from rich.console import Console

from compressor import distributed

_state = {"quiet": False}
stderr = Console(stderr=True, highlight=False)


def set_quiet(quiet: bool) -> None:
    _state["quiet"] = quiet


def log(message: str) -> None:
    """One progress line on stderr (not shown with --quiet)."""
    if not _state["quiet"]:
        stderr.print(message, markup=False, soft_wrap=True)


def warn(message: str) -> None:
    """A line the user must see, --quiet or not (under torchrun: rank 0 only)."""
    if distributed.is_main():
        stderr.print(f"warning: {message}", markup=False, soft_wrap=True)


class _PlainTask:
    """Progress as plain lines for logs and CI: at most ten lines per task, none for short ones."""

    def __init__(self, desc: str, total: int) -> None:
        self.desc, self.total, self.done, self.next_pct, self.t0 = desc, max(total, 1), 0, 10, time.time()

    def advance(self, n: int = 1, info: str = "") -> None:
        self.done += n
        pct = 100 * self.done // self.total
        elapsed = time.time() - self.t0
        if pct >= self.next_pct and elapsed > 5:  # quiet for short tasks; ~10 lines for long ones
            self.next_pct = pct - pct % 10 + 10
            if self.next_pct - pct < 5 and self.next_pct < 100:  # 59 % then 60 %: one line says as much
                self.next_pct += 10
            rate = self.done / max(elapsed, 1e-9)
            print(f"{self.desc}: {self.done}/{self.total} ({pct}%) {rate:.1f}/s {info}".rstrip(),
                  file=sys.stderr, flush=True)

    def complete(self, info: str = "") -> None:
        """The rest of the steps skipped: the task is done."""
        self.advance(max(self.total - self.done, 0), info)


class _RichTask:
    def __init__(self, progress, desc: str, total: int) -> None:
        self.progress, self.task, self.total = progress, progress.add_task(desc, total=total, info=""), total

    def advance(self, n: int = 1, info: str = "") -> None:
        self.progress.update(self.task, advance=n, info=info)

    def complete(self, info: str = "") -> None:
        self.progress.update(self.task, completed=self.total, info=info)


class _NullTask:
    def advance(self, n: int = 1, info: str = "") -> None:
        pass

    def complete(self, info: str = "") -> None:
        pass


@contextmanager
def progress(desc: str, total: int):
    """A progress task: `with progress("teach epoch 1", n) as p: p.advance(1, "loss 0.3")`;
    `p.complete()` when the steps left are skipped."""
    if _state["quiet"]:
        yield _NullTask()
        return
    if not stderr.is_terminal:
        yield _PlainTask(desc, total)
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                  console=stderr, transient=False) as p:
        yield _RichTask(p, desc, total)
