"""Label-free expert weights from the agreement of two views, the saturation-safe mix, and the evaluate
stage's refit on each test profile."""

import numpy as np
import pytest

from evaluate import agreement
from evaluate.agreement import agreement_weights, centred_cosine, mix_logits, simplex_grid, view_agreement


def test_agreement_picks_the_expert_whose_two_views_agree():
    rng = np.random.default_rng(0)
    stable = rng.normal(0, 3, (50, 7))
    noisy_a, noisy_b = rng.normal(0, 3, (50, 7)), rng.normal(0, 3, (50, 7))
    weights, score = agreement_weights([stable, noisy_a], [stable, noisy_b], step=0.25)
    assert weights.tolist() == [1.0, 0.0]
    assert score == pytest.approx(1.0)  # identical views: cosine 1 for every video


def test_agreement_weights_lie_on_the_grid_of_the_simplex_and_are_deterministic():
    rng = np.random.default_rng(1)
    a = [rng.normal(size=(40, 5)) for _ in range(3)]
    b = [v + 0.5 * rng.normal(size=(40, 5)) * (i + 1) for i, v in enumerate(a)]
    w1, s1 = agreement_weights(a, b, step=0.1)
    w2, s2 = agreement_weights(a, b, step=0.1)
    assert np.array_equal(w1, w2) and s1 == s2
    assert w1.sum() == pytest.approx(1.0) and (w1 >= 0).all()
    assert np.allclose(w1 * 10, np.round(w1 * 10))
    # no grid point agrees more (an independent exhaustive check)
    grid = [np.array([i, j, 10 - i - j]) / 10 for i in range(11) for j in range(11 - i)]
    assert len(simplex_grid(3, 0.1)) == len(grid) == 66
    assert s1 >= max(view_agreement(a, b, w) for w in grid) - 1e-12


def test_an_experts_prior_alone_is_not_agreement():
    """A constant offset per class (the same for every video) agrees perfectly but carries no information:
    with each class's mean removed it scores no better than noise."""
    rng = np.random.default_rng(2)
    prior = np.broadcast_to(rng.normal(0, 4, (1, 6)), (30, 6))
    informative = rng.normal(0, 2, (30, 6))
    a = [prior + 0.01 * rng.normal(size=(30, 6)), informative + 0.3 * rng.normal(size=(30, 6))]
    b = [prior + 0.01 * rng.normal(size=(30, 6)), informative + 0.3 * rng.normal(size=(30, 6))]
    weights, _ = agreement_weights(a, b, step=0.5)
    assert weights.tolist() == [0.0, 1.0]


def test_centred_cosine_by_hand():
    # column means (2, 1) and (1, 2): centred a = [[-1, 1], [1, -1]], b = [[1, 1], [-1, -1]] -> cosines 0, 0;
    # with b = a the cosine is 1 for each row
    a = np.array([[1.0, 2.0], [3.0, 0.0]])
    b = np.array([[2.0, 3.0], [0.0, 1.0]])
    assert centred_cosine(a, b) == pytest.approx(0.0, abs=1e-12)
    assert centred_cosine(a, a) == pytest.approx(1.0)
    assert centred_cosine(a, -a + 7) == pytest.approx(-1.0)


def test_mix_logits_is_the_logit_of_the_weighted_probability_average_and_survives_saturation():
    logits = np.array([[[0.0, 2.0, -1.0]], [[1.0, -3.0, 0.5]]])  # (E=2, N=1, C=3)
    w = np.array([0.3, 0.7])
    p = 0.3 / (1 + np.exp(-logits[0])) + 0.7 / (1 + np.exp(-logits[1]))
    assert np.allclose(mix_logits(logits, w), np.log(p / (1 - p)))
    saturated = np.array([[[60.0, -60.0]], [[70.0, -70.0]]])  # p = 1 - ~1e-26: 1 - p is 0 in float64
    out = mix_logits(saturated, np.array([0.5, 0.5]))
    assert np.isfinite(out).all() and out[0, 0] > 59 and out[0, 1] < -59
    # a zero weight drops its expert
    assert np.allclose(mix_logits(logits, np.array([0.0, 1.0])), logits[1])


