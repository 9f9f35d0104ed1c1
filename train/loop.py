"""The training loop shared by every method: epochs, evaluation, selection, checkpoints, resume.

Reproducibility: every random draw of epoch e (shuffling, re-sampling, frame indices, dropout,
augmentations) is seeded from (seed, e), so a run killed at any point and resumed from its last
epoch checkpoint finishes with the same weights as an uninterrupted one (bit-exact on CPU).
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from evaluate.metrics import compute, scalars
from manifests import devices, resources
from manifests.datasets import multi_hot
from manifests.devices import autocast
from manifests.errors import StageFailed
from manifests.files import write_text_atomic
from train import checkpoints, distributed
from train.config import TrainConfig
from train.data import EpochBatches, FeatureBank, batch_spans, eval_frames
from train.methods import Recipe

log = logging.getLogger("pipeline")


@dataclass
class SplitData:
    """Videos of one split: positions in the feature bank and label lists."""

    positions: np.ndarray
    labels: list
    video_ids: list


def derived_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (e.g. run seed, epoch, batch)."""
    return int(np.random.default_rng(list(parts)).integers(2**63 - 1))


def resolve_device(name: str) -> torch.device:
    """``auto``: the GPU of this process (torchrun's LOCAL_RANK) if there is one, else the CPU; a CUDA
    device asked for where none is visible is a UserError."""
    return devices.resolve_device(name, named=f"device {name}", fix="--device cpu or auto", per_process=True)


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    """Step schedule: ``lr * gamma ** #{s in lr_steps : epoch >= s}``."""
    return cfg.lr * cfg.lr_gamma ** sum(epoch >= s for s in cfg.lr_steps)


@torch.inference_mode()
def predict(model, bank: FeatureBank, data: SplitData, cfg: TrainConfig, device, forward=None):
    """(N, C) float32 logits of a split, on ``eval_frames`` uniform frames per video; with ``forward``
    (clips -> dict of (B, C) tensors, e.g. :meth:`Recipe.experts`) a dict of such arrays.

    Always in float32, whatever ``train.amp`` and any enclosing autocast: bf16 logits tie most
    per-class scores, and tied scores let the tie order decide part of the AP.
    """
    model.eval()
    forward = forward or model
    n, out, pending, single = len(data.positions), None, None, True
    for start in range(0, n, cfg.batch_size):
        positions = data.positions[start:start + cfg.batch_size]
        x = bank.clips(positions, eval_frames(bank.lengths[positions], cfg.eval_frames)).to(device)
        with torch.autocast(device.type, enabled=False):
            y = forward(x)
        single = not isinstance(y, dict)
        batch = {None: y} if single else y
        if out is None:  # filled in place: a list of per-batch tensors fragments the heap (peak ~9x the logits)
            out = {k: np.empty((n, v.shape[1]), dtype=np.float32) for k, v in batch.items()}
        if pending is not None:  # one batch behind, so a GPU computes this batch while the last one is copied
            _fill(out, *pending)
        pending = (start, batch)
    if pending is not None:
        _fill(out, *pending)
    return out[None] if single else out


def _fill(out: dict, start: int, batch: dict) -> None:
    """Copy one batch of ``predict``'s outputs into its rows of the preallocated arrays."""
    for k, v in batch.items():
        out[k][start:start + len(v)] = v.float().cpu().numpy()


def probabilities(logits: np.ndarray) -> np.ndarray:
    """float32 sigmoid of logits, computed as the reference does (so its saturation ties are kept)."""
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float32)))


def scores_kind(cfg: TrainConfig) -> str:
    """What the saved scores are: the reference ranks post-sigmoid float32 scores (saturation ties), the
    default ranks logits."""
    return "probabilities" if cfg.compat == "reference" else "logits"


def scores_for_metrics(logits: np.ndarray, cfg: TrainConfig) -> np.ndarray:
    """``logits`` as :func:`scores_kind` says the saved scores are."""
    return probabilities(logits) if scores_kind(cfg) == "probabilities" else logits


