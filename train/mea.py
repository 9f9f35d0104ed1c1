"""MEA, multi-expert aggregators (ours): Baseline + Agg plus tail experts on its trunk, combined at test time.

The ``lt`` expert is ``<mea.lt_method>+aggregators`` itself (same initial weights, data, loss and random
draws); the ``bal`` / ``inv`` experts are classifiers on the same trunk, each trained on its own
class-balanced / inverse-frequency batch stream (FrameStack-mixed). ``mea.trunk=all`` lets every expert
train the trunk; ``lt`` keeps trunk and lt expert exactly ``<lt_method>+aggregators``. The experts'
probabilities are averaged with uniform weights (``mean``, the default), weights chosen on the selection
split (``val``) or without labels on the test videos (``agreement``). Details: docs/methods.md (MEA).
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from evaluate.agreement import agreement_weights
from evaluate.metrics import average_precision
from train import augment, distributed, losses, registry
from train.config import MeaConfig, TrainConfig
from train.ensembles import choose_expert_weights, combine_experts, evaluating
from train.methods import Recipe
from train.models import AggregatorHead, NonlinearClassifier

STREAM_MODES = {"bal": "cbs", "inv": "inv"}  # tail expert -> ClassAwareSampler mode of its batch stream
MIXES = ("mean", "val", "agreement")  # the combinations reported beside the experts (mix_<name>)


class MeaModel(nn.Module):
    """``base``: the Baseline + Agg model (trunk + ``lt`` classifier); ``tails``: one classifier per tail
    expert on the same trunk features; ``forward`` averages the experts' probabilities with ``weights``."""

    def __init__(self, base: AggregatorHead, num_classes: int, experts: list, hidden: int, dropout: float,
                 inference: str = "mean"):
        super().__init__()
        self.names = list(experts)
        self.base = base
        self.tails = nn.ModuleDict({name: NonlinearClassifier(self.base.feature_dim, num_classes, hidden=hidden,
                                                              dropout=dropout) for name in self.names if name != "lt"})
        uniform = torch.full((len(self.names),), 1.0 / len(self.names))
        for mix in MIXES:  # the weights of each combination, chosen after training
            self.register_buffer(f"weights_{mix}", uniform.clone())
        self.inference = inference

    def expert_logits(self, x: torch.Tensor) -> dict:
        """Each expert's logits (B, C) on the shared trunk features."""
        features = self.base.features(x).unsqueeze(1)
        return {name: self.base.classifier(features) if name == "lt" else self.tails[name](features)
                for name in self.names}

    def mix(self, logits: dict, name: str) -> torch.Tensor:
        """The ``name`` combination (mean / val / agreement) of the experts' logits, as logits."""
        return combine_experts([logits[e] for e in self.names], "probabilities", getattr(self, f"weights_{name}"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(self.expert_logits(x), self.inference)


@contextlib.contextmanager
def own_random_stream(seed: int, device: torch.device):
    """Run the block on a private global RNG stream seeded by ``seed``; the caller's stream is restored after."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def two_views(x: torch.Tensor) -> tuple:
    """The two views of an evaluation clip (B, T, D): its even and its odd frames (the clip itself if T = 1)."""
    if x.shape[1] < 2:
        return x, x
    return x[:, 0::2], x[:, 1::2]


class Mea(Recipe):
    """``train.method=mea``: see the module docstring."""

    def __init__(self, name: str, cfg: TrainConfig, in_dim: int, num_classes: int, class_counts,
                 options: dict | None = None):
        self.name, self.cfg, self.options = name, cfg, options or {}
        self.mea = mea = self.section("mea", MeaConfig)
        # the lt expert: <mea.lt_method>+aggregators itself, built first (the same initial weights)
        self.lt = registry.recipe_class(mea.lt_method)(mea.lt_method, cfg.model_copy(update={"head": "aggregators"}),
                                                        in_dim, num_classes, class_counts, self.options)
        self.model = MeaModel(self.lt.model, num_classes, mea.experts, cfg.hidden, cfg.dropout, mea.inference)
        self.streams = {e: STREAM_MODES[e] for e in self.model.names if e in STREAM_MODES}
        self.view_step = mea.step if mea.save_views else None
        self.criterion = losses.build("bce", np.asarray(class_counts), **cfg.loss.get("bce", {}))
        self.previous_ap = None  # the lt expert's per-class training AP of the last epoch (FrameStack's source)
        self._scores, self._targets = [], []
        self.metrics = {}

    def clip_parameters(self):
        """The ``lt`` classifier's, as Baseline + Agg clips (the tail classifiers are not clipped)."""
        return list(self.model.base.classifier.parameters())

    def training_loss(self, x, y, chosen, generator, streams=None):
        """The lt expert's loss on the main rows (its own recipe), plus each tail expert's BCE on its stream."""
        streams = streams or self.stream_rows([len(y)])
        main = streams["main"]
        loss = self.lt.training_loss(x[main], y[main], chosen[main], generator)
        self.metrics = {"loss/lt": loss.detach()}
        if len(self.model.tails):
            seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
            with own_random_stream(seed, x.device):  # the lt expert's random draws stay its method's
                if self.mea.framestack:
                    self.score_lt(x[main], y[main])
                for name, head in self.model.tails.items():
                    term = self.tail_loss(head, x[streams[name]], y[streams[name]], generator)
                    self.metrics[f"loss/{name}"] = term.detach()
                    loss = loss + term
        return loss

    def score_lt(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Keep the lt expert's scores of the main rows (eval mode: no dropout, no BatchNorm update) for the
        per-class AP that drives the tail experts' FrameStack."""
        with torch.no_grad(), evaluating(self.model.base):
            self._scores.append(torch.sigmoid(self.model.base(x)).float().cpu())
        self._targets.append(y.detach().cpu().to(torch.uint8))

    def tail_loss(self, head: nn.Module, x: torch.Tensor, y: torch.Tensor, generator) -> torch.Tensor:
        """BCE of a tail classifier on its stream's trunk features (``mea.trunk=lt``: trunk in eval mode, no
        gradient), the clips FrameStack-augmented with the lt expert's last per-class AP (``mea.framestack``)."""
        if self.mea.framestack and self.previous_ap is not None:
            x, y = augment.framestack_batch(x, y, self.previous_ap.to(x.device), self.cfg.framestack_ratio, generator)
        if self.mea.trunk == "all":
            return self.criterion(head(self.model.base.features(x).unsqueeze(1)), y)
        with torch.no_grad(), evaluating(self.model.base):
            features = self.model.base.features(x).unsqueeze(1)
        return self.criterion(head(features), y)

    def start_epoch(self, epoch: int) -> None:
        self.lt.start_epoch(epoch)

    def end_epoch(self):
        self.lt.end_epoch()
        if self._scores:
            scores = distributed.gather_rows(torch.cat(self._scores)).numpy()
            targets = distributed.gather_rows(torch.cat(self._targets)).numpy()
            self.previous_ap = torch.from_numpy(average_precision(scores, targets)).float()
            self._scores, self._targets = [], []

    def step_metrics(self) -> dict:
        """Each expert's training loss (``loss/<expert>``)."""
        return self.metrics

    def state_dict(self):
        return {"lt": self.lt.state_dict(), "previous_ap": self.previous_ap}

    def load_state_dict(self, state):
        self.lt.load_state_dict(state.get("lt", {}))
        self.previous_ap = state.get("previous_ap")

    def experts(self, x: torch.Tensor) -> dict:
        """Each expert's logits and each combination's (``mix_mean``, ``mix_val``, ``mix_agreement``)."""
        logits = self.model.expert_logits(x)
        return {**logits, **{f"mix_{m}": self.model.mix(logits, m) for m in MIXES}}

    def view_experts(self, x: torch.Tensor) -> dict:
        """Each expert's logits on the two views of the clips (``<expert>/a``, ``<expert>/b``)."""
        a, b = two_views(x)
        la, lb = self.model.expert_logits(a), self.model.expert_logits(b)
        return {**{f"{e}/a": v for e, v in la.items()}, **{f"{e}/b": v for e, v in lb.items()}}

    def calibrate(self, selection_experts) -> dict:
        """The ``val`` weights: the simplex-grid point with the best selection-split mAP."""
        logits, targets = selection_experts()
        weights, best = choose_expert_weights([logits[n] for n in self.model.names], targets, self.mea.step)
        self.model.weights_val.copy_(torch.as_tensor(weights, dtype=torch.float32))
        return {"val_weights": dict(zip(self.model.names, weights.round(6).tolist())), "selection_mAP": best}

    def adapt(self, unlabelled_views) -> dict:
        """The ``agreement`` weights from the test videos' two views (no labels: ``unlabelled_views()``
        returns :meth:`view_experts` over the split)."""
        views = unlabelled_views()
        names = self.model.names
        weights, score = agreement_weights([views[f"{e}/a"] for e in names], [views[f"{e}/b"] for e in names],
                                           self.mea.step)
        self.model.weights_agreement.copy_(torch.as_tensor(weights, dtype=torch.float32))
        return {"agreement_weights": dict(zip(names, weights.round(6).tolist())), "agreement": score}
