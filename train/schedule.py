"""Checks that a run's schedule fits the data: epoch-based switches inside ``train.epochs`` and
enough optimiser steps for the learning rate.

Published schedules are in epochs of VideoLT (about 1,400 steps of 128 videos each). Moved to a
smaller dataset or a shorter run they silently stop doing anything, so:

* an epoch switch that defines the method (LDAM-DRW's ``drw_epoch``) outside the run is an error;
* learning-rate steps at or after the last epoch, and FrameStack in a one-epoch run (it starts
  after the first epoch), are warnings;
* fewer than :data:`FEW_STEPS` optimiser steps at a learning rate of at most :data:`VIDEOLT_LR`
  is a warning naming the knobs (such a run usually stops far from convergence).
"""

from __future__ import annotations

from manifests.errors import UserError
from train.config import TrainConfig
from train.data import batch_spans

FEW_STEPS = 500
VIDEOLT_LR = 1e-4
DRW_DEFAULT = 50  # LDAM-DRW's published switch epoch (train.losses)


def optimiser_steps(cfg: TrainConfig, num_train: int) -> int:
    """Optimiser steps of a whole run: epochs x the loop's batches per epoch."""
    return cfg.epochs * len(batch_spans(num_train, cfg.batch_size))


def check_schedule(cfg: TrainConfig, method: str, num_train: int) -> list:
    """Warnings about ``cfg``'s schedule for ``method`` on ``num_train`` videos; raises
    :class:`UserError` when an epoch switch that defines the method can never happen."""
    if method == "ldam_drw":
        drw = int(cfg.loss.get("ldam_drw", {}).get("drw_epoch", DRW_DEFAULT))
        if drw >= cfg.epochs:
            raise UserError(
                f"train.loss.ldam_drw.drw_epoch={drw} is not below train.epochs={cfg.epochs}: deferred re-weighting "
                f"would never start and LDAM-DRW would train plain LDAM; set --set train.loss.ldam_drw.drw_epoch=N "
                f"with N < {cfg.epochs} (the paper switches at half the run: {cfg.epochs // 2})")
    warnings = []
    late = [s for s in cfg.lr_steps if s >= cfg.epochs]
    if late:
        warnings.append(f"train.lr_steps {late} are not below train.epochs={cfg.epochs}: the learning rate never "
                        "decays there; set train.lr_steps to epochs inside the run (or [] for a constant rate)")
    if method == "framestack" and cfg.epochs < 2:
        warnings.append("framestack mixes clips from the second epoch on; with train.epochs=1 it trains focal loss only")
    steps = optimiser_steps(cfg, num_train)
    if steps < FEW_STEPS and cfg.lr <= VIDEOLT_LR:
        warnings.append(f"{method}: only {steps} optimiser steps ({cfg.epochs} epochs of {num_train} videos in "
                        f"batches of {cfg.batch_size}) at train.lr={cfg.lr:g}, a rate set for VideoLT's ~1,400 steps "
                        f"per epoch; raise train.lr (e.g. 1e-3) or train.epochs, or lower train.batch_size")
    return warnings
