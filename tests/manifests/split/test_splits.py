"""Split builders: Imbalanced-MiniKinetics200 reproduced exactly, exp/step profiles, groups."""

import numpy as np
import pandas as pd
import pytest

from manifests.split import profiles as splits
from manifests.groups import assign_groups, group_indices

# REFERENCE.md section 5.2: train videos and (head, medium, tail) per published factor.
MK_PUBLISHED = {0.01: (17170, (13, 86, 101)), 0.02: (19995, (15, 101, 84)),
                0.05: (25287, (19, 133, 48)), 0.1: (31152, (25, 172, 3))}


def mk_available_counts() -> np.ndarray:
    """Per original class counts consistent with the reference rank list: non-increasing along
    it, 399 for ranks 0 and 1 (a tie, as in the real lists), >= every published quota."""
    counts = np.zeros(200, dtype=int)
    for rank, cls in enumerate(splits.MINIKINETICS_RANK_ORDER):
        counts[cls] = 399 if rank < 2 else max(123, int(399 * 0.4 ** (rank / 199)))
    return counts


def mk_train_table(seed=0) -> pd.DataFrame:
    """A MiniKinetics-like train list whose lines are shuffled across classes (file order matters)."""
    counts = mk_available_counts()
    labels = np.repeat(np.arange(200), counts)
    np.random.default_rng(seed).shuffle(labels)
    return pd.DataFrame({"video_id": [f"v{i:05d}" for i in range(len(labels))],
                         "labels": [[int(c)] for c in labels], "split": "train"})


@pytest.fixture(scope="module")
def mk_videos():
    val = pd.DataFrame({"video_id": [f"val{i:04d}" for i in range(4999)],
                        "labels": [[c] for c in range(200) for _ in range(24 if c == 31 else 25)],
                        "split": "val"})
    return pd.concat([mk_train_table(), val], ignore_index=True)


@pytest.mark.parametrize("factor", sorted(MK_PUBLISHED))
def test_minikinetics_reproduces_published_sizes(mk_videos, factor):
    table, info = splits.build_split(mk_videos, 200, "minikinetics", factor)
    n_train, (head, medium, tail) = MK_PUBLISHED[factor]
    assert (table.split == "train").sum() == n_train
    assert (table.split == "val").sum() == 4999 and (table.split == "test").sum() == 4999
    counts = splits.train_counts(table, 200)
    groups = group_indices(counts, head=300, tail=40)
    assert (len(groups["head"]), len(groups["medium"]), len(groups["tail"])) == (head, medium, tail)
    assert info["rank_order"] == list(splits.MINIKINETICS_RANK_ORDER) and info["test_is_val"]


def test_minikinetics_quota_by_rank_and_first_videos_in_file_order(mk_videos):
    table, _ = splits.build_split(mk_videos, 200, "minikinetics", 0.01)
    counts = splits.train_counts(table, 200)
    # N_r = int(399 * 0.01 ** (r / 199)) for the class at rank r (REFERENCE.md: 399 389 380 372 363 ... 3)
    by_rank = counts[list(splits.MINIKINETICS_RANK_ORDER)]
    assert by_rank[:5].tolist() == [399, 389, 380, 372, 363] and by_rank[-1] == 3
    assert by_rank[100] == int(399 * 0.01 ** (100 / 199))
    train = mk_videos[mk_videos.split == "train"]
    cls = splits.MINIKINETICS_RANK_ORDER[150]
    expected = [v for v, labels in zip(train.video_id, train.labels) if labels == [cls]][:by_rank[150]]
    chosen = table[(table.split == "train") & (table.labels.map(lambda l: l == [cls]))].video_id
    assert chosen.tolist() == expected


def test_rank_order_falls_back_to_stable_sort_when_inconsistent():
    order, used_list = splits.rank_classes(np.array([5, 9, 9, 1]))
    assert order.tolist() == [1, 2, 0, 3] and not used_list
    assert splits.rank_classes(mk_available_counts())[1]


def test_exp_and_step_profiles():
    assert splits.exp_profile(100, 0.1, 3).tolist() == [100, 31, 10]  # 100 * 0.1 ** 0.5 = 31.6
    assert splits.step_profile(100, 0.1, 5).tolist() == [100, 100, 10, 10, 10]


def test_exp_profile_split_is_seeded_and_follows_profile():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(4), [50, 40, 40, 30])
    rng.shuffle(labels)
    videos = pd.DataFrame({"video_id": [f"v{i}" for i in range(len(labels))],
                           "labels": [[int(c)] for c in labels], "split": "train"})
    videos = pd.concat([videos, pd.DataFrame({"video_id": ["t0"], "labels": [[3]], "split": ["test"]})])
    a, info = splits.build_split(videos, 4, "exp", 0.1, max_per_class=20, seed=7)
    b, _ = splits.build_split(videos, 4, "exp", 0.1, max_per_class=20, seed=7)
    c, _ = splits.build_split(videos, 4, "exp", 0.1, max_per_class=20, seed=8)
    # rank by available count (stable): class 0 (50), 1 (40), 2 (40), 3 (30); N = 20, 9, 4, 2
    assert splits.train_counts(a, 4).tolist() == [20, 9, 4, 2]
    assert a.equals(b) and not a.equals(c)
    assert info["unselected_train"] == 160 - 35 and (a.split == "test").sum() == 1
    kept = a[a.split == "train"].video_id.map(lambda v: int(v[1:]))
    assert kept.is_monotonic_increasing  # file order preserved


def test_given_profile_keeps_lists():
    videos = pd.DataFrame({"video_id": ["a", "b", "c"], "labels": [[0], [1, 0], [1]],
                           "split": ["train", "val", "test"]})
    table, info = splits.build_split(videos, 2, "given")
    assert table.to_dict("list") == videos.to_dict("list") and info["unselected_train"] == 0


def test_group_rule_boundaries():
    # tail: n <= tail; medium: tail < n <= head; head: n > head (the reference code's rule)
    assert assign_groups([501, 500, 101, 100, 0], head=500, tail=100).tolist() == \
        ["head", "medium", "medium", "tail", "tail"]
    with pytest.raises(ValueError):
        assign_groups([1], head=10, tail=20)
