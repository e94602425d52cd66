"""Teacher-output cache for offline distillation.

A frozen teacher's outputs depend only on its input, and the training input is a pure function of
(augmentation seed, epoch, sample index) (see `BatchLoader.augmentation`). So the logits (float32,
bit for bit what the teacher computed) and the intermediate features a method reads (float16) can
be stored per (epoch, index) the first time they are computed and read back in every later run
that trains on the same data with the same seed: a sweep over temperature and alpha, or a rerun.

Layout: `ROOT/<key>/key.json` (what the key was made of), `train-e<epoch>.safetensors` (per
epoch: `logits`, `feat.<layer>`, and `filled`, one byte per sample) and `val.safetensors`,
`test.safetensors` (whole-split logits). The key hashes the teacher's weights file, the data
identity, the augmentation seed and the feature layers: any change selects a fresh directory.
Files are written atomically at the end of each epoch, so an interrupted run leaves either the
previous state or the new one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import torch

from compressor import distributed
from compressor.artifacts import MODEL_FILE, atomic_write_bytes, atomic_write_json, hash_file, json_digest


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    hash_file(h, path)
    return h.hexdigest()


def cache_key(teacher_dir: Path, data_identity: dict, seed: int, layers: list[str]) -> dict:
    return {"teacher_sha256": file_sha256(Path(teacher_dir) / MODEL_FILE), "data": data_identity,
            "augmentation_seed": seed, "feature_layers": sorted(layers), "format": 1}


class TeacherCache:
    """Per-(epoch, index) store of teacher logits and features, backed by files under `root`.

    Use: `begin(epoch, index)` before a batch; `lookup()` returns (logits, feats) when every
    sample of the batch is stored, else None, and then `store(logits, feats)` records them.
    """

    def __init__(self, root: str | Path, key: dict, num_samples: int) -> None:
        self.dir = Path(root) / json_digest(key)[:16]
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.dir / "key.json").is_file():
            atomic_write_json(self.dir / "key.json", key)
        self.n = num_samples
        self.epoch: int | None = None
        self.index: torch.Tensor | None = None
        self.store_: dict[str, torch.Tensor] = {}
        self.dirty = False
        self.fresh = torch.zeros(num_samples, dtype=torch.bool)
        self.hits = self.misses = 0

    # -- training batches -------------------------------------------------------------------
    def _path(self, epoch: int) -> Path:
        return self.dir / f"train-e{epoch}.safetensors"

    def begin(self, epoch: int, index: torch.Tensor) -> None:
        if epoch != self.epoch:
            self.flush()
            self.epoch, self.store_ = epoch, self._load(self._path(epoch))
            self.fresh = torch.zeros(self.n, dtype=torch.bool)  # what this process computed this epoch
        self.index = index

    def lookup(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        s, idx = self.store_, self.index
        if idx is None or "filled" not in s or not bool(s["filled"][idx].all()):
            self.misses += 1
            return None
        self.hits += 1
        feats = {k[5:]: s[k][idx].float() for k in s if k.startswith("feat.")}
        return s["logits"][idx].clone(), feats

    def store(self, logits: torch.Tensor, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Record this batch; return the features as later runs will read them (float16-rounded)."""
        idx, s = self.index, self.store_
        if idx is None:
            return feats
        if "filled" not in s:
            s["filled"] = torch.zeros(self.n, dtype=torch.uint8)
            s["logits"] = torch.zeros(self.n, logits.shape[1], dtype=torch.float32)
        for name, f in feats.items():
            key = f"feat.{name}"
            if key not in s:
                s[key] = torch.zeros(self.n, *f.shape[1:], dtype=torch.float16)
            s[key][idx] = f.detach().to("cpu", torch.float16)
        s["logits"][idx] = logits.detach().to("cpu", torch.float32)
        s["filled"][idx] = 1
        self.fresh[idx] = True
        self.dirty = True
        # every run, the one that fills the cache included, trains on the same rounded features
        return {name: s[f"feat.{name}"][idx].float().to(f.device) for name, f in feats.items()}

    def flush(self) -> None:
        """Write the epoch's store (under torchrun: merged from every process, written by rank 0)."""
        if self.epoch is None:
            return
        if distributed.active():
            self._merge()
        if self.dirty and distributed.is_main():
            from safetensors.torch import save

            atomic_write_bytes(self._path(self.epoch), save({k: v.contiguous() for k, v in self.store_.items()}))
        self.dirty = False

    def _merge(self) -> None:
        """Every process computed the teacher on its share of the batches: gather them all.

        Shares are disjoint, so summing what each process computed (zeros elsewhere) is exact;
        rows read from the file before keep their stored values. A collective: every process
        calls it at the same point (epoch change, close)."""
        import torch.distributed as dist

        if not distributed.any_true(self.dirty):
            return
        shapes = [None] * distributed.world_size()
        dist.all_gather_object(shapes, {k: (tuple(v.shape), v.dtype) for k, v in self.store_.items()})
        for k, (shape, dtype) in sorted({k: v for d in shapes for k, v in d.items()}.items()):
            self.store_.setdefault(k, torch.zeros(shape, dtype=dtype))
        fresh = distributed.sum_(self.fresh.to(torch.int32)) > 0
        for k, v in self.store_.items():
            if k == "filled":
                continue
            mine = self.fresh.view(-1, *[1] * (v.dim() - 1))
            total = distributed.sum_(torch.where(mine, v, torch.zeros((), dtype=v.dtype)).float())
            self.store_[k] = torch.where(fresh.view_as(mine), total.to(v.dtype), v)
        self.store_["filled"] = torch.maximum(self.store_["filled"], fresh.to(torch.uint8))
        self.dirty = True

    def _load(self, path: Path) -> dict[str, torch.Tensor]:
        if not path.is_file():
            return {}
        from safetensors.torch import load_file

        try:
            s = load_file(str(path))
        except Exception:  # noqa: BLE001 - a damaged cache file is recomputed, never trusted
            return {}
        if "filled" not in s or s["filled"].shape[0] != self.n:
            return {}
        return s

    # -- whole splits ---------------------------------------------------------------------------
    def split_logits(self, split: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Teacher logits over a whole evaluation split, computed once and then read back."""
        from safetensors.torch import load_file, save

        path = self.dir / f"{split}.safetensors"
        if path.is_file():
            try:
                return load_file(str(path))["logits"]
            except Exception:  # noqa: BLE001
                pass
        logits = compute().to("cpu", torch.float32).contiguous()
        if distributed.is_main():  # every process computed the same logits; one writes them
            atomic_write_bytes(path, save({"logits": logits}))
        return logits

    def close(self) -> None:
        self.flush()
