"""Read and write artifact directories: model.safetensors + model.json + metrics.json (+ extras).

Writes are atomic at two levels: every file goes to a temporary name in the same directory, is
flushed and fsynced, then renamed; and a whole artifact is assembled in a hidden staging directory
beside its destination and renamed into place only when complete. A directory without
metrics.json is never read as an artifact.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
import tempfile
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from compressor import CompressorError, __version__
from compressor.models import ModelSpec, build_from_spec

MODEL_FILE, SPEC_FILE, METRICS_FILE = "model.safetensors", "model.json", "metrics.json"
CONTROL_FILE = "control.safetensors"  # distill --control: the same student trained alone

def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def zipped_size_of(data: bytes, name: str = "file") -> int:
    """Bytes of `data` compressed with zip (deflate, level 9): what zeros and int8 really save."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr(name, data)
    return buf.tell()


def zipped_size(path: Path) -> int:
    return zipped_size_of(Path(path).read_bytes(), Path(path).name)


def recorded_model_sizes(artifact_dir: Path, metrics: dict) -> tuple[int, int]:
    """(raw, zipped) bytes of an artifact's model.safetensors: as recorded in metrics.json when the
    model was written, measured from the file for artifacts written before sizes were recorded."""
    path = Path(artifact_dir) / MODEL_FILE
    if "size_bytes" in metrics and "zipped_bytes" in metrics:
        return metrics["size_bytes"], metrics["zipped_bytes"]
    return path.stat().st_size, zipped_size(path)


def json_digest(obj) -> str:
    """sha256 (hex) of an object's canonical JSON: the keys of run records, checkpoints and caches."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def hash_file(h, path: Path) -> None:
    """Feed a file's bytes into the hash `h`, a megabyte at a time."""
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode())


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def versions() -> dict:
    import onnx
    import onnxruntime
    import timm

    return {"compressor": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version()}


def state_dict_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    """Plain contiguous CPU tensors; shared storage is cloned so safetensors accepts it. A pruned
    weight's zeros are stored as +0.0 (masking leaves -0.0 where a weight was negative: the same
    number, but its sign bit costs bytes once zipped)."""
    out, seen = {}, set()
    for k, v in model.state_dict().items():
        t = v.detach().cpu()
        if t.is_floating_point():
            t = t + 0.0  # -0.0 + 0.0 == +0.0; every other value is unchanged, bit for bit
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr in seen:
            t = t.clone()
        seen.add(ptr)
        out[k] = t.contiguous()
    return out


def weights_bytes(model: nn.Module) -> bytes:
    """The safetensors file of a model's weights: a plain state dict, pruned zeros stored as zeros
    (they cost nothing once zipped), readable by `safetensors.torch.load_file` + `load_state_dict`."""
    from safetensors.torch import save

    return save(state_dict_for_saving(model))


class ArtifactWriter:
    """Assemble an artifact directory in a staging folder; publish it atomically on `commit`.

    Use as a context manager: if the block raises, nothing is left behind.
    """

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.final = Path(out_dir).expanduser().absolute()
        check_output_dir(self.final)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        for stale in self.final.parent.glob(f".{self.final.name}.partial-*"):  # left by a killed writer
            shutil.rmtree(stale, ignore_errors=True)
        for stale in self.final.parent.glob(f".{self.final.name}.old-*"):
            if not self.final.exists() and (stale / METRICS_FILE).is_file():
                os.replace(stale, self.final)  # killed between the two renames of commit: put it back
            else:
                shutil.rmtree(stale, ignore_errors=True)
        self.dir = self.final.parent / f".{self.final.name}.partial-{uuid.uuid4().hex[:8]}"
        self.dir.mkdir()
        self.committed = False
        self.model_sizes: dict = {}

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.committed:
            shutil.rmtree(self.dir, ignore_errors=True)

    def path(self, name: str) -> Path:
        return self.dir / name

    def save_model(self, model: nn.Module, spec) -> None:
        """Write weights and spec (a ModelSpec); raw and zipped sizes go into metrics.json."""
        data = weights_bytes(model)
        atomic_write_bytes(self.dir / MODEL_FILE, data)
        atomic_write_json(self.dir / SPEC_FILE, spec.to_json() if hasattr(spec, "to_json") else spec)
        self.model_sizes = {"size_bytes": len(data), "zipped_bytes": zipped_size_of(data, MODEL_FILE)}

    def save_weights(self, model: nn.Module, name: str) -> None:
        """Extra weights of the same architecture (e.g. the control student) beside the model."""
        atomic_write_bytes(self.dir / name, weights_bytes(model))

    def write_json(self, name: str, obj) -> None:
        atomic_write_json(self.dir / name, obj)

    def commit(self, metrics: dict) -> Path:
        """Write metrics.json last, then move the directory into place (replacing an older artifact)."""
        atomic_write_json(self.dir / METRICS_FILE, {**self.model_sizes, **metrics})
        _fsync_dir(self.dir)
        old = None
        if self.final.exists():
            old = self.final.parent / f".{self.final.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.final, old)
        os.replace(self.dir, self.final)
        _fsync_dir(self.final.parent)
        self.committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_output_dir(path: Path) -> None:
    """Refuse to replace a directory that is not an artifact (so --out can never wipe user files)."""
    if path.exists():
        if not path.is_dir():
            raise CompressorError(f"--out {path} exists and is a file; choose a directory path")
        if any(path.iterdir()) and not (path / SPEC_FILE).exists() and not (path / METRICS_FILE).exists():
            raise CompressorError(f"--out {path} exists and is not an artifact directory; choose another path")


@dataclass
class Artifact:
    path: Path
    spec: object  # a compressor.models.ModelSpec, or None for artifacts without a model (select)
    metrics: dict
    model: nn.Module | None = None


def read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CompressorError(f"{path} is not valid JSON ({e})") from None
    except OSError as e:
        raise CompressorError(f"cannot read {path}: {e.strerror}") from None


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load safetensors weights, refusing unreadable files and non-finite values."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError, json.JSONDecodeError) as e:
        raise CompressorError(f"{path} is corrupt or not a safetensors file ({str(e)[:120]})") from None
    check_finite(state, path)
    return state


def check_finite(state: dict[str, torch.Tensor], source) -> None:
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise CompressorError(f"{source} holds NaN/Inf values in {shown}; refusing to load it")


def load_artifact(path: str | os.PathLike, *, with_model: bool = True) -> Artifact:
    """Read a complete artifact directory and rebuild its model from model.json alone."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise CompressorError(f"artifact directory {p} does not exist")
    if not (p / METRICS_FILE).is_file():
        raise CompressorError(f"{p} is not a complete artifact (no {METRICS_FILE}); rerun the stage that writes it")
    spec = ModelSpec.read(read_json(p / SPEC_FILE), p / SPEC_FILE) if (p / SPEC_FILE).is_file() else None
    metrics = read_json(p / METRICS_FILE)
    art = Artifact(p, spec, metrics)
    if with_model:
        if spec is None:
            raise CompressorError(f"{p} has no {SPEC_FILE}; it is not a model artifact")
        state = load_state_dict(p / MODEL_FILE)
        model = build_from_spec(spec)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise CompressorError(f"{p / MODEL_FILE} does not match the architecture in {SPEC_FILE}: "
                                  f"{str(e).splitlines()[0][:200]}") from None
        art.model = model.eval()
    return art


def base_metrics(seed: int, started: float) -> dict:
    return {"seed": seed, "wall_time_s": round(time.time() - started, 2), "versions": versions()}
