import pytest
import torch

from compressor.discriminability import DiscriminabilityAccumulator, channel_discriminability


def test_channel_score_matches_hand_computed_example():
    # 2 classes, 2 channels, 1x2 positions.
    # channel 0: class 0 values [[1, 2], [3, 4]] (two samples) -> mean (2, 3); class 1: [[5, 6]] -> (5, 6)
    #   per-position population std of (2, 5) and (3, 6): 1.5, 1.5 -> score 1.5
    # channel 1: identical in both classes -> score 0
    f = torch.tensor([
        [[[1.0, 2.0]], [[7.0, 7.0]]],
        [[[3.0, 4.0]], [[7.0, 7.0]]],
        [[[5.0, 6.0]], [[7.0, 7.0]]],
    ])
    labels = torch.tensor([0, 0, 1])
    scores = channel_discriminability(f, labels, num_classes=2)
    assert scores.tolist() == pytest.approx([1.5, 0.0])


def test_three_classes_population_std_and_position_average():
    # one channel, two positions; class means at position 0: 0, 3, 6 -> pop std sqrt(6); position 1: all 1 -> 0
    f = torch.tensor([[[[0.0, 1.0]]], [[[3.0, 1.0]]], [[[6.0, 1.0]]]])
    scores = channel_discriminability(f, torch.tensor([0, 1, 2]), num_classes=3)
    assert scores.item() == pytest.approx(6 ** 0.5 / 2, rel=1e-6)


def test_streaming_equals_one_shot_and_absent_classes_are_ignored():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(40, 6, 3, 3, generator=g)
    y = torch.randint(0, 4, (40,), generator=g)
    acc = DiscriminabilityAccumulator(num_classes=7)  # classes 4..6 never appear
    for i in range(0, 40, 7):
        acc.update(f[i:i + 7], y[i:i + 7])
    assert torch.allclose(acc.scores(), channel_discriminability(f, y, 4), atol=1e-6)
