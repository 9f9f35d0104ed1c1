"""pipeline/yaml_limits.py: configs parse as yaml.safe_load does, within limits on aliases, values and depth."""

from __future__ import annotations

import pytest
import yaml

from manifests.errors import UserError
from pipeline import yaml_limits
from pipeline.yaml_limits import load_yaml

CONFIG = """\
defaults: &schedule {epochs: 30, lr: 0.002}
train:
  <<: *schedule
  method: [baseline, medc]
medc: {epochs: 30, lr_steps: [], trunk_dim: 64}
seeds: [1, 2, 3]
empty:
flag: yes
"""


def test_a_config_with_anchors_reads_as_safe_load_reads_it():
    assert load_yaml(CONFIG, "c.yaml") == yaml.safe_load(CONFIG)
    assert load_yaml(CONFIG, "c.yaml")["train"] == {"epochs": 30, "lr": 0.002, "method": ["baseline", "medc"]}
    assert load_yaml("", "c.yaml") is None and load_yaml("3", "--set x") == 3


def test_python_tags_stay_refused():
    with pytest.raises(yaml.YAMLError, match="could not determine a constructor"):
        load_yaml("seed: !!python/object/apply:os.system ['true']", "c.yaml")


def test_syntax_errors_stay_yaml_errors():
    with pytest.raises(yaml.YAMLError):
        load_yaml("train: [1, 2", "c.yaml")


def nested_aliases(levels: int, width: int) -> str:
    names = [f"l{i}" for i in range(levels)]
    parts = [f"&l0 [{', '.join(['1'] * width)}]"]
    parts += [f"&{name} [{', '.join([f'*{previous}'] * width)}]" for previous, name in zip(names, names[1:])]
    return f"[{', '.join(parts)}]"


def test_expanded_size_is_bounded_exactly_at_the_limit(monkeypatch):
    # [L0, L1, L2]: L0 = ten 1s (11 values), L1 = ten L0 (1 + 110), L2 = ten L1 (1 + 1110), plus the outer list
    expanded = 1 + 11 + 111 + 1111
    monkeypatch.setattr(yaml_limits, "MAX_VALUES", expanded)
    assert len(load_yaml(nested_aliases(3, 10), "x")) == 3
    monkeypatch.setattr(yaml_limits, "MAX_VALUES", expanded - 1)
    with pytest.raises(UserError, match=r"^x: YAML refused: more than 1,233 values once its aliases are expanded"):
        load_yaml(nested_aliases(3, 10), "x")


def test_an_alias_bomb_is_refused_quickly():
    with pytest.raises(UserError, match="more than 100,000 values once its aliases are expanded"):
        load_yaml(f"seeds: {nested_aliases(12, 10)}", "bomb.yaml")  # 10**12 values


def test_too_many_aliases_are_refused(monkeypatch):
    monkeypatch.setattr(yaml_limits, "MAX_ALIASES", 5)
    assert load_yaml("a: &x 1\nb: [*x, *x, *x, *x, *x]", "x")["b"] == [1] * 5
    with pytest.raises(UserError, match="more than 5 aliases"):
        load_yaml("a: &x 1\nb: [*x, *x, *x, *x, *x, *x]", "x")


def test_a_recursive_alias_is_refused():
    with pytest.raises(UserError, match="--set seeds: YAML refused: a recursive alias expands without end"):
        load_yaml("&a [1, *a]", "--set seeds")


def test_deep_nesting_is_refused_not_a_recursion_error():
    assert load_yaml("[" * 64 + "]" * 64, "x") is not None
    with pytest.raises(UserError, match="nested more than 64 deep"):
        load_yaml("[" * 65 + "]" * 65, "x")
    with pytest.raises(UserError, match="nested more than 64 deep"):
        load_yaml("[" * 100_000, "x")


def test_a_flat_document_is_bounded_too(monkeypatch):
    monkeypatch.setattr(yaml_limits, "MAX_VALUES", 100)
    with pytest.raises(UserError, match=r"more than 100 values \(the limit\)"):
        load_yaml("[" + ", ".join(["1"] * 200) + "]", "x")
