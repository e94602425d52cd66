import os
from pathlib import Path

import pytest

from compressor.console import set_quiet
from compressor.stages import distill, teach

set_quiet(True)
os.environ.setdefault("OMP_NUM_THREADS", "2")

SYN = "synthetic"


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def teacher_dir(workdir) -> Path:
    """A convtiny teacher on synthetic data (fast); timm models are covered in test_stages."""
    out = workdir / "teacher"
    teach(data=SYN, model="convtiny", out=out, epochs=2, lr=0.05, device="cpu")
    return out


@pytest.fixture(scope="session")
def student_dir(workdir, teacher_dir) -> Path:
    out = workdir / "student"
    distill(teacher=teacher_dir, student="convverytiny", data=SYN, out=out,
            epochs=2, lr=0.05, device="cpu")
    return out


def cli(*args):
    """Run `compress ARGS...` in process (typer's CliRunner)."""
    from typer.testing import CliRunner

    from compressor.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(res, needle: str) -> str:
    """A failed command ends with one `error:` line holding `needle`."""
    assert res.exit_code != 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error:") and needle in lines[-1], res.output
    return lines[-1]
