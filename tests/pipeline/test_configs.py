"""Every shipped config validates, with each method as an override."""

from pathlib import Path

import pytest

from pipeline.config import load_config
from train.registry import METHODS

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(ROOT.glob("configs/*.yaml")) + sorted(ROOT.glob("pipeline/configs/*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_validates_with_every_method(path):
    for method in METHODS:
        cfg = load_config(str(path), (f"train.method={method}",))
        assert cfg.train.methods() == [method]


def test_dataset_configs_use_the_published_settings():
    for path in ROOT.glob("pipeline/configs/videolt_*.yaml"):
        cfg = load_config(str(path))
        assert (cfg.split.head, cfg.split.tail, cfg.dataset.format) == (500, 100, "videolt")
        assert (cfg.train.lr, cfg.train.epochs, cfg.train.batch_size, cfg.train.lr_steps) == (1e-4, 100, 128, [30, 60])
        assert (cfg.train.train_frames, cfg.train.eval_frames, cfg.train.grad_clip, cfg.seed) == (60, 150, 20.0, 2021)
    for path in ROOT.glob("pipeline/configs/minik200_*.yaml"):
        cfg = load_config(str(path))
        assert (cfg.split.head, cfg.split.tail, cfg.split.profile) == (300, 40, "minikinetics")
    assert len(CONFIGS) == 12
