"""Tests of evaluate.metrics against hand-computed values and a straightforward restatement."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evaluate import metrics
from pipeline.bench.evaluate_bench import make_data, reference_ap_loop
from evaluate.metrics import average_precision, compute, top_k_hits

# --------------------------------------------------------------------------------------------
# independent restatement of REFERENCE.md sections 2.1-2.5 (loops, stable sorts)


def ref_ap(scores, targets) -> np.ndarray:
    """Section 2.2 per class: stable descending torch.sort, cumsum, precision at positives.

    The precisions at the positives are added one after another in rank order (the order the
    product documents), so the product must match this bit for bit.
    """
    x = torch.as_tensor(np.asarray(scores))
    t = torch.as_tensor(np.asarray(targets), dtype=torch.float64)
    n, c = x.shape
    ap = np.zeros(c)
    for k in range(c):
        order = torch.sort(x[:, k], descending=True, stable=True).indices
        truth = t[order, k]
        precision = torch.cumsum(truth, 0) / torch.arange(1, n + 1, dtype=torch.float64)
        total = 0.0
        for p in precision[truth == 1].tolist():
            total += p
        ap[k] = total / max(float(truth.sum()), 1.0)
    return ap


def ref_hits(scores, targets, k) -> np.ndarray:
    """Section 2.4 per video: top-k by a stable descending argsort (lower class index first)."""
    x, t = np.asarray(scores), np.asarray(targets)
    return np.array([bool(t[i, np.argsort(-x[i], kind="stable")[:k]].any()) for i in range(len(x))])


def ref_compute(scores, targets, counts, head=500, tail=100) -> dict:
    x, t = np.asarray(scores), np.asarray(targets)
    c = x.shape[1]
    ap = ref_ap(x, t)
    group = ["tail" if n <= tail else "head" if n > head else "medium" for n in counts]
    hits1, hits5 = ref_hits(x, t, 1), ref_hits(x, t, 5)
    out = {"mAP": sum(ap) / c, "acc1": hits1.mean(), "acc5": hits5.mean(), "per_class_ap": ap}
    for g in ("head", "medium", "tail"):
        members = [k for k in range(c) if group[k] == g]
        out[g] = sum(ap[k] for k in members) / len(members) if members else math.nan
        rates = []
        for k in members:
            videos = [i for i in range(len(x)) if t[i, k] == 1]
            if videos:
                rates.append(sum(hits1[i] for i in videos) / len(videos))
        out[f"{g}_acc1"] = sum(rates) / len(rates) if rates else math.nan
        out[f"num_{g}"] = len(members)
    out["classes_without_positives"] = int(sum(t[:, k].sum() == 0 for k in range(c)))
    return out


def assert_same(got: dict, want: dict, tol=1e-6):
    np.testing.assert_allclose(got["per_class_ap"], want["per_class_ap"], rtol=0, atol=tol)
    for key in ("mAP", "acc1", "acc5", "head", "medium", "tail", "head_acc1", "medium_acc1", "tail_acc1"):
        if math.isnan(want[key]):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(want[key], abs=tol), key
    for key in ("num_head", "num_medium", "num_tail", "classes_without_positives"):
        assert got[key] == want[key], key


# --------------------------------------------------------------------------------------------
# hand-computed fixtures


def test_reference_ap_fixture_and_class_without_positives():
    scores = np.array([[0.9, 0.9], [0.8, 0.8], [0.7, 0.7], [0.6, 0.6], [0.5, 0.5]], np.float32)
    targets = np.array([[1, 0], [0, 0], [1, 0], [0, 0], [1, 0]])
    expected = (1 + 2 / 3 + 3 / 5) / 3
    ap = average_precision(scores, targets)
    assert ap[0] == pytest.approx(expected, abs=1e-12)
    assert ap[0] == pytest.approx(0.7556, abs=1e-4)
    assert ap[1] == 0.0
    out = compute(scores, targets, train_counts=[1000, 1000])
    assert out["classes_without_positives"] == 1
    assert out["mAP"] == pytest.approx(expected / 2, abs=1e-12)
    assert out["head"] == pytest.approx(expected / 2, abs=1e-12)
    assert out["per_class_ap"].dtype == np.float64 and out["per_class_ap"].shape == (2,)


def test_group_rule_and_group_means():
    # Every column ranks the videos 0, 1, 2, 3 (rank = row + 1).
    scores = np.tile(np.array([[0.9], [0.7], [0.5], [0.3]]), (1, 6))
    targets = np.array(
        [
            [1, 0, 1, 0, 0, 0],
            [0, 1, 0, 0, 0, 1],
            [0, 0, 1, 0, 0, 1],
            [0, 0, 0, 0, 1, 0],
        ]
    )
    ap_expected = [1, 1 / 2, (1 + 2 / 3) / 2, 0, 1 / 4, (1 / 2 + 2 / 3) / 2]
    counts = [100, 500, 501, 50, 300, 1000]  # tail, medium, head, tail, medium, head
    out = compute(scores, targets, counts, head=500, tail=100)
    np.testing.assert_allclose(out["per_class_ap"], ap_expected, atol=1e-12)
    assert out["tail"] == pytest.approx((1 + 0) / 2)
    assert out["medium"] == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert out["head"] == pytest.approx((5 / 6 + 7 / 12) / 2)
    assert out["mAP"] == pytest.approx(19 / 36)
    assert (out["num_head"], out["num_medium"], out["num_tail"]) == (2, 2, 2)
    assert out["classes_without_positives"] == 1


def test_empty_groups_are_nan():
    scores = np.array([[0.2, 0.8], [0.6, 0.4]])
    targets = np.array([[0, 1], [1, 0]])
    out = compute(scores, targets, [10, 20])  # all tail
    assert out["tail"] == pytest.approx(1.0)
    assert math.isnan(out["head"]) and math.isnan(out["medium"])
    assert math.isnan(out["head_acc1"]) and math.isnan(out["medium_acc1"])
    assert (out["num_head"], out["num_medium"], out["num_tail"]) == (0, 0, 2)


def _acc_example():
    scores = np.array(
        [
            [0.1, 0.9, 0.3, 0.2, 0.8, 0.0],  # labels {1}: top-1 hit
            [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # labels {4, 5}: top-1 miss, top-5 hit (class 4)
            [0.2, 0.1, 0.3, 0.4, 0.5, 0.9],  # labels {0, 5}: top-1 hit (class 5), counts once
            [0.9, 0.8, 0.7, 0.6, 0.5, 0.1],  # labels {5}: miss at 1 and 5
        ]
    )
    targets = np.array(
        [
            [0, 1, 0, 0, 0, 0],
            [0, 0, 0, 0, 1, 1],
            [1, 0, 0, 0, 0, 1],
            [0, 0, 0, 0, 0, 1],
        ]
    )
    return scores, targets


def test_acc1_acc5_multilabel():
    scores, targets = _acc_example()
    np.testing.assert_array_equal(top_k_hits(scores, targets, 1), [True, False, True, False])
    np.testing.assert_array_equal(top_k_hits(scores, targets, 5), [True, True, True, False])
    out = compute(scores, targets, [50] * 6)
    assert out["acc1"] == pytest.approx(0.5)
    assert out["acc5"] == pytest.approx(0.75)


def test_per_group_acc1():
    scores, targets = _acc_example()
    # Video hits @1: [1, 0, 1, 0]. Class 0: videos {2} -> 1; class 1: {0} -> 1; class 4: {1} -> 0;
    # class 5: {1, 2, 3} -> 1/3; classes 2 and 3 have no positives and are skipped.
    counts = [50, 600, 50, 600, 200, 50]  # tail {0, 2, 5}, head {1, 3}, medium {4}
    out = compute(scores, targets, counts)
    assert out["tail_acc1"] == pytest.approx((1 + 1 / 3) / 2)
    assert out["head_acc1"] == pytest.approx(1.0)
    assert out["medium_acc1"] == pytest.approx(0.0)
    out = compute(scores, targets, [50, 50, 600, 600, 50, 50])  # head = {2, 3}: no positives
    assert math.isnan(out["head_acc1"])
    assert out["head"] == 0.0


def test_tie_rules():
    # AP: equal scores -> lower row index ranks first.
    scores = np.full((3, 2), 0.5, np.float32)
    targets = np.array([[1, 0], [0, 0], [0, 1]])
    np.testing.assert_allclose(average_precision(scores, targets), [1.0, 1 / 3])
    # Acc@k: equal scores -> lower class index first.
    row = np.full((1, 7), 0.3)
    assert top_k_hits(row, np.eye(7)[[0]], 1)[0]
    assert not top_k_hits(row, np.eye(7)[[1]], 1)[0]
    assert top_k_hits(row, np.eye(7)[[4]], 5)[0]
    assert not top_k_hits(row, np.eye(7)[[5]], 5)[0]
    # A tie straddling the top-5 boundary, with larger scores in front.
    row = np.array([[0.1, 0.2, 0.2, 0.9, 0.2, 0.8, 0.2, 0.7]])  # top-5: 3, 5, 7, then 1, 2
    assert top_k_hits(row, np.eye(8)[[2]], 5)[0]
    assert not top_k_hits(row, np.eye(8)[[4]], 5)[0]
    # +0.0 and -0.0 are equal.
    scores = np.array([[0.0], [-0.0], [0.0]])
    np.testing.assert_allclose(average_precision(scores, [[0], [1], [0]]), [0.5])


# --------------------------------------------------------------------------------------------
# against the restatement on random and adversarial inputs


def _sparse_targets(rng, n, c, extra=0.3):
    t = np.zeros((n, c), np.int64)
    t[np.arange(n), rng.integers(0, c, n)] = 1
    more = rng.random(n) < extra
    t[np.flatnonzero(more), rng.integers(0, c, more.sum())] = 1
    return t


def _cases():
    rng = np.random.default_rng(1234)
    cases = {}
    n, c = 300, 40
    cases["random_float32"] = (rng.random((n, c), dtype=np.float32), _sparse_targets(rng, n, c))
    cases["ties_1_decimal"] = (
        np.round(rng.random((n, c)), 1).astype(np.float32),
        (rng.random((n, c)) < 0.2).astype(np.int64),
    )
    cases["ties_sparse"] = (np.round(rng.random((n, c)), 1).astype(np.float32), _sparse_targets(rng, n, c))
    sat = torch.sigmoid(torch.from_numpy(rng.normal(0, 30, (n, c)).astype(np.float32))).numpy()
    assert (sat == 1.0).any() and (sat == 0.0).any()
    cases["saturated_sigmoid"] = (sat, _sparse_targets(rng, n, c, extra=1.0))
    t = _sparse_targets(rng, n, c)
    t[:, 3] = 1  # all-positive class
    t[:, 5] = 0  # classes without positives
    t[:, 7] = 0
    cases["all_positive_and_empty"] = (rng.normal(0, 1e4, (n, c)).astype(np.float32), t)
    cases["multilabel_dense"] = (rng.random((n, c), dtype=np.float32), (rng.random((n, c)) < 0.5).astype(np.int64))
    cases["float64"] = (rng.random((n, c)), _sparse_targets(rng, n, c))
    cases["float64_ties_sparse"] = (np.round(rng.random((n, c)), 2), _sparse_targets(rng, n, c))
    # Distinct in float64 but equal once cast to float32.
    near = 0.5 + rng.integers(0, 4, (n, c)) * 1e-12
    assert len(np.unique(near.astype(np.float32))) == 1
    cases["float64_below_float32_resolution"] = (near, (rng.random((n, c)) < 0.3).astype(np.int64))
    cases["infinities_and_zeros"] = (
        rng.choice(np.array([-np.inf, -0.0, 0.0, 1.0, np.inf], np.float32), (n, c)),
        (rng.random((n, c)) < 0.3).astype(np.int64),
    )
    mixed = np.round(rng.normal(0, 2, (n, c)), 1).astype(np.float32)
    mixed[rng.random((n, c)) < 0.1] = np.float32(1e-45)  # smallest subnormals, both signs
    mixed[rng.random((n, c)) < 0.1] = np.float32(-1e-45)
    cases["negative_ties_subnormals"] = (mixed, (rng.random((n, c)) < 0.3).astype(np.int64))
    cases["n1"] = (rng.random((1, c), dtype=np.float32), _sparse_targets(rng, 1, c))
    cases["c1"] = (rng.random((n, 1), dtype=np.float32), (rng.random((n, 1)) < 0.1).astype(np.int64))
    cases["n1c1"] = (np.array([[0.3]], np.float32), np.array([[1]]))
    cases["no_positives_at_all"] = (rng.random((20, 6), dtype=np.float32), np.zeros((20, 6), np.int64))
    cases["constant_scores"] = (np.zeros((50, 9), np.float32), (rng.random((50, 9)) < 0.3).astype(np.int64))
    cases["int_scores"] = (rng.integers(-3, 3, (80, 12)), (rng.random((80, 12)) < 0.3).astype(np.int64))
    return cases


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_restatement(name):
    scores, targets = CASES[name]
    rng = np.random.default_rng(7)
    counts = rng.choice([40, 100, 101, 500, 501, 900], scores.shape[1])
    before = (scores.copy(), targets.copy())
    want = ref_compute(scores, targets, counts)
    got = compute(scores, targets, counts)
    assert_same(got, want)
    np.testing.assert_array_equal(got["per_class_ap"], want["per_class_ap"])  # bit for bit
    np.testing.assert_array_equal(scores, before[0])  # inputs are never modified
    np.testing.assert_array_equal(targets, before[1])
    np.testing.assert_array_equal(top_k_hits(scores, targets, 1), ref_hits(scores, targets, 1))
    np.testing.assert_array_equal(top_k_hits(scores, targets, 5), ref_hits(scores, targets, 5))
    np.testing.assert_allclose(reference_ap_loop(scores, targets), want["per_class_ap"], atol=1e-12)


@pytest.mark.parametrize(
    "name",
    [
        "ties_1_decimal",
        "ties_sparse",
        "saturated_sigmoid",
        "infinities_and_zeros",
        "negative_ties_subnormals",
        "float64_ties_sparse",
        "int_scores",
    ],
)
def test_small_chunks_give_same_result(name, monkeypatch):
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 97)
    scores, targets = CASES[name]
    counts = np.full(scores.shape[1], 300)
    assert_same(compute(scores, targets, counts), ref_compute(scores, targets, counts))


# Every way the product can rank a positive (forced one at a time; they differ in speed only).
RANKING_WAYS = {
    "chosen_by_cost": {},
    "counting": {"_counting_pays": lambda npos, n: True},
    "sort_few_tied_values": {"_counting_pays": lambda npos, n: False},
    "sort_many_tied_values": {"_counting_pays": lambda npos, n: False, "_FEW_TIE_VALUES": 0},
    "one_thread_small_tiles": {"_workers": lambda: 1, "_TILE_ROWS": 7, "_BLOCK_COLUMNS": 3},
    "three_threads_one_column_blocks": {"_workers": lambda: 3, "_BLOCK_COLUMNS": 1},
}


def _stable_ranks(scores, targets):
    """(class, row, rank) of every positive: position in a stable descending argsort of the column."""
    out = []
    for k in range(scores.shape[1]):
        position = np.empty(len(scores), np.int64)
        position[np.argsort(-scores[:, k], kind="stable")] = np.arange(1, len(scores) + 1)
        out += [(k, r, position[r]) for r in np.flatnonzero(targets[:, k])]
    return out


def _tie_heavy_case(rng, n, c, dtype):
    """Scores with few distinct values (and -0.0 / +0.0), per-class positive rates from none to all."""
    scores = np.round(rng.normal(0, 1, (n, c)), 1).astype(dtype)
    scores[rng.random((n, c)) < 0.2] = 0.0
    scores[rng.random((n, c)) < 0.2] = -0.0
    scores[:, 4] = 0.5  # one value for the whole column
    scores[:, 5] = np.round(rng.random(n), 3)  # many distinct tied values
    rate = rng.choice([0.0, 0.002, 0.02, 0.3, 0.9, 1.0], c)
    rate[:4] = [0.0, 1.0, 0.0, 1.0]  # classes without positives and all-positive classes
    targets = (rng.random((n, c)) < rate).astype(np.uint8)
    targets[:, 0] = targets[:, 2] = 0
    targets[:, 1] = targets[:, 3] = 1
    return scores, targets


@pytest.mark.parametrize("way", sorted(RANKING_WAYS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_ranking_way_equals_the_stable_sort_bit_for_bit(way, dtype, monkeypatch):
    for name, value in RANKING_WAYS[way].items():
        monkeypatch.setattr(metrics, name, value)
    rng = np.random.default_rng(2024)
    scores, targets = _tie_heavy_case(rng, 700, 24, dtype)
    x, _, rows, cls = metrics._validate(scores, targets)
    by_class = np.argsort(cls, kind="stable")
    rows, cls = rows[by_class], cls[by_class]
    ranks = metrics._positive_ranks(x, rows, cls, np.bincount(cls, minlength=x.shape[1]))
    assert list(zip(cls.tolist(), rows.tolist(), ranks.tolist())) == _stable_ranks(scores, targets)
    ap = average_precision(scores, targets)
    np.testing.assert_array_equal(ap, ref_ap(scores, targets))
    assert ap[0] == ap[2] == 0.0 and ap[1] == ap[3] == 1.0  # no positives: 0; every video positive: 1
    # REFERENCE.md section 9: precisions 1, 2/3, 3/5 at the positives -> AP 0.7556; no positive -> 0.
    toy = np.array([[0.9], [0.8], [0.7], [0.6], [0.5]], dtype)
    fixture = average_precision(np.hstack([toy, toy]), [[1, 0], [0, 0], [1, 0], [0, 0], [1, 0]])
    assert fixture[0] == pytest.approx(0.7556, abs=5e-5) and fixture[1] == 0.0
    assert fixture[0] == (1 + 2 / 3 + 3 / 5) / 3


@pytest.mark.parametrize("way", ["counting", "sort_few_tied_values", "sort_many_tied_values"])
def test_ranking_ways_on_the_restatement_cases(way, monkeypatch):
    for name, value in RANKING_WAYS[way].items():
        monkeypatch.setattr(metrics, name, value)
    for scores, targets in CASES.values():
        np.testing.assert_array_equal(average_precision(scores, targets), ref_ap(scores, targets))


def test_torch_input_and_logits_equal_probabilities():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, (200, 30)).astype(np.float32)
    targets = _sparse_targets(rng, 200, 30)
    counts = np.full(30, 200)
    from_numpy = compute(logits, targets, counts)
    from_torch = compute(torch.from_numpy(logits), torch.from_numpy(targets), torch.from_numpy(counts))
    probs = compute(torch.sigmoid(torch.from_numpy(logits).double()), targets, counts)
    assert_same(from_torch, from_numpy, tol=0)
    assert_same(probs, from_numpy, tol=1e-12)  # float64 sigmoid keeps these logits distinct
    half = torch.from_numpy(logits).half()
    assert_same(compute(half, targets, counts), ref_compute(half.float().numpy(), targets, counts))


def test_ap_matches_counting_formula_without_ties():
    """AP = mean over positives p of #(positives scoring >= s_p) / #(videos scoring >= s_p)."""
    rng = np.random.default_rng(11)
    n, c = 150, 12
    scores = rng.permutation(n * c).reshape(n, c).astype(np.float64) / (n * c)
    targets = (rng.random((n, c)) < 0.15).astype(np.int64)
    expected = []
    for k in range(c):
        s, t = scores[:, k], targets[:, k]
        terms = [((s >= s[i]) & (t == 1)).sum() / (s >= s[i]).sum() for i in np.flatnonzero(t)]
        expected.append(np.mean(terms) if terms else 0.0)
    np.testing.assert_allclose(average_precision(scores, targets), expected, atol=1e-12)


