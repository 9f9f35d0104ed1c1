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

Implementation: targets are sparse, so only the descending rank of each positive is needed:
rank = #(strictly greater scores) + #(equal scores at a lower row) + 1. Blocks of columns are
transposed to contiguous rows (in cache-sized tiles) and ranked on ``torch.get_num_threads()``
threads (NumPy's comparisons and sorts run without the GIL). Per class, whichever is cheaper:
counting (for a positive at row r with score v: the scores >= v before r plus the scores > v after
it, one pass, the tie rule included), or one sort of the column with two binary searches per
positive, where a positive whose score occurs more than once gets the equal scores at lower rows
from the unsorted column (``flatnonzero`` per tied value, or one sort of (tied-value group, row)
keys when there are many). Both give the same integer ranks; no column is sorted twice.
Within a class the k-th positive (in rank order) contributes ``k / rank``, summed in rank order in
float64 (so the per-class AP equals, bit for bit, the per-class stable-sort computation when that
also sums the precisions at the positives in rank order). Acc@1 and Acc@5 share one
``torch.topk(6)`` per video and resolve only ties that straddle the k-th place. Scores may be
probabilities or logits (any real values, numpy or torch; float16/bfloat16 become float32,
integers float64); NaN is rejected. Inputs are never modified.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from manifests.groups import GROUPS, group_indices

# Largest number of elements materialised at once (column blocks, Acc@k tie checks).
_CHUNK_ELEMENTS = 1 << 23
# Columns per block (a block is transposed and ranked by one thread).
_BLOCK_COLUMNS = 32
# Rows per tile of the blocked transpose (keeps the source tile in cache).
_TILE_ROWS = 1024
# Up to this many distinct tied values in a class are resolved one value at a time.
_FEW_TIE_VALUES = 8


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
    """Return (scores as float32/float64 (N, C), targets, positive rows, positive classes).

    The positives come in row-major order (by row, then class).
    """
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
    if np.isnan(x.min()):  # min propagates NaN; cheaper than a full isnan mask
        raise ValueError(f"scores contain NaN ({int(np.isnan(x).sum())} values)")
    rows, cls = np.divmod(np.flatnonzero(t if t.dtype == bool else t != 0), t.shape[1])
    if rows.size and not (t[rows, cls] == 1).all():
        raise ValueError("targets must contain only 0 and 1")
    return x, t, rows, cls


# --------------------------------------------------------------------------------------------
# AP


def _workers() -> int:
    """Threads for the column blocks: torch's setting (OMP_NUM_THREADS / torch.set_num_threads)."""
    return max(1, torch.get_num_threads())


def _transpose_into(out: np.ndarray, x: np.ndarray, c0: int, c1: int) -> np.ndarray:
    """Copy the columns c0..c1-1 of x as contiguous rows into ``out`` (row tiles stay in cache)."""
    out = out[: c1 - c0]
    for i in range(0, x.shape[0], _TILE_ROWS):
        out[:, i : i + _TILE_ROWS] = x[i : i + _TILE_ROWS, c0:c1].T
    return out


def _counting_pays(npos: int, n: int) -> bool:
    """Whether counting (one pass over the column per positive) is cheaper than sorting the column.

    Measured costs: about 3 us + 0.14 ns * N per counted positive, 1.4 ns * N log2 N per sort.
    Speed only: both ways give the same ranks.
    """
    return npos * (n + 20_000) < 10 * n * math.log2(max(n, 2))


def _counted_ranks(col: np.ndarray, vals: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Ranks by counting: in front of the positive at row r are the scores >= v before r and the
    scores > v after it (the tie rule, with no tie detection needed)."""
    return np.array([np.count_nonzero(col[:r] >= v) + np.count_nonzero(col[r:] > v) + 1
                     for r, v in zip(rows.tolist(), vals)], np.int64)


def _equal_before(col: np.ndarray, vals: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``#{j < rows[i] : col[j] == vals[i]}`` for every i (the equal scores ranked in front).

    A few distinct values: the rows equal to each value, then a binary search for the row. Many:
    the elements sharing one of the values as sorted (value group, row) keys, then binary searches.
    """
    uniq, group = np.unique(vals, return_inverse=True)  # -0.0 and +0.0 are one value
    group = group.reshape(-1)
    if uniq.size <= _FEW_TIE_VALUES:
        out = np.empty(vals.shape, np.int64)
        for g, value in enumerate(uniq):
            mine = group == g
            out[mine] = np.searchsorted(np.flatnonzero(col == value), rows[mine])
        return out
    n = col.shape[0]
    where = np.minimum(np.searchsorted(uniq, col), uniq.size - 1)
    members = np.flatnonzero(uniq[where] == col)  # rows whose score is one of the tied values
    keys = np.sort(where[members] * n + members)  # by value group, then row
    return np.searchsorted(keys, group * n + rows) - np.searchsorted(keys, group * n)


def _sorted_ranks(col: np.ndarray, vals: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Ranks from one sort of the column: #greater by binary search, +1, and for a positive whose
    score occurs more than once, the equal scores at lower rows (:func:`_equal_before`)."""
    ascending = np.sort(col)
    at_most = np.searchsorted(ascending, vals, side="right")
    rank = col.shape[0] - at_most + 1
    tied = at_most - np.searchsorted(ascending, vals, side="left") > 1
    if tied.any():
        rank[tied] += _equal_before(col, vals[tied], rows[tied])
    return rank


def _block_ranks(cols: np.ndarray, c0: int, rows, vals, start, out) -> None:
    """Write into ``out`` the ranks of the positives of the classes in ``cols`` (rows of the
    transposed block starting at class c0); ``start[k]:start[k + 1]`` are class k's positives."""
    n = cols.shape[1]
    for k in range(c0, c0 + cols.shape[0]):
        a, b = start[k], start[k + 1]
        if a < b:
            ranks = _counted_ranks if _counting_pays(b - a, n) else _sorted_ranks
            out[a:b] = ranks(cols[k - c0], vals[a:b], rows[a:b])


def _positive_ranks(x: np.ndarray, rows: np.ndarray, cls: np.ndarray, npos: np.ndarray) -> np.ndarray:
    """Descending rank (1-based, equal scores: lower row first) of the positives, which must be
    ordered by class. Blocks of columns are handed to :func:`_workers` threads, each with one
    reused block buffer; classes without positives are skipped."""
    n, c = x.shape
    start = np.concatenate(([0], np.cumsum(npos)))
    vals = x[rows, cls]
    rank = np.empty(rows.size, np.int64)
    width = int(np.clip(_CHUNK_ELEMENTS // n, 1, _BLOCK_COLUMNS))
    blocks = [(c0, min(c0 + width, c)) for c0 in range(0, c, width)]
    blocks = [b for b in blocks if start[b[1]] > start[b[0]]]
    pending, lock = iter(blocks), threading.Lock()

    def work() -> None:
        buffer = np.empty((width, n), x.dtype)
        while True:
            with lock:
                block = next(pending, None)
            if block is None:
                return
            _block_ranks(_transpose_into(buffer, x, *block), block[0], rows, vals, start, rank)

    workers = min(_workers(), len(blocks))
    if workers <= 1:
        work()
    else:
        with ThreadPoolExecutor(workers) as pool:
            for done in [pool.submit(work) for _ in range(workers)]:
                done.result()  # re-raises a worker's exception
    return rank


def _average_precision(x: np.ndarray, rows: np.ndarray, cls: np.ndarray) -> np.ndarray:
    n, c = x.shape
    npos = np.bincount(cls, minlength=c)
    if rows.size == 0:
        return np.zeros(c, np.float64)
    by_class = np.argsort(cls, kind="stable")
    rows, cls = rows[by_class], cls[by_class]
    rank = _positive_ranks(x, rows, cls, npos)
    # The k-th positive of a class (in rank order) contributes k / rank; bincount adds the
    # contributions of a class one after another in rank order.
    order = np.lexsort((rank, cls))  # cls is already sorted, so only rank needs reordering
    rank = rank[order]
    k = np.arange(1, rows.size + 1) - (np.cumsum(npos) - npos)[cls]
    total = np.bincount(cls, weights=k / rank, minlength=c)
    return total / np.maximum(npos, 1)


def average_precision(scores, targets) -> np.ndarray:
    """Per-class non-interpolated AP, shape (C,), float64 (0 for a class without positives)."""
    x, _, rows, cls = _validate(scores, targets)
    return _average_precision(x, rows, cls)


# --------------------------------------------------------------------------------------------
# Acc@k


def _top_values(x: np.ndarray, k: int) -> np.ndarray:
    """(N, k): the k largest scores of every video, descending."""
    return torch.topk(torch.from_numpy(x), k, dim=1, largest=True, sorted=True).values.numpy()


def _top_k_hits(x: np.ndarray, rows: np.ndarray, cls: np.ndarray, k: int, top=None) -> np.ndarray:
    """Hits at k; ``top`` may hold the (at least k + 1) largest scores per video, descending."""
    n, c = x.shape
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    hits = np.zeros(n, bool)
    if rows.size == 0:
        return hits
    if k >= c:  # every class is in the top-k
        hits[rows] = True
        return hits
    top = _top_values(x, k + 1) if top is None or top.shape[1] <= k else top
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
    top = _top_values(x, min(6, c)) if rows.size and c > 1 else None  # shared by Acc@1 and Acc@5
    hits1 = _top_k_hits(x, rows, cls, 1, top)
    hits5 = _top_k_hits(x, rows, cls, 5, top)

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
