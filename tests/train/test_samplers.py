"""Tests for train.samplers: CBS / SRS class-aware re-sampling and the loss mask (REFERENCE 3.5)."""

from collections import Counter

import numpy as np
import pytest
import torch

from train.samplers import ClassAwareSampler, resample_mask, resort

# class c has N_PER_CLASS[c] single-label videos; two extra multi-label videos; class 5 has none
N_PER_CLASS = [400, 100, 25, 4, 1]
NUM_CLASSES = 6


def make_labels():
    labels = [[c] for c, n in enumerate(N_PER_CLASS) for _ in range(n)]
    labels += [[0, 3], [2, 3, 2]]  # duplicate label counted once
    return labels


def class_video_counts(labels):
    counts = np.zeros(NUM_CLASSES)
    for lab in labels:
        for c in set(lab):
            counts[c] += 1
    return counts


def test_cbs_uniform_over_classes_with_videos():
    labels = make_labels()
    s = ClassAwareSampler(labels, NUM_CLASSES, "cbs", num_samples=60000, seed=1)
    assert len(s) == 60000
    draws = list(s)
    assert len(draws) == 60000
    freq = Counter(c for _, c in draws)
    assert 5 not in freq  # a class without videos is never drawn
    for c in range(5):
        assert freq[c] / 60000 == pytest.approx(0.2, abs=0.01)
    for v, c in draws[:2000]:
        assert c in labels[v]


def test_srs_sqrt_proportional():
    labels = make_labels()
    counts = class_video_counts(labels)
    s = ClassAwareSampler(labels, NUM_CLASSES, "srs", num_samples=60000, seed=2)
    np.testing.assert_allclose(s.class_probs, np.sqrt(counts) / np.sqrt(counts).sum())
    videos, classes = s.draw()
    freq = np.bincount(classes, minlength=NUM_CLASSES) / len(classes)
    np.testing.assert_allclose(freq, np.sqrt(counts) / np.sqrt(counts).sum(), atol=0.01)


def test_video_uniform_within_class():
    labels = make_labels()
    s = ClassAwareSampler(labels, NUM_CLASSES, "cbs", num_samples=50000, seed=3)
    videos, classes = s.draw()
    # class 3 has 6 videos (4 single-label + 2 multi-label): each ~1/6 of the class-3 draws
    sel = videos[classes == 3]
    vids = sorted(v for v, lab in enumerate(labels) if 3 in lab)
    assert sorted(set(sel.tolist())) == vids
    share = np.array([np.mean(sel == v) for v in vids])
    np.testing.assert_allclose(share, 1 / 6, atol=0.03)


def test_default_length_and_determinism():
    labels = make_labels()
    a = ClassAwareSampler(labels, NUM_CLASSES, "srs", seed=7)
    b = ClassAwareSampler(labels, NUM_CLASSES, "srs", seed=7)
    assert len(a) == len(labels)
    assert list(a) == list(b)
    assert list(a) == list(a)  # re-iterating the same epoch repeats it
    e0 = list(a)
    a.set_epoch(1)
    e1 = list(a)
    assert e1 != e0
    b.set_epoch(1)
    assert list(b) == e1
    c = ClassAwareSampler(labels, NUM_CLASSES, "srs", seed=8)
    assert list(c) != e0
    # seed + epoch
    d = ClassAwareSampler(labels, NUM_CLASSES, "srs", seed=6)
    d.set_epoch(2)
    a.set_epoch(1)
    assert list(d) == list(a)


def test_sampler_errors():
    with pytest.raises(ValueError, match="cbs"):
        ClassAwareSampler([[0]], 2, "uniform")
    with pytest.raises(ValueError):
        ClassAwareSampler([[3]], 2, "cbs")


def test_resample_mask_values():
    y = torch.tensor([[1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]])
    mask = resample_mask(y, torch.tensor([3, 1]))
    expected = torch.tensor([[0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    torch.testing.assert_close(mask, expected)
    # chosen class as a list
    torch.testing.assert_close(resample_mask(y, [0, 1]), torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0] * 4]))


def chi_square(drawn: np.ndarray, probs: np.ndarray) -> float:
    """Pearson's statistic of draw counts against expected probabilities (classes with p > 0)."""
    expected = probs * drawn.sum()
    keep = expected > 0
    return float((((drawn - expected) ** 2)[keep] / expected[keep]).sum())


CHI2_4DF_999 = 18.47  # 99.9 % quantile of chi-square with 4 degrees of freedom (5 drawable classes)


def test_inv_reverses_the_label_frequencies():
    labels = make_labels()
    counts = class_video_counts(labels)  # [401, 100, 26, 6, 1, 0]
    s = ClassAwareSampler(labels, NUM_CLASSES, "inv", num_samples=60000, seed=4)
    mirrored = np.array([1, 6, 26, 100, 401, 0], dtype=float)  # class 5 has no video: never drawn
    np.testing.assert_allclose(s.class_probs, mirrored / mirrored.sum())
    np.testing.assert_allclose(s.class_probs[:5], resort(counts[:5]) / counts[:5].sum())
    videos, classes = s.draw()
    drawn = np.bincount(classes, minlength=NUM_CLASSES)
    assert drawn[5] == 0 and chi_square(drawn, s.class_probs) < CHI2_4DF_999
    assert all(c in labels[v] for v, c in zip(videos, classes))  # the drawn class decides the video


@pytest.mark.parametrize("mode", ["cbs", "srs", "inv"])
def test_class_frequencies_pass_a_chi_square_test(mode):
    labels = make_labels()
    s = ClassAwareSampler(labels, NUM_CLASSES, mode, num_samples=20000)
    _, classes = s.draw(np.random.default_rng(11))
    assert chi_square(np.bincount(classes, minlength=NUM_CLASSES), s.class_probs) < CHI2_4DF_999
    wrong = s.class_probs[:5] * [1.3, 0.7, 1.3, 0.7, 1.3]  # the test can fail: a distorted distribution is rejected
    assert chi_square(np.bincount(classes, minlength=NUM_CLASSES)[:5], wrong / wrong.sum()) > CHI2_4DF_999


def test_multi_label_videos_keep_all_their_labels():
    labels = [[0]] * 50 + [[1, 2]] * 2 + [[2]] * 3
    s = ClassAwareSampler(labels, 3, "inv", num_samples=5000)
    videos, classes = s.draw(np.random.default_rng(0))
    # the multi-label videos 50, 51 come from class 1 draws (always) and class 2 draws (2 of 5 videos)
    multi = np.isin(videos, [50, 51])
    assert set(classes[multi]) == {1, 2}
    assert multi[classes == 1].all() and multi[classes == 2].mean() == pytest.approx(0.4, abs=0.05)


def test_draw_with_a_given_generator():
    labels = make_labels()
    s = ClassAwareSampler(labels, NUM_CLASSES, "cbs")
    first = s.draw(np.random.default_rng([1, 2, 3]))
    assert all(np.array_equal(a, b) for a, b in zip(first, s.draw(np.random.default_rng([1, 2, 3]))))
    assert not np.array_equal(first[0], s.draw(np.random.default_rng([1, 3, 3]))[0])