def test_bench_data_against_loop_small():
    scores, targets, counts = make_data(2000, 60, seed=5)
    assert (targets.sum(axis=0) >= 1).all()
    assert 1.0 < targets.sum() / len(targets) < 1.25
    out = compute(scores, targets, counts)
    assert out["classes_without_positives"] == 0
    np.testing.assert_allclose(out["per_class_ap"], reference_ap_loop(scores, targets), atol=1e-12)


# --------------------------------------------------------------------------------------------
# validation


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(3, 5\)"):
        compute(np.zeros((3, 4)), np.zeros((3, 5)), [1] * 4)
    with pytest.raises(ValueError, match="2-D"):
        average_precision(np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match="train_counts"):
        compute(np.zeros((3, 4)), np.zeros((3, 4)), [1] * 3)
    with pytest.raises(ValueError, match="at least one"):
        compute(np.zeros((0, 4)), np.zeros((0, 4)), [1] * 4)


def test_nan_and_bad_targets_are_rejected():
    scores = np.zeros((3, 2), np.float32)
    scores[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        compute(scores, np.zeros((3, 2)), [1, 1])
    with pytest.raises(ValueError, match="NaN"):
        top_k_hits(torch.from_numpy(scores), np.zeros((3, 2)), 1)
    with pytest.raises(ValueError, match="0 and 1"):
        average_precision(np.zeros((2, 2)), np.array([[0, 2], [1, 0]]))
    with pytest.raises(ValueError, match="k must be"):
        top_k_hits(np.zeros((2, 2)), np.zeros((2, 2)), 0)
