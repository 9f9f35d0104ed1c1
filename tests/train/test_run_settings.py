"""RunSettings: a train run's settings resolved once (schedule, sections, head, seed), its settings record,
config hash and checkpoint identity, and the one parser of ``<method>+<head>``."""

import pytest

from manifests.manifest import config_hash
from pipeline.config import Config, load_config, run_settings, single_runs
from train.config import MedcConfig, MoveConfig, method_entry, parse_method_entry
from train.run_settings import RunSettings


def test_method_entries_parse_and_join_in_one_place():
    assert parse_method_entry("move") == ("move", None)
    assert parse_method_entry("baseline+aggregators") == ("baseline", "aggregators")
    assert method_entry("baseline", "aggregators") == "baseline+aggregators"
    assert method_entry("baseline", "lateavg") == "baseline"
    runs = single_runs(Config(train={"method": ["baseline+aggregators", "move", "focal"]}))
    assert [(r.train.method, r.train.head, r.train.run_name()) for r in runs] == [
        ("baseline", "aggregators", "baseline+aggregators"), ("move", "lateavg", "move"), ("focal", "lateavg", "focal")]


def test_medc_run_takes_its_own_schedule_and_reads_both_sections():
    cfg = Config(train={"method": "medc", "epochs": 30, "lr_steps": [20], "parallel": "ray"}, seed=5,
                 medc={"epochs": 7, "lr_steps": []})
    run = run_settings(cfg)
    assert (run.method, run.head, run.seed) == ("medc", "lateavg", 5)
    assert run.train.epochs == 7 and run.train.lr_steps == [] and run.train.lr == cfg.train.lr
    assert list(run.sections) == ["medc", "move"]
    assert isinstance(run.sections["medc"], MedcConfig) and isinstance(run.sections["move"], MoveConfig)
    settings = run.to_dict()
    assert settings["epochs"] == 7 and settings["seed"] == 5 and settings["medc"]["epochs"] == 7
    assert not {"parallel", "slots", "ray_address"} & set(settings)  # how runs are dispatched is no identity
    assert run.config_hash == config_hash(settings)


def test_aggregators_head_reads_the_move_section_and_lateavg_none():
    runs = single_runs(Config(train={"method": ["baseline+aggregators", "baseline"]}))
    assert [list(run_settings(r).sections) for r in runs] == [["move"], []]


@pytest.mark.parametrize("method", ["baseline+aggregators", "move", "medc", "ldam_drw"])
def test_settings_record_round_trips(method):
    cfg = single_runs(load_config("lt_bench", (f"train.method=[{method}]", "medc.trunk=aggregators")))[-1]
    run = run_settings(cfg)
    again = RunSettings.from_dict(run.to_dict())
    assert again.to_dict() == run.to_dict() and list(again.to_dict()) == list(run.to_dict())
    assert again.config_hash == run.config_hash and again.train == run.train and again.sections == run.sections


def test_identity_is_what_a_checkpoint_records():
    run = run_settings(Config(train={"method": "move"}, seed=3))
    identity = run.identity("abc", 10, 64)
    assert list(identity) == ["config_hash", "settings", "upstream", "method", "num_classes", "feature_dim"]
    assert identity["config_hash"] == config_hash(identity["settings"]) == run.config_hash
    assert (identity["upstream"], identity["method"], identity["num_classes"], identity["feature_dim"]) == (
        "abc", "move", 10, 64)
    assert identity["settings"]["seed"] == 3 and "move" in identity["settings"]
