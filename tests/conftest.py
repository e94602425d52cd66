"""Fixtures the tests share: a taught teacher and a distilled student on synthetic data, a folder of photographs."""

import os
from pathlib import Path

import pytest

from compressor.console import set_quiet
from compressor.stages import distill, teach

from helpers import SYN, write_photo_folder

set_quiet(True)
os.environ.setdefault("OMP_NUM_THREADS", "2")


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


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory) -> Path:
    return write_photo_folder(tmp_path_factory.mktemp("photos"))
