"""The teacher-output cache: same tensors as the teacher, same training, fresh on any key change."""

import shutil

import pytest
import torch

from compressor import CompressorError
from compressor.artifacts import load_artifact, load_state_dict
from compressor.data import load_data
from compressor.distill import build_distiller
from compressor.distill.cache import TeacherCache, cache_key
from compressor.models import create_model
from compressor.stages import distill, teach

from helpers import SYN


def _batches(cache, distiller, loader, epoch):
    loader.set_epoch(epoch)
    out = []
    for x, _ in loader:
        distiller.on_batch(epoch, loader.last_index)
        logits, feats = distiller.teacher_outputs(x)
        out.append((x, logits, feats))
    cache.flush()
    return out


@pytest.mark.slow
@pytest.mark.parametrize("method", ["kd", "at"])
def test_cache_returns_what_the_teacher_computes(tmp_path, teacher_dir, method):
    teacher = load_artifact(teacher_dir).model
    data = load_data("synthetic")
    student = create_model("convverytiny", num_classes=10, in_chans=3)
    d = build_distiller(method, student, teacher, input_shape=data.input_shape)
    key = cache_key(teacher_dir, data.identity, 0, d.teacher_layers())
    d.cache = TeacherCache(tmp_path, key, len(data.train))
    loader = data.loader("train", 256, train=True, seed=0)
    first = _batches(d.cache, d, loader, epoch=1)
    assert d.cache.misses == len(loader) and d.cache.hits == 0
    d.cache = TeacherCache(tmp_path, key, len(data.train))  # a later run: everything from disk
    again = _batches(d.cache, d, loader, epoch=1)
    assert d.cache.hits == len(loader) and d.cache.misses == 0
    for (x, logits, feats), (x2, logits2, feats2) in zip(first, again):
        assert torch.equal(x, x2)  # the same crops: the student sees what the teacher saw
        with torch.no_grad():
            assert torch.equal(logits2, teacher(x))  # logits bit for bit
        assert set(feats2) == set(feats) and all(torch.equal(feats[k], feats2[k]) for k in feats)
    if method == "at":  # features are stored in float16, and the filling run already used the rounded values
        assert feats2 and all(v.dtype == torch.float32 for v in feats2.values())
    d.cache.begin(2, next(iter(loader)) and loader.last_index)  # another epoch is not stored yet
    assert d.cache.lookup() is None
    d.close()


@pytest.mark.slow
def test_cached_distillation_trains_identically_and_skips_the_teacher(workdir, teacher_dir, tmp_path):
    cfg = dict(epochs=2, lr=0.05)
    plain = distill(teacher=teacher_dir, student="convverytiny", data=SYN, out=tmp_path / "plain", **cfg,
                    device="cpu")
    runs = [distill(teacher=teacher_dir, student="convverytiny", data=SYN, out=tmp_path / f"cached{i}", **cfg,
                    cache_teacher=True, cache_dir=tmp_path / "cache", temperature=4.0 + i, device="cpu")
            for i in range(2)]
    batches = 2 * len(load_data("synthetic").loader("train", 128, train=True))  # 2 epochs
    assert runs[0]["teacher_cache"]["misses"] == batches and runs[0]["teacher_cache"]["hits"] == 0
    assert runs[1]["teacher_cache"]["hits"] == batches and runs[1]["teacher_cache"]["misses"] == 0
    assert runs[0]["accuracy"] == plain["accuracy"] and runs[0]["history"][-1]["val_accuracy"] == \
        plain["history"][-1]["val_accuracy"]
    a, b = load_state_dict(tmp_path / "plain" / "model.safetensors"), load_state_dict(
        tmp_path / "cached0" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical weights with and without the cache
    assert "val_agreement" in runs[1]["history"][0]


@pytest.mark.slow
def test_a_changed_teacher_gets_a_fresh_cache(workdir, teacher_dir, tmp_path):
    other = tmp_path / "teacher2"
    teach(data=SYN, model="convtiny", out=other, epochs=1, lr=0.05, seed=1, device="cpu")
    cfg = dict(epochs=1, lr=0.05)
    first = distill(teacher=teacher_dir, student="convverytiny", data=SYN, out=tmp_path / "a", **cfg,
                    cache_teacher=True, cache_dir=tmp_path / "cache", device="cpu")
    second = distill(teacher=other, student="convverytiny", data=SYN, out=tmp_path / "b", **cfg,
                     cache_teacher=True, cache_dir=tmp_path / "cache", device="cpu")
    assert first["teacher_cache"]["dir"] != second["teacher_cache"]["dir"]
    assert second["teacher_cache"]["hits"] == 0 and second["teacher_cache"]["misses"] > 0
    # a different augmentation seed is a different key too
    third = distill(teacher=teacher_dir, student="convverytiny", data=SYN, out=tmp_path / "c",
                    epochs=1, lr=0.05, seed=5, cache_teacher=True, cache_dir=tmp_path / "cache",
                    device="cpu")
    assert third["teacher_cache"]["dir"] not in (first["teacher_cache"]["dir"], second["teacher_cache"]["dir"])
    # a damaged cache file is recomputed, never trusted
    shutil.rmtree(tmp_path / "a")
    for f in (tmp_path / "cache" / "teacher").glob("*/train-e1.safetensors"):
        f.write_bytes(b"garbage")
    again = distill(teacher=teacher_dir, student="convverytiny", data=SYN, out=tmp_path / "a", **cfg,
                    cache_teacher=True, cache_dir=tmp_path / "cache", device="cpu")
    assert again["teacher_cache"]["misses"] > 0 and again["accuracy"] == first["accuracy"]


def test_cache_is_offline_only(teacher_dir, tmp_path):
    with pytest.raises(CompressorError, match="offline only"):
        distill(teacher=teacher_dir, student="convverytiny", data=SYN, out=tmp_path / "x", scheme="self",
                cache_teacher=True, epochs=1, device="cpu")
