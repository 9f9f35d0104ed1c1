"""The demo's settings apply to the demo only; `config` says where each value comes from; settings
that have no effect in the chosen mode are named."""

import logging

import yaml

from pipeline.cli import main
from pipeline.config import ineffective_settings, load_config, read_config


def test_another_format_without_config_starts_from_product_defaults():
    cfg = load_config(None, ("dataset.format=csv", "dataset.root=videos.csv"))
    assert (cfg.extract.resize, cfg.extract.crop, cfg.extract.num_frames) == (256, 224, 150)
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.lr_steps, cfg.train.hidden) == (100, 1e-4, [30, 60], 2048)
    assert cfg.train.methods() == ["baseline"] and cfg.split.profile == "auto" and cfg.work_dir == "runs/csv"
    demo = load_config()  # no --config and no format: the demo, with its small settings
    assert (demo.dataset.format, demo.extract.resize, demo.train.epochs) == ("demo", 112, 30)
    named = load_config("demo", ("dataset.format=csv", "dataset.root=videos.csv"))  # asked for by name: kept
    assert named.extract.resize == 112


def test_config_command_names_the_source_of_every_value(capsys):
    assert main(["config", "--config", "lt_bench", "--set", "train.epochs=7", "--work-dir", "w"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "  epochs: 7  # --set" in lines and "work_dir: w  # --work-dir" in lines
    assert any(line.startswith("  format: synthetic  # file ") and line.endswith("lt_bench.yaml") for line in lines)
    assert "  resize: 256  # default" in lines
    parsed = yaml.safe_load(out)  # still valid YAML: the comments are comments
    assert parsed == load_config("lt_bench", ("train.epochs=7",), work_dir="w").model_dump(mode="json")


def test_settings_without_effect_are_named(caplog):
    cfg, sources = read_config(None, ("dataset.format=videolt", "dataset.root=x", "split.imbalance=0.1",
                                      "dataset.synthetic.modes=2", "extract.npy_dir=/f"))
    warnings = ineffective_settings(cfg, sources)
    assert [w.split(" ")[0] for w in warnings] == ["split.imbalance", "dataset.synthetic.modes", "extract.npy_dir"]
    assert "split.profile=exp" in warnings[0]
    cfg, sources = read_config(None, ("dataset.format=videolt", "dataset.root=x", "split.profile=exp",
                                      "split.imbalance=0.1"))
    assert ineffective_settings(cfg, sources) == []
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        assert main(["config", "--set", "dataset.format=minikinetics", "--set", "split.max_per_class=5"]) == 0
    assert "split.max_per_class (--set) has no effect" in caplog.text
