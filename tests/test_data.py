import os
from pathlib import Path

import pytest
import torch

from compressor import CompressorError
from compressor.data import FASHION_MNIST_DEFAULT_ROOT, load_data


def test_synthetic_is_deterministic_and_split():
    a, b = load_data("synthetic"), load_data("synthetic")
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.val.labels, b.val.labels)
    assert len(a.train) + len(a.val) == 4000 and len(a.test) == 400
    assert a.num_classes == 10 and a.input_shape == [3, 16, 16]
    # validation indices never appear in training: split is disjoint
    assert len(a.val) == 400


def test_augmentation_is_a_function_of_seed_epoch_index():
    d = load_data("synthetic")
    l1, l2 = d.loader("train", 64, train=True, seed=3), d.loader("train", 64, train=True, seed=3)
    l1.set_epoch(2), l2.set_epoch(2)
    x1, _ = next(iter(l1))
    x2, _ = next(iter(l2))
    assert torch.equal(x1, x2)
    l2.set_epoch(3)
    assert not torch.equal(l1.augmentation(torch.arange(50))[0], l2.augmentation(torch.arange(50))[0])
    other_seed = d.loader("train", 64, train=True, seed=4)
    other_seed.set_epoch(2)
    assert not torch.equal(l1.augmentation(torch.arange(50))[0], other_seed.augmentation(torch.arange(50))[0])
    # per sample, not per batch: sample i gets the same crop whatever batch it lands in, others differ
    idx = torch.tensor([7, 3, 1000])
    full = l1.augmentation(torch.arange(len(d.train)))
    part = l1.augmentation(idx)
    assert all(torch.equal(full[k][idx], part[k]) for k in range(3))
    offsets = torch.stack(full[:2], 1)
    assert len(torch.unique(offsets, dim=0)) > 10  # indices get different crops
    small = d.loader("train", 16, train=True, seed=3)
    small.set_epoch(2)
    xs = torch.cat([x for x, _ in small][:4])
    assert torch.equal(xs, x1)  # batch size 16 or 64: the same images, cropped the same


def test_eval_loader_is_normalized_with_training_stats():
    d = load_data("synthetic")
    x = torch.cat([x for x, _ in d.loader("train", 500)])
    assert x.mean().abs() < 0.05 and (x.std() - 1).abs() < 0.1


def test_image_size_resizes_on_the_fly():
    d = load_data("synthetic", image_size=24)
    x, _ = next(iter(d.loader("test", 8)))
    assert x.shape == (8, 3, 24, 24) and d.input_shape == [3, 24, 24]


def test_missing_root_is_one_clear_error(tmp_path):
    with pytest.raises(CompressorError, match="does not exist"):
        load_data("fashion-mnist", tmp_path / "nope")
    with pytest.raises(CompressorError, match="unknown data"):
        load_data("mnist2")


def test_imagefolder(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for c, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (20, 20), color).save(tmp_path / split / c / f"{i}.png")
    d = load_data("imagefolder", tmp_path, image_size=16)
    assert d.class_names == ["cat", "dog"] and d.input_shape == [3, 16, 16] and len(d.test) == 6
    (tmp_path / "val" / "cow").mkdir()
    with pytest.raises(CompressorError, match="has classes"):
        load_data("imagefolder", tmp_path)


@pytest.mark.skipif(not Path(FASHION_MNIST_DEFAULT_ROOT).is_dir() and not os.environ.get("CI"),
                    reason="apt-get install dataset-fashion-mnist (CI installs it)")
def test_fashion_mnist_from_debian_package():
    d = load_data("fashion-mnist")
    assert (len(d.train), len(d.val), len(d.test)) == (54000, 6000, 10000)
    assert d.input_shape == [1, 28, 28] and d.class_names[0] == "T-shirt/top"
    assert int(d.train.labels.max()) == 9
