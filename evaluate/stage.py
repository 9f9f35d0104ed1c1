"""The evaluate stage: score predictions against the split, per test-distribution profile."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from evaluate import agreement, metrics, plots, profiles, registry, report
from evaluate.config import EvaluateConfig
from manifests import tables
from manifests.datasets import multi_hot
from manifests.errors import UserError
from manifests.files import atomic_path, write_json_atomic, write_text_atomic
from manifests.manifest import read_manifest

METRICS_JSON = "metrics.json"
PER_CLASS_CSV = "per_class.csv"
RESULTS_MD = "results.md"
AP_PLOT = "ap_vs_frequency.png"
RUN_KEYS = ("method", "features", "seed", "select_on")
EXPERT_PREFIX = "expert_"
PROFILE_AGREEMENT = "mix_agreement_per_profile"  # the agreement mix, its weights refitted on each test profile


class Predictions(NamedTuple):
    """A predictions file's contents: ``scores`` (N, C) float32, ``video_ids`` (N,), run ``info``,
    ``experts`` {name: (N, C) float32 scores}, ``views`` {expert: ((N, C), (N, C)) logits on the two
    views of each video}, the agreement grid ``view_step`` (None without views) and ``scores_kind``."""

    scores: np.ndarray
    video_ids: np.ndarray
    info: dict
    experts: dict
    views: dict
    view_step: float | None
    scores_kind: str


def load_predictions(path: Path) -> Predictions:
    """Read and check an .npz predictions file.

    Besides ``scores`` and ``video_ids`` the file may carry string/number entries ``method``,
    ``features``, ``seed``, ``select_on`` that describe the run, ``scores_kind`` (``logits``, the
    default, or ``probabilities``), an ensemble's members' scores (MEDC's experts) as arrays
    ``expert_<name>``, scored like ``scores``, and for experts with such scores their logits on two
    views of each test video, ``view_a_<name>`` / ``view_b_<name>``, with the grid step ``view_step``.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"predictions file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("scores", "video_ids") if k not in data]
            if missing:
                raise UserError(f"{path}: missing array(s) {missing}; an .npz with `scores` (N, C) and "
                                "`video_ids` (N,) is expected")
            scores, ids = data["scores"], data["video_ids"]
            info = {k: data[k].item() for k in RUN_KEYS if k in data}
            kind = str(data["scores_kind"].item()) if "scores_kind" in data else "logits"
            step = float(data["view_step"].item()) if "view_step" in data else None
            arrays = {k: data[k] for k in data.files if k.startswith((EXPERT_PREFIX, "view_a_", "view_b_"))}
    except (ValueError, OSError) as exc:
        raise UserError(f"{path}: not a readable .npz of plain arrays ({exc})") from exc
    if scores.ndim != 2 or ids.shape != (len(scores),):
        raise UserError(f"{path}: scores must be (N, C) and video_ids (N,), got {scores.shape} and {ids.shape}")
    for name, values in {"scores": scores, **arrays}.items():
        if values.shape != scores.shape:
            raise UserError(f"{path}: {name} has shape {values.shape}, scores {scores.shape}")
        if not np.isfinite(values).all():
            raise UserError(f"{path}: {name} contain NaN or Inf")
    if kind not in ("logits", "probabilities"):
        raise UserError(f"{path}: scores_kind must be logits or probabilities, got {kind!r}")
    experts = {k[len(EXPERT_PREFIX):]: v.astype(np.float32, copy=False)
               for k, v in arrays.items() if k.startswith(EXPERT_PREFIX)}
    viewed = sorted({k[len("view_a_"):] for k in arrays if k.startswith("view_")})
    unpaired = [e for e in viewed if f"view_a_{e}" not in arrays or f"view_b_{e}" not in arrays or e not in experts]
    if unpaired or (viewed and not (step and 0 < step <= 1)):
        raise UserError(f"{path}: views need view_a_<e>, view_b_<e> and expert_<e> for each expert and a "
                        f"view_step in (0, 1]; incomplete for {unpaired or viewed}")
    views = {e: (arrays[f"view_a_{e}"], arrays[f"view_b_{e}"]) for e in viewed}
    ids = ids.astype(str)
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise UserError(f"{path}: video id(s) predicted twice, e.g. {unique[counts > 1][:3].tolist()}")
    return Predictions(scores.astype(np.float32, copy=False), ids, info, experts, views, step if viewed else None,
                       kind)


def align(scores: np.ndarray, ids: np.ndarray, videos: pd.DataFrame, num_classes: int, source) -> tuple:
    """Rows of ``scores`` in the order of ``videos``, and the (N, C) 0/1 targets."""
    if scores.shape[1] != num_classes:
        raise UserError(f"{source}: scores have {scores.shape[1]} classes, the split has {num_classes}")
    position = pd.Series(np.arange(len(ids)), index=ids)
    rows = videos.video_id.map(position)
    if rows.isna().any():
        missing = videos.video_id[rows.isna()]
        raise UserError(f"{source}: no prediction for {len(missing)} of {len(videos)} videos "
                        f"(e.g. {missing.head(3).tolist()}); predict every video of the split")
    return scores[rows.to_numpy(dtype=np.int64)], multi_hot(videos.labels, num_classes)


def score(scores, targets, counts, head: int, tail: int) -> dict:
    """:func:`metrics.compute`'s result plus the registered metrics (evaluate/registry.py)."""
    return {**metrics.compute(scores, targets, counts, head=head, tail=tail),
            **registry.compute_all(scores, targets, counts, head, tail)}


def agreement_per_profile(cfg: EvaluateConfig, views: dict, expert_scores: dict, kind: str, step: float,
                          targets, counts, head: int, tail: int) -> dict:
    """The experts' probability average with its agreement weights refitted, without labels, on each test
    profile's videos (their two views): scalars on the whole test set (refitted on it), then ``profiles``
    {profile: scalars} and ``weights`` {profile: {expert: weight}}. Labels only pick a profile's rows, as
    for every score; the fit reads the views alone."""
    names = list(views)
    stacked = np.stack([expert_scores[e] for e in names]).astype(np.float64)

    def refit(rows):
        weights, _ = agreement.agreement_weights([views[e][0][rows] for e in names],
                                                 [views[e][1][rows] for e in names], step)
        mixed = (np.tensordot(weights, stacked[:, rows], axes=1) if kind == "probabilities"
                 else agreement.mix_logits(stacked[:, rows], weights))
        return dict(zip(names, weights.round(6).tolist())), score(mixed.astype(np.float32), targets[rows], counts,
                                                                  head, tail)

    weights, result = refit(np.arange(len(targets)))
    out = {**metrics.scalars(result), "profiles": {}, "weights": {}}
    for name in cfg.test_profiles:
        rows = profiles.resample(targets, name, counts, cfg.profile_seed)
        out["weights"][name], result = (weights, result) if name == "as_is" else refit(rows)
        out["profiles"][name] = metrics.scalars(result)
    return out


def score_with_profiles(cfg: EvaluateConfig, scores, targets, counts, head: int, tail: int) -> tuple:
    """``(score result, {profile: scalars + realised label distribution})`` of one score matrix."""
    main = score(scores, targets, counts, head, tail)
    by_profile = {}
    for name in cfg.test_profiles:
        rows = profiles.resample(targets, name, counts, cfg.profile_seed)
        result = main if name == "as_is" else score(scores[rows], targets[rows], counts, head, tail)
        by_profile[name] = {**metrics.scalars(result), "labels": profiles.label_distribution(targets[rows])}
    return main, by_profile


def run_evaluate(cfg: EvaluateConfig, split_dir: Path, predictions: Path, stage_dir: Path,
                 run_info: dict | None = None) -> tuple:
    """Score ``predictions`` on the split; write metrics, per-class CSV, tables and plot.

    Returns ``(summary, output file names)``.
    """
    split_dir, stage_dir = Path(split_dir), Path(stage_dir)
    thresholds = read_manifest(split_dir).summary["thresholds"]
    head, tail = thresholds["head"], thresholds["tail"]
    classes = tables.read_classes(split_dir)
    videos = tables.read_split_videos(split_dir)
    videos = videos[videos.split == cfg.split]
    if videos.empty:
        raise UserError(f"the split stage in {split_dir} has no {cfg.split!r} videos to evaluate on")
    loaded = load_predictions(predictions)
    run = {**(run_info or {}), **loaded.info}

    def aligned(values):
        return align(values, loaded.video_ids, videos, len(classes), predictions)[0]

    scores, targets = align(loaded.scores, loaded.video_ids, videos, len(classes), predictions)
    counts = classes.train_count.to_numpy()
    main, by_profile = score_with_profiles(cfg, scores, targets, counts, head, tail)
    by_expert = {}
    for name, values in loaded.experts.items():
        result, expert_profiles = score_with_profiles(cfg, aligned(values), targets, counts, head, tail)
        by_expert[name] = {**metrics.scalars(result), "profiles": {
            p: {k: v for k, v in d.items() if k != "labels"} for p, d in expert_profiles.items()}}
    if loaded.views:
        views = {e: (aligned(a), aligned(b)) for e, (a, b) in loaded.views.items()}
        by_expert[PROFILE_AGREEMENT] = agreement_per_profile(
            cfg, views, {e: aligned(loaded.experts[e]) for e in views}, loaded.scores_kind, loaded.view_step,
            targets, counts, head, tail)
    stage_dir.mkdir(parents=True, exist_ok=True)
    per_class = pd.DataFrame({"class_index": classes.class_index, "name": classes.name,
                              "train_count": counts, "group": classes.group, "ap": main["per_class_ap"],
                              "test_positives": targets.sum(axis=0)})
    with atomic_path(stage_dir / PER_CLASS_CSV) as tmp:
        per_class.to_csv(tmp, index=False, float_format="%.6f")
    document = {"split": cfg.split, "videos": len(videos), "thresholds": thresholds, "run": run,
                "metrics": metrics.scalars(main), "profiles": by_profile, "profile_seed": cfg.profile_seed,
                **({"experts": by_expert} if by_expert else {})}
    write_json_atomic(stage_dir / METRICS_JSON, document)
    label = report.run_label(run)
    write_text_atomic(stage_dir / RESULTS_MD, report.run_markdown(label, document) + report.experts_markdown(document))
    plots.ap_vs_frequency(stage_dir / AP_PLOT, counts, main["per_class_ap"], classes.group.to_numpy(),
                          head, tail, title=f"Per-class AP against training frequency: {label}")
    summary = {"videos": len(videos), **{k: document["metrics"][k] for k in report.columns()},
               "profiles": {p: by_profile[p]["mAP"] for p in by_profile},
               **({"experts": {k: v["mAP"] for k, v in by_expert.items()}} if by_expert else {})}
    return summary, [METRICS_JSON, PER_CLASS_CSV, RESULTS_MD, AP_PLOT]
