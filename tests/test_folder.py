"""Folders of photographs, streamed (issue #11): timm's pipeline in DataLoader workers, a training
view a pure function of (seed, epoch, index) whatever --workers and the batch size, so the teacher
cache and bit-exact resume hold with workers."""

import pytest
import torch

from compressor import CompressorError
from compressor.artifacts import load_state_dict
from compressor.data import load_data
from compressor.stages import distill, teach

FOLDER = dict(data="imagefolder", image_size=32, device="cpu")


def _batches(data, batch_size: int, epoch: int, n: int, seed: int = 3):
    loader = data.loader("train", batch_size, train=True, seed=seed)
    loader.set_epoch(epoch)
    out, idx = [], []
    for i, (x, y) in enumerate(loader):
        out.append(x)
        idx.append(loader.last_index)
        if i + 1 == n:
            break
    return torch.cat(out), torch.cat(idx)


def test_workers_and_batch_size_do_not_change_a_view(photo_folder):
    zero = load_data("imagefolder", photo_folder, image_size=32, workers=0, pipeline={"auto_augment": "rand-m9-mstd0.5",
                                                                                     "reprob": 0.25})
    two = load_data("imagefolder", photo_folder, image_size=32, workers=2, pipeline={"auto_augment": "rand-m9-mstd0.5",
                                                                                    "reprob": 0.25})
    x0, i0 = _batches(zero, 16, epoch=2, n=2)
    x2, i2 = _batches(two, 16, epoch=2, n=2)
    assert torch.equal(i0, i2) and torch.equal(x0, x2)  # --workers 2 == --workers 0, bit for bit
    x8, _ = _batches(two, 8, epoch=2, n=4)
    assert torch.equal(x8, x0)  # batch size 8 or 16: the same views
    x3, i3 = _batches(zero, 16, epoch=3, n=2)
    assert not torch.equal(i3, i0)  # another epoch: another order...
    view = {int(i): x for i, x in zip(i0, x0)}
    again = {int(i): x for i, x in zip(i3, x3)}
    common = sorted(set(view) & set(again))
    assert common and any(not torch.equal(view[i], again[i]) for i in common)  # ...and other views
    assert x0.shape[1:] == (3, 32, 32) and zero.input_shape == [3, 32, 32]
    rng = torch.get_rng_state()
    _batches(zero, 16, epoch=2, n=1)
    assert torch.equal(rng, torch.get_rng_state())  # the caller's generators are left as they were


def test_evaluation_resizes_then_crops_the_centre(photo_folder):
    d = load_data("imagefolder", photo_folder, image_size=32, workers=0)
    a, _ = next(iter(d.loader("test", 8)))
    b, _ = next(iter(d.loader("test", 8)))
    assert torch.equal(a, b) and a.shape == (8, 3, 32, 32)
    assert d.identity["pipeline"]["crop_pct"] == 0.875 and d.mean == [0.485, 0.456, 0.406]


def test_the_images_standing_for_a_folder_split_hold_every_class(tmp_path):
    """A folder is listed class by class; where only some images of a split are used (--train-size,
    select's --samples, export's calibration batches) they are a fixed sample of every class, not the
    first classes' files. The listing is part of the data identity: a renamed file changes it."""
    from helpers import write_photo_folder

    root = write_photo_folder(tmp_path / "photos", per_class=24, classes=4)
    d = load_data("imagefolder", root, image_size=32, workers=0, train_size=16)
    assert len(d.train) == 16 and set(d.train.labels.tolist()) == {0, 1, 2, 3}
    assert d.train.labels.tolist() == sorted(d.train.labels.tolist())  # kept in listing order
    _, calibration = next(iter(d.loader("test", 16, limit=16)))
    assert set(calibration.tolist()) == {0, 1, 2, 3}
    again = load_data("imagefolder", root, image_size=32, workers=0, train_size=16)
    assert again.train.files == d.train.files and again.identity == d.identity  # the same sample every time
    first = sorted((root / "train").rglob("*.jpg"))[0]
    first.rename(first.with_name("renamed.jpg"))
    assert load_data("imagefolder", root, image_size=32, workers=0, train_size=16).identity["files"] != d.identity["files"]


