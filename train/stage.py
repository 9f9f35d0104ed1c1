"""The train stage: one method on the extract stage's features and the split stage's lists."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from manifests import tables
from manifests.errors import UserError
from manifests.files import atomic_path
from manifests.manifest import read_manifest
from train import checkpoints, distributed, methods
from train.data import FeatureBank
from train.loop import SplitData, Trainer, derived_seed, scores_for_metrics, scores_kind
from train.run_settings import RunSettings
from train.schedule import check_schedule

log = logging.getLogger("pipeline")


def load_splits(split_dir: Path, bank_ids: list) -> dict:
    """Train/val/test of the split stage as positions into one list of video ids."""
    videos = tables.read_split_videos(split_dir)
    position = {v: i for i, v in enumerate(bank_ids)}
    out = {}
    for split in ("train", "val", "test"):
        rows = videos[videos.split == split]
        out[split] = SplitData(np.array([position[v] for v in rows.video_id], dtype=np.int64),
                               list(rows.labels), list(rows.video_id))
    return out


def run_train(run: RunSettings, extract_dir: Path, split_dir: Path, run_dir: Path, *, upstream: str,
              resume: bool = True, progress: bool = True) -> tuple:
    """Train ``run``'s method; write checkpoints, logs and test predictions.

    Returns ``(summary, output file names)``. ``upstream`` (the hash of the extract and split manifests)
    enters the run identity (:meth:`RunSettings.identity`) that guards resuming.
    """
    cfg, method, seed = run.train, run.method, run.seed
    split_summary = read_manifest(split_dir).summary
    thresholds = split_summary["thresholds"]
    classes = tables.read_classes(split_dir)
    videos = tables.read_split_videos(split_dir)
    bank_ids = list(dict.fromkeys(videos.video_id))
    for split in ("train", cfg.select_on, "test"):
        if not (videos.split == split).any():
            raise UserError(f"the split in {split_dir} has no {split!r} videos, which training needs "
                            f"(train.select_on={cfg.select_on})")
    num_train = int((videos.split == "train").sum())
    for warning in check_schedule(cfg, method, num_train) + distributed.batching_warnings(num_train, cfg.batch_size):
        log.warning("warning: %s", warning)
    try:
        bank = FeatureBank(extract_dir, bank_ids, cache=cfg.cache)
    except KeyError as exc:
        raise UserError(f"{exc.args[0]}; re-run the split stage so it drops videos without features") from None
    counts = classes.train_count.to_numpy()
    torch.manual_seed(derived_seed(seed))  # the initial weights
    try:
        recipe = methods.build(method, cfg, bank.dim, len(classes), counts, run.sections)
    except ValueError as exc:  # e.g. an unknown loss parameter in train.loss
        raise UserError(f"train.method={method}: {exc}") from None
    identity = run.identity(upstream, len(classes), bank.dim)
    trainer = Trainer(recipe, cfg, bank, load_splits(split_dir, bank_ids), counts, seed, run_dir,
                      identity, (thresholds["head"], thresholds["tail"]), progress=progress)
    if not resume:
        for name in (checkpoints.LAST, checkpoints.BEST):
            (Path(run_dir) / name).unlink(missing_ok=True)
    resumed = trainer.resume() if resume else False
    best = trainer.fit()
    if not distributed.is_main():  # rank 0 writes the predictions and the manifest
        return {}, []
    calibration = trainer.calibrate()
    adapted, views = trainer.adapt("test")
    calibration.update(adapted)
    logits, experts = trainer.predict_best("test")
    experts = {f"expert_{k}": scores_for_metrics(v, cfg) for k, v in experts.items()}
    views = {"view_{1}_{0}".format(*k.split("/")): v for k, v in views.items()}  # <expert>/a -> view_a_<expert>
    if views:
        views["view_step"] = recipe.view_step
    test = trainer.splits["test"]
    with atomic_path(Path(run_dir) / tables.PREDICTIONS) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, scores=scores_for_metrics(logits, cfg), video_ids=np.array(test.video_ids, dtype=str),
                 method=method, select_on=cfg.select_on, seed=seed, scores_kind=scores_kind(cfg), **experts, **views)
    summary = {"method": method, "head": cfg.head, "best_epoch": best["epoch"], "select_on": cfg.select_on,
               "selection_metrics": {k: v for k, v in best.items() if k != "epoch"}, "mAP": best["mAP"],
               "epochs": cfg.epochs, "resumed": resumed, "feature_cache": bank.cache,
               "parameters": sum(p.numel() for p in recipe.model.parameters()),
               "seconds_per_epoch": float(np.mean([r["seconds"] for r in trainer.history])),
               "checkpoint": checkpoints.BEST, **({"calibration": calibration} if calibration else {})}
    return summary, [tables.PREDICTIONS, checkpoints.BEST, checkpoints.LAST, "log.jsonl"]
