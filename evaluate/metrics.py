"""Literature-exact VideoLT metrics: per-class AP, mAP, head/medium/tail mAP, Acc@1/Acc@5.

Definitions (those of the published VideoLT / MOVE code):

* **AP** of class c (the reference ``APMeter``): sort the N scores of column c in descending
  order, take the precision ``#positives so far / position`` at every positive, sum, and divide
  by ``max(#positives, 1)``. A class without positives gets AP 0 and still enters every mean.
* **mAP** = unweighted mean of the C APs; group mAP = unweighted mean over the classes of the
  group (groups from :func:`manifests.groups.group_indices`: tail ``n <= tail``, medium
  ``tail < n <= head``, head ``n > head``). A group with no classes has mAP NaN.
* **Acc@k**: a video is a hit when any of its labels is among its k highest scores; Acc@k is the
  fraction of hit videos (a multi-label video counts once), in [0, 1].
* **Per-group Acc@1** (MOVE's ``LTAverageMeter``): every ground-truth label of a video receives
  that video's top-1 hit; per-class hit rate = hits / videos containing the class; averaged over
  the classes of the group that have positives (NaN when no class of the group has one).

Deterministic tie rule (the reference's ``torch.sort`` leaves the order of equal scores unspecified;
this module fixes it):

* AP: among equal scores of one class, the video with the **lower row index ranks first** (what a
  stable descending sort gives). ``-0.0`` and ``+0.0`` are equal.
* Acc@k: the top-k of a video are its k largest scores, ties broken toward the **lower class
  index** (what a stable descending sort of the row gives).

Implementation: targets are sparse, so only the descending rank of each positive is needed. The
columns are sorted once (a contiguous (C, N) copy sorted along its rows), the number of strictly
greater scores of each positive is found by a vectorised binary search, and ties are fixed up only
for positives whose score occurs more than once in the column (float32: one sort of uint64
(score, row) keys of the columns involved; float64 with many ties: a stable argsort of those
columns, slower). Within a class the k-th positive (in rank order) contributes ``k / rank``;
accumulation is in float64. Acc@k takes ``torch.topk(k + 1)`` per video and resolves only ties
that straddle the k-th place. Scores may be probabilities or logits (any real values, numpy or
torch; float16/bfloat16 become float32, integers float64); NaN is rejected. Inputs are never
modified.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from manifests.groups import GROUPS, group_indices

# Largest number of elements materialised at once by the tie fix-ups.
_CHUNK_ELEMENTS = 1 << 23


# --------------------------------------------------------------------------------------------
# input handling


def _to_numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu()
        if a.dtype in (torch.float16, torch.bfloat16):
            a = a.float()
        return a.numpy()
    return np.asarray(a)


def _validate(scores, targets) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (scores as float32/float64 (N, C), targets, positive rows, positive classes)."""
    x = _to_numpy(scores)
    t = _to_numpy(targets)
    if x.ndim != 2 or t.ndim != 2 or x.shape != t.shape:
        raise ValueError(
            f"scores and targets must be 2-D arrays of the same shape (N, C); "
            f"got scores {tuple(x.shape)} and targets {tuple(t.shape)}"
        )
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"scores must have at least one video and one class; got {tuple(x.shape)}")
    if x.dtype == np.float16:
        x = x.astype(np.float32)
    elif x.dtype not in (np.float32, np.float64):
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
            raise ValueError(f"scores must be real numbers; got dtype {x.dtype}")
        if np.iscomplexobj(x):
            raise ValueError("scores must be real numbers; got complex values")
        x = x.astype(np.float64)
    x = np.ascontiguousarray(x)
    if np.isnan(x).any():
        raise ValueError(f"scores contain NaN ({int(np.isnan(x).sum())} values)")
    rows, cls = np.nonzero(t)
    if rows.size and not (t[rows, cls] == 1).all():
        raise ValueError("targets must contain only 0 and 1")
    return x, t, rows, cls


# --------------------------------------------------------------------------------------------
# AP


