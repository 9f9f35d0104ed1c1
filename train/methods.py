"""Methods as short recipes: a head, a loss, an optional re-sampler and batch augmentation.

The training loop (``train.loop``) is the same for every method; it calls the hooks below. Methods
are registered by name in train/registry.py (one entry each).
Each recipe reproduces the settings of the published VideoLT / MOVE training scripts; where we depart
from them, docs/decisions.md says so.
"""

from __future__ import annotations

import numpy as np
import torch

from evaluate.metrics import average_precision
from train import augment, distributed, losses, models, registry
from train.config import MoveConfig, TrainConfig


class Recipe:
    """Plain training: ``loss(model(x), y)``; subclasses change the loss, sampling or batch."""

    loss_name = "bce"
    loss_defaults: dict = {}
    sampler: str | None = None  # "cbs" | "srs": class-aware re-sampling with the loss mask
    # extra batch streams drawn from the whole training set each step, name -> ClassAwareSampler mode;
    # a recipe with streams gets every stream's rows in one batch and ``streams={name: rows}``
    streams: dict = {}
    # a float: write the test videos' view_experts into predictions.npz, and evaluate refits the agreement
    # weights on each test profile on this grid step
    view_step: float | None = None

    def __init__(self, name: str, cfg: TrainConfig, in_dim: int, num_classes: int, class_counts,
                 options: dict | None = None):
        self.name, self.cfg, self.options = name, cfg, options or {}
        head = {}
        if cfg.head == "aggregators":  # "Baseline + Agg": the aggregators MOVE is configured with
            move = self.section("move", MoveConfig)
            head = {"clusters": move.clusters, "vlad_hidden": move.vlad_hidden, "n_head": move.n_head,
                    "psa_dim": move.psa_dim}
        self.model = models.build(cfg.head, in_dim, num_classes, hidden=cfg.hidden, dropout=cfg.dropout, **head)
        params = {**self.loss_defaults, **cfg.loss.get(self.loss_name, {})}
        self.criterion = losses.build(self.loss_name, np.asarray(class_counts), **params)

    def section(self, key: str, default):
        """A method's own config section (``move``, ``medc``) from the options, else its defaults."""
        return self.options.get(key) or default()

    def parameters(self):
        """Parameters the optimiser updates."""
        return self.model.parameters()

    def clip_parameters(self):
        """Parameters whose global gradient norm is clipped: all of the late-average model; with
        the aggregators head only the classifier, as the reference's "Baseline + Agg" does."""
        if self.cfg.head == "aggregators":
            return list(self.model.classifier.parameters())
        return list(self.model.parameters())

    def start_epoch(self, epoch: int) -> None:
        self.criterion.set_epoch(epoch)

    def stream_rows(self, sizes: list) -> dict:
        """Row slices of a batch's streams from their row counts (main first): ``{"main": slice, name: slice}``."""
        names = ["main", *self.streams]
        if len(sizes) != len(names):
            raise ValueError(f"a batch with {len(sizes)} streams, the recipe has {len(names)} ({names})")
        ends = np.cumsum(sizes).tolist()
        return {name: slice(end - size, end) for name, size, end in zip(names, sizes, ends)}

    def training_loss(self, x, y, chosen, generator: torch.Generator) -> torch.Tensor:
        """Loss of one training batch; ``chosen`` holds the re-sampled class per video (or -1). Recipes
        that declare :attr:`streams` also get ``streams``, the row slices of :meth:`stream_rows`."""
        mask = None
        if self.sampler is not None:
            from train.samplers import resample_mask

            mask = resample_mask(y, chosen)
        return self.criterion(self.model(x), y, mask=mask)

    def step_metrics(self) -> dict:
        """Named scalars (floats or 0-d tensors) of the last training step; the trainer logs their
        per-epoch means in ``log.jsonl`` and TensorBoard (``train/<name>``)."""
        return {}

    def experts(self, x: torch.Tensor) -> dict:
        """Logits (each (B, C)) of the members of an ensemble model by name (MEDC's experts), evaluated
        beside the combined prediction; {} for single models."""
        return {}

    def calibrate(self, selection_experts) -> dict:
        """Fit post-hoc settings into the model after training (saved in the best checkpoint); returns
        what was chosen, {} for nothing. ``selection_experts()`` computes the selection split's
        ``(dict of :meth:`experts` (N, C) logits, (N, C) 0/1 targets)`` on demand."""
        return {}

    def view_experts(self, x: torch.Tensor) -> dict:
        """Logits of the experts on two views of each clip (for :meth:`adapt`); {} for single models."""
        return {}

    def adapt(self, unlabelled_views) -> dict:
        """Fit test-time settings without labels (saved in the best checkpoint); ``unlabelled_views()``
        computes :meth:`view_experts` over the test videos, which are given without their labels.
        Returns what was chosen, {} for nothing."""
        return {}

    def end_epoch(self) -> None:
        """Called after the last batch of an epoch."""

    def state_dict(self) -> dict:
        """Method state beyond the model's weights (saved in checkpoints)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""


class Focal(Recipe):
    loss_name = "focal"


class LdamDrw(Recipe):
    loss_name = "ldam_drw"


class Eql(Recipe):
    loss_name = "eql"


class CbLoss(Recipe):
    loss_name = "cb"


class Cbs(Recipe):
    sampler = "cbs"


class Srs(Recipe):
    sampler = "srs"


class Mixup(Recipe):
    def training_loss(self, x, y, chosen, generator):
        x, y, _ = augment.mixup(x, y, generator)
        return self.criterion(self.model(x), y)


class FrameStack(Recipe):
    """Focal loss (gamma 1) with FrameStack from epoch 1, driven by the previous epoch's per-class
    AP of the model's own training predictions (train mode, un-augmented clips)."""

    loss_name = "focal"
    loss_defaults = {"gamma": 1.0}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.previous_ap = None  # per-class AP of the last finished epoch
        self._scores, self._targets = [], []

    def training_loss(self, x, y, chosen, generator):
        if self.previous_ap is not None:
            ap = self.previous_ap.to(x.device)
            x_mixed, y_mixed = augment.framestack_batch(x, y, ap, self.cfg.framestack_ratio, generator)
        else:
            x_mixed, y_mixed = x, y
        loss = self.criterion(self.model(x_mixed), y_mixed)
        with torch.no_grad():  # the AP source: the running model on the un-augmented batch
            self._scores.append(torch.sigmoid(self.model(x)).float().cpu())
            self._targets.append(y.cpu().to(torch.uint8))
        return loss

    def end_epoch(self):
        scores = distributed.gather_rows(torch.cat(self._scores)).numpy()
        targets = distributed.gather_rows(torch.cat(self._targets)).numpy()
        self.previous_ap = torch.from_numpy(average_precision(scores, targets)).float()
        self._scores, self._targets = [], []

    def state_dict(self):
        return {"previous_ap": self.previous_ap}

    def load_state_dict(self, state):
        self.previous_ap = state.get("previous_ap")


def build(name: str, cfg: TrainConfig, in_dim: int, num_classes: int, class_counts,
          options: dict | None = None) -> Recipe:
    """The recipe of method ``name`` (train/registry.py); ``options`` maps a method's section name to
    its config (move, medc)."""
    return registry.recipe_class(name)(name, cfg, in_dim, num_classes, class_counts, options)
