"""train/aggregators.py: one PSA + NetVLAD implementation for the aggregators head, MOVE and MEDC's trunk,
with the initialisation order and state-dict keys of the checkpoints and bundles earlier versions wrote."""

import pytest
import torch

from train import models
from train.aggregators import AggregatedFeatures, NetVLADAggregator, PSAAggregator, aggregator_order
from train.config import MedcConfig, MoveConfig
from train.medc import Expert, MedcModel
from train.move import MoveModel

SMALL = {"clusters": 4, "vlad_hidden": 8, "n_head": 2, "psa_dim": 4}


def _prefixes(module: torch.nn.Module) -> list:
    """The top-level module names of the state dict, in state-dict order."""
    return list(dict.fromkeys(key.split(".")[0] for key in module.state_dict()))


def test_every_aggregating_model_uses_the_one_implementation():
    head = models.build("aggregators", 12, 5, hidden=16, **SMALL)
    move = MoveModel(12, 5, hidden=16, **SMALL)
    trunk = MedcModel(12, 5, MedcConfig(trunk="aggregators", expert_dim=8), MoveConfig(**SMALL)).trunk
    for model in (head, move, trunk):
        assert isinstance(model, AggregatedFeatures)
        assert type(model.psa) is PSAAggregator and type(model.netvlad) is NetVLADAggregator
        assert model.feature_dim == 12 + 8


def test_state_dict_keys_keep_the_order_of_earlier_checkpoints():
    assert _prefixes(models.build("aggregators", 12, 5, hidden=16, **SMALL)) == ["netvlad", "psa", "classifier"]
    assert _prefixes(MoveModel(12, 5, hidden=16, **SMALL)) == ["psa", "netvlad", "classifier"]
    assert _prefixes(MoveModel(12, 5, hidden=16, aggregators="netvlad", **SMALL)) == ["netvlad", "classifier"]
    medc = MedcModel(12, 5, MedcConfig(trunk="aggregators", expert_dim=8), MoveConfig(aggregators="psa", **SMALL))
    assert [k for k in medc.state_dict() if k.startswith("trunk.")][0].startswith("trunk.psa.")
    assert not any(k.startswith("trunk.netvlad.") for k in medc.state_dict())


@pytest.mark.parametrize("which", ["both", "psa", "netvlad"])
def test_medc_aggregator_trunk_initialises_the_experts_as_before(which):
    """Earlier versions built the trunk from a MoveModel(in_dim, 1, hidden=1) and dropped its classifier:
    the experts' initial weights (drawn after it) must stay those, or seeded results change."""
    move = MoveConfig(aggregators=which, **SMALL)
    torch.manual_seed(7)
    model = MedcModel(12, 5, MedcConfig(trunk="aggregators", expert_dim=8, experts=["lt", "uni"]), move)
    torch.manual_seed(7)
    borrowed = MoveModel(12, 1, hidden=1, aggregators=which, **SMALL)
    experts = [Expert(borrowed.feature_dim, 8, 5) for _ in range(2)]
    expected = {**{f"trunk.{k}": v for k, v in borrowed.state_dict().items() if not k.startswith("classifier.")},
                **{f"experts.{name}.{k}": v for name, e in zip(["lt", "uni"], experts) for k, v in e.state_dict().items()}}
    state = model.state_dict()
    assert list(state) == list(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def test_features_follow_the_models_order():
    torch.manual_seed(0)
    move = MoveModel(12, 5, hidden=16, **SMALL).eval()
    x = torch.randn(3, 6, 12)
    f = move.features(x)
    torch.testing.assert_close(f[:, :12], move.psa.aggregate(x))
    torch.testing.assert_close(f[:, 12:], move.netvlad(x))


def test_unknown_aggregators_are_refused():
    assert aggregator_order("both") == ("psa", "netvlad")
    with pytest.raises(ValueError, match="aggregators must be psa, netvlad or both"):
        MoveModel(12, 5, aggregators="vlad")