def test_augmentation_options_are_for_photographs_only(tmp_path):
    with pytest.raises(CompressorError, match="--auto-augment applies only to --data imagefolder"):
        teach(data="synthetic", model="convverytiny", auto_augment="rand-m9-mstd0.5", out=tmp_path / "t")
    from helpers import write_photo_folder

    root = write_photo_folder(tmp_path / "p", per_class=2, val_per_class=1)
    with pytest.raises(CompressorError, match="not a timm augmentation policy"):
        teach(model="convverytiny", data_root=root, auto_augment="bogus", out=tmp_path / "t", **FOLDER)


@pytest.mark.slow
def test_teacher_cache_with_workers_trains_identically(photo_folder, tmp_path):
    common = dict(data_root=photo_folder, workers=2, **FOLDER)
    teach(model="convverytiny", epochs=1, out=tmp_path / "t", **common)
    cfg = dict(teacher=tmp_path / "t", student="convverytiny", epochs=2, **common)
    plain = distill(out=tmp_path / "plain", **cfg)
    runs = [distill(out=tmp_path / f"cached{i}", cache_teacher=True, cache_dir=tmp_path / "cache", **cfg)
            for i in range(2)]
    assert runs[0]["teacher_cache"]["hits"] == 0 and runs[1]["teacher_cache"]["misses"] == 0
    for run in ("cached0", "cached1"):
        a, b = load_state_dict(tmp_path / "plain" / "model.safetensors"), load_state_dict(
            tmp_path / run / "model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), run  # with and without the cache, bit for bit
    assert runs[1]["accuracy"] == plain["accuracy"]


@pytest.mark.slow
def test_resume_mid_epoch_with_workers_is_bit_exact(photo_folder, tmp_path, monkeypatch):
    from compressor.training import loop as training
    from test_training import _stop_at_check

    cfg = dict(model="convverytiny", epochs=2, batch_size=16, data_root=photo_folder, workers=2, **FOLDER)
    teach(out=tmp_path / "straight", **cfg)
    real = training.StopSignals
    monkeypatch.setattr(training, "StopSignals", _stop_at_check(10))  # 6 steps + epoch end, then step 3
    with pytest.raises(CompressorError, match="stopped by SIGTERM at epoch 2 step 3"):
        teach(out=tmp_path / "resumed", **cfg)
    monkeypatch.setattr(training, "StopSignals", real)
    teach(out=tmp_path / "resumed", resume=True, **cfg)
    a = load_state_dict(tmp_path / "straight" / "model.safetensors")
    b = load_state_dict(tmp_path / "resumed" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_fixed_size_vit_is_built_for_the_data_size(tmp_path):
    """timm models built for one input size (ViT) are built for the data's size, and rebuild from model.json."""
    from compressor.artifacts import load_artifact
    from compressor.stages import evaluate

    m = teach(data="synthetic", model="vit_tiny_patch16_224", image_size=32, epochs=0, out=tmp_path / "vit",
              device="cpu")
    art = load_artifact(tmp_path / "vit")  # model.json's kwargs rebuild it; weights load strictly
    assert art.spec.kwargs == {"img_size": 32} and art.spec.input_shape == [3, 32, 32]
    assert abs(evaluate(tmp_path / "vit", data="synthetic", device="cpu")["accuracy"] - m["accuracy"]) < 1e-6


def test_pretrained_config_sets_normalization_size_and_crop(photo_folder):
    from compressor.stages.common import adopt_pretrained

    d = load_data("imagefolder", photo_folder, workers=0)
    adopt_pretrained(d, "vit_tiny_patch16_224", given=set())
    assert d.mean == [0.5, 0.5, 0.5] and d.image_size == 224 and d.pipeline["interpolation"] == "bicubic"
    assert d.pipeline["crop_pct"] == 0.9 and d.identity["image_size"] == 224
    kept = load_data("imagefolder", photo_folder, image_size=64, workers=0)
    adopt_pretrained(kept, "resnet18", given={"image_size"})
    assert kept.image_size == 64 and kept.mean == [0.485, 0.456, 0.406]
