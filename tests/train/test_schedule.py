"""Schedules that fit the data: epoch switches inside the run, and a warning for too few steps."""

import numpy as np
import pytest

from manifests.errors import UserError
from train.config import TrainConfig
from train.schedule import check_schedule, optimiser_steps


def test_drw_outside_the_run_is_an_error_naming_the_knob():
    cfg = TrainConfig(epochs=30, lr=1e-3)
    with pytest.raises(UserError, match=r"drw_epoch=50 is not below train.epochs=30.*ldam_drw.drw_epoch=N"):
        check_schedule(cfg, "ldam_drw", 10_000)
    inside = TrainConfig(epochs=30, lr=1e-3, lr_steps=[20], loss={"ldam_drw": {"drw_epoch": 15}})
    assert check_schedule(inside, "ldam_drw", 10_000) == []
    assert check_schedule(cfg.model_copy(update={"lr_steps": [20]}), "baseline", 10_000) == []  # DRW is LDAM's


def test_late_lr_steps_and_one_epoch_framestack_warn():
    warnings = check_schedule(TrainConfig(epochs=40, lr=1e-3, lr_steps=[30, 60]), "baseline", 10_000)
    assert len(warnings) == 1 and "[60]" in warnings[0] and "train.lr_steps" in warnings[0]
    warnings = check_schedule(TrainConfig(epochs=1, lr=1e-3, lr_steps=[]), "framestack", 100_000)
    assert len(warnings) == 1 and "framestack" in warnings[0]


@pytest.mark.parametrize("num_train, batch, expected", [(256, 128, 2), (257, 128, 2), (258, 128, 3), (1, 128, 1),
                                                        (99, 7, 14), (100, 7, 15)])
def test_optimiser_steps_count_the_loops_batches(num_train, batch, expected):
    # the loop cuts an epoch at multiples of the batch size and merges a last batch of one video
    cuts = list(range(0, num_train, batch))
    if len(cuts) > 1 and num_train - cuts[-1] < 2:
        cuts.pop()
    assert len(cuts) == expected
    assert optimiser_steps(TrainConfig(epochs=3, batch_size=batch), num_train) == 3 * expected


def test_few_steps_at_the_videolt_rate_warn():
    cfg = TrainConfig(epochs=30, lr_steps=[20])  # lr 1e-4, batch 128
    few = check_schedule(cfg, "baseline", 2_000)  # 30 x 16 = 480 steps
    assert len(few) == 1 and "480 optimiser steps" in few[0] and "train.lr" in few[0]
    assert check_schedule(cfg, "baseline", 2_200) == []  # 30 x 18 = 540 steps
    assert check_schedule(cfg.model_copy(update={"lr": 1e-3}), "baseline", 2_000) == []  # a raised rate is a choice
    assert np.isclose(cfg.lr, 1e-4)