def test_sigmoid_matches_the_textbook_formula():
    x = np.linspace(-30, 30, 61)
    assert np.allclose(agreement.sigmoid(x), 1 / (1 + np.exp(-x)), rtol=1e-12, atol=0)


def _per_profile_case(n_per_class=150, seed=0):
    """Three classes trained on 100 / 20 / 1 videos, 150 test videos each. Expert ``h``'s two views agree on
    class-0 and class-1 videos and are independent noise on class-2 videos; expert ``t`` the other way round."""
    rng = np.random.default_rng(seed)
    counts = np.array([100, 20, 1])
    labels = np.repeat(np.arange(3), n_per_class)
    targets = np.eye(3, dtype=np.uint8)[labels]
    tail_video = labels == 2
    views = {}
    for name, agrees in (("h", ~tail_video), ("t", tail_video)):
        a = rng.normal(0, 2, (len(labels), 3))
        b = np.where(agrees[:, None], a, rng.normal(0, 2, (len(labels), 3)))
        views[name] = (a, b)
    scores = {name: targets * 2.0 + rng.normal(0, 1.5, targets.shape) for name in views}
    return views, scores, targets, counts


def test_the_refit_follows_each_test_profile_and_reads_only_its_rows():
    from evaluate import metrics, profiles
    from evaluate.config import EvaluateConfig
    from evaluate.stage import agreement_per_profile

    views, scores, targets, counts = _per_profile_case()
    cfg = EvaluateConfig()
    out = agreement_per_profile(cfg, views, scores, "logits", 0.1, targets, counts, head=50, tail=5)
    # long-tailed test videos are almost all classes 0/1, where h's views agree; inverse ones class 2
    assert out["weights"]["long_tailed"] == {"h": 1.0, "t": 0.0}
    assert out["weights"]["inverse"] == {"h": 0.0, "t": 1.0}
    assert set(out["profiles"]) == set(cfg.test_profiles)
    for name in cfg.test_profiles:  # each profile: the weights of agreement_weights on that profile's rows alone
        rows = profiles.resample(targets, name, counts, cfg.profile_seed)
        w, _ = agreement_weights([views[e][0][rows] for e in "ht"], [views[e][1][rows] for e in "ht"], 0.1)
        assert list(out["weights"][name].values()) == w.tolist()
        mixed = np.log(sum(wi / (1 + np.exp(-scores[e][rows])) for wi, e in zip(w, "ht")) /
                       sum(wi / (1 + np.exp(scores[e][rows])) for wi, e in zip(w, "ht")))
        expected = metrics.compute(mixed.astype(np.float32), targets[rows], counts, head=50, tail=5)
        assert out["profiles"][name]["mAP"] == pytest.approx(expected["mAP"], abs=1e-9)
    assert out["mAP"] == out["profiles"]["as_is"]["mAP"]


def test_probability_scores_are_averaged_directly():
    from evaluate import metrics
    from evaluate.config import EvaluateConfig
    from evaluate.stage import agreement_per_profile

    views, scores, targets, counts = _per_profile_case(seed=1)
    probabilities = {e: 1 / (1 + np.exp(-s)) for e, s in scores.items()}
    out = agreement_per_profile(EvaluateConfig(test_profiles=["as_is"]), views, probabilities, "probabilities", 0.5,
                                targets, counts, head=50, tail=5)
    w = list(out["weights"]["as_is"].values())
    expected = metrics.compute((w[0] * probabilities["h"] + w[1] * probabilities["t"]).astype(np.float32), targets,
                               counts, head=50, tail=5)
    assert out["mAP"] == pytest.approx(expected["mAP"], abs=1e-9)