class Trainer:
    """Trains one recipe on one split; owns its run folder (checkpoints, logs)."""

    def __init__(self, recipe: Recipe, cfg: TrainConfig, bank: FeatureBank, splits: dict, class_counts,
                 seed: int, run_dir: Path, identity: dict, groups: tuple, progress: bool = True):
        self.recipe, self.cfg, self.bank, self.splits = recipe, cfg, bank, splits
        self.class_counts = np.asarray(class_counts)
        self.num_classes = len(self.class_counts)
        self.seed, self.run_dir, self.identity, self.progress = seed, Path(run_dir), identity, progress
        self.head, self.tail = groups
        self.device = resolve_device(cfg.device)
        torch.set_num_threads(resources.torch_threads())  # this process's CPU share, never the host's cores
        distributed.init(self.device)
        self.model = recipe.model.to(self.device)
        self.optimizer = torch.optim.Adam(recipe.parameters(), lr=cfg.lr)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.device.type == "cuda" and cfg.amp == "fp16")
        train = splits["train"]
        self.train_labels = {int(p): labels for p, labels in zip(train.positions, train.labels)}  # by bank position
        self.samplers = {}  # the extra streams' samplers, by stream name
        self.bar = tqdm(disable=True)  # progress of fit(); a silent bar for direct train_epoch calls
        self.epoch = 0
        self.best = None
        self.history = []

    # ------------------------------------------------------------------ state
    def state(self) -> dict:
        return {**self.identity, "epoch": self.epoch, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "recipe": self.recipe.state_dict(), "best": self.best, "history": self.history}

    def resume(self) -> bool:
        """Continue from ``last.pt`` when it exists (refused if it belongs to another run)."""
        path = self.run_dir / checkpoints.LAST
        if not path.exists():
            return False
        state = checkpoints.load(path)
        checkpoints.check_compatible(state, self.identity, path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.recipe.load_state_dict(state["recipe"])
        self.epoch, self.best, self.history = state["epoch"], state["best"], state["history"]
        log.info("resuming %s from epoch %d (%s)", self.recipe.name, self.epoch, path)
        return True

    # ------------------------------------------------------------------ training
    def epoch_batches(self, epoch: int) -> EpochBatches:
        train = self.splits["train"]
        picked = None
        if self.recipe.sampler is not None:
            from train.samplers import ClassAwareSampler

            sampler = ClassAwareSampler(train.labels, self.num_classes, self.recipe.sampler, seed=self.seed)
            sampler.set_epoch(epoch)
            draws = np.array(list(sampler), dtype=np.int64).reshape(-1, 2)
            order, picked = draws[:, 0], draws[:, 1]
        else:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(train.positions))
        spans = batch_spans(len(order), self.cfg.batch_size, distributed.rank_and_world()[1])
        batches = [train.positions[order[a:b]] for a, b in spans]
        chosen = None if picked is None else [picked[a:b] for a, b in spans]
        streams = []
        for name, (videos, classes) in self.stream_draws(epoch, len(order)).items():
            streams.append(([train.positions[videos[a:b]] for a, b in spans], [classes[a:b] for a, b in spans]))
        return EpochBatches(self.bank, self.train_labels, self.num_classes, batches, chosen, self.cfg.train_frames,
                            self.seed, epoch, shard=distributed.rank_and_world(), streams=streams)

    def stream_draws(self, epoch: int, size: int) -> dict:
        """``(video indices, chosen classes)`` of each of the recipe's extra streams for ``epoch``, ``size``
        draws each, from a generator seeded by (seed, epoch, stream name)."""
        from train.samplers import ClassAwareSampler

        train, out = self.splits["train"], {}
        for name, mode in self.recipe.streams.items():
            if name not in self.samplers:
                self.samplers[name] = ClassAwareSampler(train.labels, self.num_classes, mode, num_samples=size)
            rng = np.random.default_rng([self.seed, epoch, zlib.crc32(name.encode())])
            out[name] = self.samplers[name].draw(rng)
        return out

    def loader(self, dataset: EpochBatches):
        if self.bank.packed is not None or self.cfg.num_workers == 0:
            return (dataset[i] for i in range(len(dataset)))
        workers = min(self.cfg.num_workers, resources.cpus_per_process())
        return torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                                           pin_memory=self.device.type == "cuda", persistent_workers=False)

    def train_epoch(self, epoch: int) -> tuple:
        """One epoch: ``(mean training loss, per-epoch means of the recipe's step metrics)``."""
        self.model.train()
        torch.manual_seed(derived_seed(self.seed, epoch, *distributed.own_stream()))  # dropout
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.cfg, epoch)
        self.recipe.start_epoch(epoch)
        dataset = self.epoch_batches(epoch)
        if self.bar.total is None:  # the first epoch of this process sizes the bar: steps left in the run
            self.bar.reset(total=len(dataset) * (self.cfg.epochs - epoch))
        total, count, sums = 0.0, 0, {}
        for b, (x, y, chosen, positions, sizes) in enumerate(self.loader(dataset)):
            self.bank.check_finite(x, positions)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            generator = torch.Generator().manual_seed(derived_seed(self.seed, epoch, b, *distributed.own_stream()))
            extra = {"streams": self.recipe.stream_rows(sizes.tolist())} if self.recipe.streams else {}
            with autocast(self.device, self.cfg.amp):
                loss = self.recipe.training_loss(x, y, chosen.to(self.device), generator, **extra)
            if not torch.isfinite(loss):
                raise StageFailed(f"training diverged: the {self.recipe.name} loss is {loss.item()} at epoch {epoch}, "
                                  f"batch {b}; the last good checkpoint is kept in {self.run_dir}. Lower "
                                  "train.lr or check the features for extreme values")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            distributed.average_gradients(self.recipe.parameters(), int(sizes[0]))
            if self.cfg.grad_clip is not None and self.recipe.clip_parameters():
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.recipe.clip_parameters(), self.cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            total += float(loss.detach()) * int(sizes[0])
            count += int(sizes[0])
            for key, value in self.recipe.step_metrics().items():
                sums[key] = sums.get(key, 0.0) + value
            self.bar.update()
        self.recipe.end_epoch()
        distributed.average_buffers(self.model)
        total, count, *values = distributed.sum_over_processes([total, count, *map(float, sums.values())])
        world = distributed.rank_and_world()[1]  # step metrics: the mean over processes of their means
        means = {key: value / world / len(dataset) for key, value in zip(sums, values)}
        return total / max(count, 1), means

    def evaluate(self, split: str) -> dict:
        data = self.splits[split]
        logits = predict(self.model, self.bank, data, self.cfg, self.device)
        return scalars(compute(scores_for_metrics(logits, self.cfg), multi_hot(data.labels, self.num_classes),
                               self.class_counts, head=self.head, tail=self.tail))

    def fit(self) -> dict:
        """Train to ``cfg.epochs``, keeping the best checkpoint on ``cfg.select_on``."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        from torch.utils.tensorboard import SummaryWriter

        main = distributed.is_main()
        writer = SummaryWriter(self.run_dir / "tensorboard", purge_step=self.epoch) if main else None
        self.bar = tqdm(desc=f"train {self.recipe.name}", unit="batch", dynamic_ncols=True,
                        disable=not (self.progress and main))  # one bar over every batch left, with ETA
        for epoch in range(self.epoch, self.cfg.epochs):
            started = time.perf_counter()
            loss, terms = self.train_epoch(epoch)
            row = {"epoch": epoch, "loss": loss, "lr": learning_rate(self.cfg, epoch), **terms}
            evaluate_now = (epoch + 1) % self.cfg.eval_every == 0 or epoch + 1 == self.cfg.epochs
            if evaluate_now and distributed.is_main():
                row[self.cfg.select_on] = self.evaluate(self.cfg.select_on)
                if self.best is None or row[self.cfg.select_on]["mAP"] > self.best["mAP"]:
                    self.best = {"epoch": epoch, **row[self.cfg.select_on]}
                    checkpoints.save(self.run_dir / checkpoints.BEST,
                                     {**self.identity, "epoch": epoch, "model": self.model.state_dict()})
            row["seconds"] = round(time.perf_counter() - started, 3)
            self.history.append(row)
            self.epoch = epoch + 1
            if distributed.is_main():
                checkpoints.save(self.run_dir / checkpoints.LAST, self.state())
                self.write_logs(writer, row, terms)
            distributed.barrier()
            self.bar.set_postfix(epoch=f"{epoch + 1}/{self.cfg.epochs}", loss=f"{loss:.4f}",
                                 best_mAP=f"{self.best['mAP']:.3f}" if self.best else "-")
        self.bar.close()
        if writer is not None:
            writer.close()
        return self.best

    def write_logs(self, writer, row: dict, terms=()) -> None:
        """log.jsonl (the whole history) and this epoch's TensorBoard scalars, ``terms`` among them."""
        write_text_atomic(self.run_dir / "log.jsonl", "".join(json.dumps(r) + "\n" for r in self.history))
        writer.add_scalar("loss/train", row["loss"], row["epoch"])
        writer.add_scalar("lr", row["lr"], row["epoch"])
        for key in terms:
            writer.add_scalar(f"train/{key}", row[key], row["epoch"])
        for key, value in row.get(self.cfg.select_on, {}).items():
            if value is not None:
                writer.add_scalar(f"{self.cfg.select_on}/{key}", value, row["epoch"])

    def load_best(self) -> dict:
        """Load the selected (best) checkpoint into the model; returns the checkpoint."""
        state = checkpoints.load(self.run_dir / checkpoints.BEST)
        self.model.load_state_dict(state["model"])
        return state

    def calibrate(self) -> dict:
        """The recipe's post-hoc fit (:meth:`Recipe.calibrate`) on the selection split with the best
        checkpoint, saved back into it; returns what the recipe chose ({} when it has nothing to fit)."""
        state = self.load_best()
        data = self.splits[self.cfg.select_on]

        def selection_experts():
            return (predict(self.model, self.bank, data, self.cfg, self.device, forward=self.recipe.experts),
                    multi_hot(data.labels, self.num_classes))

        chosen = self.recipe.calibrate(selection_experts)
        if chosen:
            checkpoints.save(self.run_dir / checkpoints.BEST, {**state, "model": self.model.state_dict()})
        return chosen

    def adapt(self, split: str = "test") -> tuple:
        """``(chosen, views)``: the recipe's label-free test-time fit (:meth:`Recipe.adapt`) on ``split``'s
        features, its labels withheld, with the best checkpoint, saved back into it (chosen: {} when the
        recipe has nothing to fit); views: the :meth:`Recipe.view_experts` it used when the recipe has a
        :attr:`~Recipe.view_step`, else {}."""
        state = self.load_best()
        data = self.splits[split]
        unlabelled = SplitData(data.positions, [[] for _ in data.positions], list(data.video_ids))
        views = {}

        def unlabelled_views():
            if not views:  # one pass, whatever the recipe asks
                views.update(predict(self.model, self.bank, unlabelled, self.cfg, self.device,
                                     forward=self.recipe.view_experts))
            return views

        chosen = self.recipe.adapt(unlabelled_views)
        if chosen:
            checkpoints.save(self.run_dir / checkpoints.BEST, {**state, "model": self.model.state_dict()})
        return chosen, (views if self.recipe.view_step else {})

    def predict_best(self, split: str) -> tuple:
        """``(logits, {expert: logits})`` of ``split`` from the selected (best) checkpoint, the second
        from :meth:`Recipe.experts` (empty for single models); one pass over the split."""
        self.load_best()

        def both(x):
            return {"": self.model(x), **self.recipe.experts(x)}  # "" is no expert's name

        out = predict(self.model, self.bank, self.splits[split], self.cfg, self.device, forward=both)
        return out.pop(""), out