def _row_searchsorted(sorted_rows: np.ndarray, row_idx: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``np.searchsorted(sorted_rows[r], v, side="right")`` for many (r, v) pairs at once."""
    n = sorted_rows.shape[1]
    flat = sorted_rows.ravel()
    base = row_idx.astype(np.int64) * n
    lo = np.zeros(values.shape, np.int64)
    hi = np.full(values.shape, n, np.int64)
    for _ in range(int(n).bit_length()):  # enough halvings for n + 1 possible answers
        active = lo < hi
        mid = (lo + hi) >> 1
        go_right = active & (flat[base + np.minimum(mid, n - 1)] <= values)
        lo = np.where(go_right, mid + 1, lo)
        hi = np.where(active & ~go_right, mid, hi)
    return lo


def _descending_keys(values: np.ndarray, row: np.ndarray) -> np.ndarray:
    """uint64 keys of float32 scores whose ascending order is (score descending, row ascending)."""
    u = (values + np.float32(0)).view(np.uint32)  # -0.0 becomes +0.0
    ascending = np.where(u >> 31 == 1, ~u, u | np.uint32(0x80000000))  # order-preserving bits
    return ((~ascending).astype(np.uint64) << np.uint64(32)) | row.astype(np.uint64)


def _tied_ranks(x: np.ndarray, rows, cls, vals, greater) -> np.ndarray:
    """Exact descending rank (1-based) of positives whose score is tied in their column.

    rank = #greater + #{j < row : x[j, cls] == val} + 1 (lower row first). float32: sort the
    involved columns as uint64 keys (score desc, row asc) and look the positives up. Other
    dtypes: compare against the whole column when there are few tied positives per class,
    else a stable descending argsort of the involved columns.
    """
    n = x.shape[0]
    ucls, inv = np.unique(cls, return_inverse=True)
    ranks = np.empty(rows.shape, np.int64)
    step = max(1, _CHUNK_ELEMENTS // n)
    if x.dtype != np.float32 and rows.size <= 32 * ucls.size:
        j = np.arange(n)
        for s in range(0, rows.size, step):
            sl = slice(s, s + step)
            col = x[:, cls[sl]].T  # (chunk, N)
            before = (col == vals[sl, None]) & (j < rows[sl, None])
            ranks[sl] = greater[sl] + before.sum(axis=1) + 1
        return ranks
    for s in range(0, ucls.size, step):
        cols = np.ascontiguousarray(x[:, ucls[s : s + step]].T)
        mine = (inv >= s) & (inv < s + step)
        if x.dtype == np.float32:
            keys = _descending_keys(cols, np.arange(n))
            keys.sort(axis=1)
            own = _descending_keys(vals[mine], rows[mine])
            ranks[mine] = _row_searchsorted(keys, inv[mine] - s, own)  # keys <= own = rank
        else:
            order = np.argsort(-cols, axis=1, kind="stable")  # descending, lower row first
            position = np.empty_like(order)
            np.put_along_axis(position, order, np.arange(n)[None, :], axis=1)
            ranks[mine] = position[inv[mine] - s, rows[mine]] + 1
    return ranks


def _average_precision(x: np.ndarray, rows: np.ndarray, cls: np.ndarray) -> np.ndarray:
    n, c = x.shape
    npos = np.bincount(cls, minlength=c)
    if rows.size == 0:
        return np.zeros(c, np.float64)
    sorted_cols = x.T.copy(order="C")  # never a view of the caller's array
    sorted_cols.sort(axis=1)  # (C, N), ascending per class
    vals = x[rows, cls]
    right = _row_searchsorted(sorted_cols, cls, vals)  # #scores <= val
    greater = n - right
    rank = greater + 1
    # The positive is tied iff the element just below its own slot equals it.
    below = sorted_cols[cls, np.maximum(right - 2, 0)]
    tied = (right >= 2) & (below == vals)
    if tied.any():
        rank[tied] = _tied_ranks(x, rows[tied], cls[tied], vals[tied], greater[tied])
    # k-th positive of a class (in rank order) contributes k / rank.
    order = np.lexsort((rank, cls))
    cls_o, rank_o = cls[order], rank[order]
    first = np.cumsum(npos) - npos
    k = np.arange(1, rows.size + 1) - first[cls_o]
    total = np.bincount(cls_o, weights=k / rank_o, minlength=c)
    return total / np.maximum(npos, 1)


def average_precision(scores, targets) -> np.ndarray:
    """Per-class non-interpolated AP, shape (C,), float64 (0 for a class without positives)."""
    x, _, rows, cls = _validate(scores, targets)
    return _average_precision(x, rows, cls)


# --------------------------------------------------------------------------------------------
# Acc@k


def _top_k_hits(x: np.ndarray, rows: np.ndarray, cls: np.ndarray, k: int) -> np.ndarray:
    n, c = x.shape
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    hits = np.zeros(n, bool)
    if rows.size == 0:
        return hits
    if k >= c:  # every class is in the top-k
        hits[rows] = True
        return hits
    top = torch.topk(torch.from_numpy(x), k + 1, dim=1, largest=True, sorted=True).values.numpy()
    kth, after = top[:, k - 1], top[:, k]
    vals, kth_p = x[rows, cls], kth[rows]
    inside = vals > kth_p
    # Equal to the k-th value: inside unless the tie straddles the boundary, where the lower
    # class indices win the remaining k - #greater places.
    at = vals == kth_p
    straddle = at & (after[rows] == kth_p)
    inside |= at & ~straddle
    idx = np.flatnonzero(straddle)
    if idx.size:
        free = k - (top[:, :k] > kth[:, None]).sum(axis=1)
        j = np.arange(c)
        step = max(1, _CHUNK_ELEMENTS // c)
        for s in range(0, idx.size, step):
            p = idx[s : s + step]
            lower = ((x[rows[p]] == kth_p[p, None]) & (j < cls[p, None])).sum(axis=1)
            inside[p] = lower < free[rows[p]]
    hits[rows[inside]] = True
    return hits


def top_k_hits(scores, targets, k: int) -> np.ndarray:
    """(N,) bool: whether any label of each video is among its k highest scores (k >= C: any label)."""
    x, _, rows, cls = _validate(scores, targets)
    return _top_k_hits(x, rows, cls, int(k))


# --------------------------------------------------------------------------------------------
# everything


def _mean_or_nan(v: np.ndarray) -> float:
    return float(v.mean()) if v.size else math.nan


def compute(scores, targets, train_counts, head: int = 500, tail: int = 100) -> dict:
    """All VideoLT metrics of (N, C) scores against (N, C) 0/1 targets.

    ``train_counts`` (C,) gives the head/medium/tail groups. Returns ``mAP``, ``head``, ``medium``,
    ``tail`` (group mAPs; NaN for an empty group), ``acc1``, ``acc5`` (fractions),
    ``head_acc1``/``medium_acc1``/``tail_acc1`` (per-group Acc@1, NaN when no class of the group
    has positives), ``per_class_ap`` (C,), ``classes_without_positives``, and ``num_head``,
    ``num_medium``, ``num_tail``.
    """
    x, _, rows, cls = _validate(scores, targets)
    n, c = x.shape
    counts = np.asarray(_to_numpy(train_counts)).reshape(-1)
    if counts.shape[0] != c:
        raise ValueError(f"train_counts has {counts.shape[0]} entries but scores have C = {c} classes")
    groups = group_indices(counts, head, tail)

    ap = _average_precision(x, rows, cls)
    hits1 = _top_k_hits(x, rows, cls, 1)
    hits5 = _top_k_hits(x, rows, cls, 5)

    npos = np.bincount(cls, minlength=c)
    class_hits = np.bincount(cls, weights=hits1[rows].astype(np.float64), minlength=c)
    has_pos = npos > 0

    out: dict = {"mAP": float(ap.mean())}
    for g in GROUPS:
        out[g] = _mean_or_nan(ap[groups[g]])
    out["acc1"] = float(hits1.mean())
    out["acc5"] = float(hits5.mean())
    out["per_class_ap"] = ap
    out["classes_without_positives"] = int((~has_pos).sum())
    for g in GROUPS:
        idx = groups[g][has_pos[groups[g]]]
        out[f"{g}_acc1"] = _mean_or_nan(class_hits[idx] / npos[idx])
    for g in GROUPS:
        out[f"num_{g}"] = int(groups[g].size)
    return out


def scalars(result: dict) -> dict:
    """The scalar entries of :func:`compute`'s result, JSON-ready (NaN -> None, no per-class arrays)."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in result.items() if k != "per_class_ap"}
