"""Helpers the tests share (fixtures live in conftest.py): the synthetic data's name, running the CLI
in process or in a fresh process, checking its one-line errors, and writing folders of images."""

from __future__ import annotations

from pathlib import Path

SYN = "synthetic"


def cli(*args):
    """Run `compress ARGS...` in process (typer's CliRunner)."""
    from typer.testing import CliRunner

    from compressor.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


def cli_subprocess(*args, cwd=None):
    """Run `python -m compressor.cli.main ARGS...` in a fresh process (real stderr, real exit code)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "compressor.cli.main", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def one_stderr_line(res, needle: str) -> str:
    """A failed process printed exactly one `error:` line holding `needle`, and no traceback."""
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert needle in lines[0], lines[0]
    return lines[0]


def one_line_error(res, needle: str) -> str:
    """A failed command ends with one `error:` line holding `needle`."""
    assert res.exit_code != 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error:") and needle in lines[-1], res.output
    return lines[-1]


def write_photo_folder(root: Path, per_class: int = 24, val_per_class: int = 6, classes: int = 4,
                       size: int = 40) -> Path:
    """root/train|val/<class>/*.jpg: JPEGs whose class is a colour cast and a stripe direction."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                yy, xx = np.mgrid[0:size, 0:size]
                stripes = np.sin((xx if c % 2 else yy) * (0.3 + 0.1 * c) + rng.uniform(0, 6))
                img = 128 + 60 * stripes[..., None] + 40 * (np.arange(3) == c % 3) + rng.normal(0, 20, (size, size, 3))
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(d / f"{i}.jpg", quality=90)
    return root


def write_digits_folder(root: Path, size: int = 32) -> Path:
    """root/train|val/<digit>/*.png: scikit-learn's handwritten digits (1,797 real 8x8 scans that ship
    with the package), upscaled to `size` px; a stratified 80/20 split (1,437 train, 360 val)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(digits.target == c))
        n_val = int(round(len(idx) * 0.2))
        for split, part in (("val", idx[:n_val]), ("train", idx[n_val:])):
            d = root / split / str(c)
            d.mkdir(parents=True, exist_ok=True)
            for i in part:
                img = Image.fromarray((digits.images[i] * (255 / 16)).astype(np.uint8), "L")
                img.resize((size, size), Image.BILINEAR).save(d / f"{i}.png")
    return root
