"""MEDC (Hu, Gao, Xu, TMM'23): multi-expert distribution calibration (no public code; our reading).

:class:`Medc` is the recipe of ``train.method=medc`` and :class:`MedcModel` its model (a shared trunk and
one :class:`Expert` per name in ``medc.experts``); the model, what each expert sees, the loss and the
order of the random draws are described in docs/methods.md (MEDC), every interpretation and its
evidence in docs/decisions.md (MEDC).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from train.aggregators import AggregatedFeatures, aggregator_order
from train.config import MedcConfig, MoveConfig, TrainConfig
from train.ensembles import choose_expert_weights, combine_experts, evaluating
from train.losses import count_vector
from train.methods import Recipe
from train.samplers import resort

__all__ = [
    "EXPERTS",
    "resort",
    "expert_class_weights",
    "region_targets",
    "sample_region_targets",
    "sorting_loss",
    "region_loss",
    "Expert",
    "MedcModel",
    "Medc",
]

EXPERTS = ("lt", "uni", "inv")


# --------------------------------------------------------------------------- class constants

def expert_class_weights(class_counts, kind: str) -> np.ndarray:
    """Per-class BCE weights of an expert (float64, mean 1 for uni/inv).

    ``lt``: 1; ``uni``: ``w_c ∝ 1/omega_c``; ``inv``: ``w_c ∝ resort(omega)_c / omega_c``; both normalised
    to mean 1 over classes. ``omega_c = n_c / sum(n)``; a class with ``n_c = 0`` counts as 1.
    """
    n = np.maximum(count_vector(class_counts), 1.0)
    omega = n / n.sum()
    if kind == "lt":
        return np.ones_like(omega)
    if kind == "uni":
        w = 1.0 / omega
    elif kind == "inv":
        w = resort(omega) / omega
    else:
        raise ValueError(f"unknown expert {kind!r}; valid: {', '.join(EXPERTS)}")
    return w / w.mean()


def region_targets(class_counts, kind: str, a: float = 0.1, b: float = 1.0) -> np.ndarray:
    """Per-class region-size targets gamma_c of an expert (float64).

    ``uni``: 0.5; ``lt``: ``a + (b - a)(n_c - n_min)/(n_max - n_min)`` (head regions larger); ``inv``: the
    same mapping applied to ``resort(n)`` (tail regions larger). Equal counts give ``(a + b) / 2``.
    """
    n = count_vector(class_counts)
    if kind == "uni":
        return np.full_like(n, 0.5)
    if kind not in ("lt", "inv"):
        raise ValueError(f"unknown expert {kind!r}; valid: {', '.join(EXPERTS)}")
    if kind == "inv":
        n = resort(n)
    span = n.max() - n.min()
    if span == 0:
        return np.full_like(n, (a + b) / 2)
    return a + (b - a) * (n - n.min()) / span


def sample_region_targets(y: torch.Tensor, gamma: torch.Tensor):
    """Per-video target (mean of its labels' gamma) and a bool mask of videos that have labels."""
    labels = (y > 0).to(gamma.dtype)
    count = labels.sum(dim=1)
    has = count > 0
    return labels @ gamma / count.clamp(min=1), has


# --------------------------------------------------------------------------- losses

def sorting_loss(mu: torch.Tensor, y: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """Supervised contrastive ("sorting") loss on L2-normalised ``mu`` (B, d).

    For anchor i with positives P(i) = {p != i sharing >= 1 label}:
    ``-mean_{p in P(i)} log(exp(u_i.u_p/tau) / sum_{a != i} exp(u_i.u_a/tau))``; averaged over the
    anchors that have a positive (others skipped). 0 (with a graph) when no anchor has one.
    Computed in float32.
    """
    u = F.normalize(mu.float(), dim=1)
    b = u.shape[0]
    sim = u @ u.t() / tau
    eye = torch.eye(b, dtype=torch.bool, device=u.device)
    labels = (y > 0).float()
    positive = ((labels @ labels.t()) > 0) & ~eye
    # a finite fill (not -inf) keeps a one-sample batch (empty denominator) finite in both directions
    log_denominator = torch.logsumexp(sim.masked_fill(eye, -1e9), dim=1, keepdim=True)
    log_prob = torch.where(positive, sim - log_denominator, torch.zeros_like(sim))
    n_pos = positive.sum(dim=1)
    valid = (n_pos > 0).float()
    per_anchor = -log_prob.sum(dim=1) / n_pos.clamp(min=1)  # 0 for anchors without positives
    return (per_anchor * valid).sum() / valid.sum().clamp(min=1)  # no host sync on GPU


def region_loss(sigma: torch.Tensor, y: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``mean_i (mean_dims(sigma_i^2) - gamma_{y_i})^2`` over the videos with labels."""
    target, has = sample_region_targets(y, gamma.to(device=sigma.device, dtype=torch.float32))
    size = sigma.float().pow(2).mean(dim=1)
    has = has.float()
    return ((size - target).pow(2) * has).sum() / has.sum().clamp(min=1)


def classification_loss(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None,
                        reduction: str = "sum") -> torch.Tensor:
    """BCE-with-logits (optionally weighted per class) in float32: ``sum`` over classes then mean over
    videos, or ``mean`` over B x C."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), y.float(), weight=weight, reduction="none")
    if reduction == "sum":
        return bce.sum(dim=1).mean()
    if reduction != "mean":
        raise ValueError(f"reduction must be sum or mean, got {reduction!r}")
    return bce.mean()


def anchors_with_positives(y: torch.Tensor) -> torch.Tensor:
    """Share of the batch's videos that share a label with another video (the sorting loss's anchors)."""
    labels = (y > 0).float()
    overlap = labels @ labels.t()
    overlap.fill_diagonal_(0)
    return (overlap > 0).any(dim=1).float().mean()


# --------------------------------------------------------------------------- model

def _framewise_bn(bn: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    b, t, d = x.shape
    return bn(x.reshape(b * t, d)).view(b, t, d)


class FrameTrunk(nn.Module):
    """Shared trunk: frame-wise ``ReLU(BN(Linear(D->H)))``, (B, T, D) -> (B, T, H)."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.out_dim = int(hidden)
        self.fc = nn.Linear(int(in_dim), self.out_dim)
        self.bn = nn.BatchNorm1d(self.out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(_framewise_bn(self.bn, self.fc(x)))


class AggregatorTrunk(AggregatedFeatures):
    """Shared trunk: MOVE's static ``[PSA, NetVLAD]`` video feature as a one-frame clip (B, 1, D + hidden)."""

    def __init__(self, in_dim: int, move: MoveConfig):
        super().__init__()
        self.add_aggregators(in_dim, aggregator_order(move.aggregators), clusters=move.clusters,
                             vlad_hidden=move.vlad_hidden, n_head=move.n_head, psa_dim=move.psa_dim)
        self.out_dim = self.feature_dim
        # Draw (and drop) the initial weights of the one-unit classifier that earlier versions built beside
        # the aggregators, so that the experts' initial weights, and the results, stay those of earlier runs.
        nn.Linear(self.out_dim, 1)
        nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).unsqueeze(1)


class Expert(nn.Module):
    """One distribution expert: phi_e, mean branch, variance branch, classifier psi_e."""

    def __init__(self, in_dim: int, dim: int, num_classes: int, temporal_attention: bool = True):
        """An expert of width ``dim`` on ``in_dim`` trunk features; variance branch by attention or FC + BN."""
        super().__init__()
        self.dim, self.temporal_attention = int(dim), bool(temporal_attention)
        self.phi = nn.Linear(int(in_dim), self.dim)
        self.phi_bn = nn.BatchNorm1d(self.dim)
        self.mu_fc = nn.Linear(self.dim, self.dim)
        self.mu_bn = nn.BatchNorm1d(self.dim)
        if self.temporal_attention:
            self.f_q = nn.Linear(self.dim, self.dim)
            self.f_k = nn.Linear(self.dim, self.dim)
            self.f_v = nn.Linear(self.dim, self.dim)
        else:
            self.sigma_fc = nn.Linear(self.dim, self.dim)
            self.sigma_bn = nn.BatchNorm1d(self.dim)
        self.classifier = nn.Linear(self.dim, int(num_classes))

    def frames(self, h: torch.Tensor) -> torch.Tensor:
        """h_e = phi_e(trunk frames), (B, T, d)."""
        return F.relu(_framewise_bn(self.phi_bn, self.phi(h)))

    def mean(self, h_e: torch.Tensor) -> torch.Tensor:
        """mu = mean_t BN(FC(h_e)), (B, d)."""
        return _framewise_bn(self.mu_bn, self.mu_fc(h_e)).mean(dim=1)

    def spread(self, h_e: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        """sigma > 0, (B, d), from the centred frames r = h_e - mu."""
        r = h_e - mu.unsqueeze(1)
        if self.temporal_attention:
            scores = torch.matmul(self.f_q(r), self.f_k(r).transpose(1, 2)) / self.dim ** 0.5
            attn = F.softmax(scores, dim=-1)  # (B, T, T)
            pooled = torch.matmul(attn, self.f_v(r.abs())).mean(dim=1)
        else:
            pooled = _framewise_bn(self.sigma_bn, self.sigma_fc(r.abs())).mean(dim=1)
        return F.softplus(pooled)

    def forward(self, h: torch.Tensor, noise: torch.Tensor | None = None, spread: bool | None = None) -> dict:
        """``mu``, ``sigma`` (when ``spread``; default: when ``noise`` is given), ``z = mu + noise * sigma``
        (``z = mu`` without noise) and ``logits = psi_e(z)`` for trunk output ``h``."""
        h_e = self.frames(h)
        mu = self.mean(h_e)
        sigma = self.spread(h_e, mu) if (noise is not None if spread is None else spread) else None
        z = mu if noise is None else mu + noise.to(device=mu.device, dtype=mu.dtype) * sigma
        return {"mu": mu, "sigma": sigma, "z": z, "logits": self.classifier(z)}


class MedcModel(nn.Module):
    """Trunk + experts; ``forward(x)`` = combined logits from ``z = mu`` (evaluation path)."""

    def __init__(self, in_dim: int, num_classes: int, medc: MedcConfig, move: MoveConfig | None = None):
        """The trunk of ``medc.trunk`` (MOVE's aggregators sized by ``move``), the experts, and the learnable
        loss / combination weights or the ``val`` weights buffer when ``medc`` asks for them."""
        super().__init__()
        self.in_dim, self.num_classes = int(in_dim), int(num_classes)
        self.inference = medc.inference
        names = list(dict.fromkeys(medc.experts))
        if medc.trunk == "mlp":
            self.trunk = FrameTrunk(in_dim, medc.trunk_dim)
        else:
            self.trunk = AggregatorTrunk(in_dim, move or MoveConfig())
        self.experts = nn.ModuleDict({
            name: Expert(self.trunk.out_dim, medc.expert_dim, num_classes, medc.temporal_attention)
            for name in names})
        self.loss_logits = self.combine_logits = None
        if medc.learnable_weights:
            lam = np.array([medc.lambda_mu, medc.lambda_cls, medc.lambda_sigma], dtype=np.float64)
            init = np.log(np.maximum(lam / lam.sum(), 1e-8)) if lam.sum() > 0 else np.zeros(3)
            self.loss_logits = nn.Parameter(torch.tensor(init, dtype=torch.float32))
        if medc.inference == "learned":
            self.combine_logits = nn.Parameter(torch.zeros(len(names)))
        if medc.inference == "val":  # set after training by Medc.calibrate, saved in the checkpoint
            self.register_buffer("val_weights", torch.full((len(names),), 1.0 / len(names)))

    def loss_weights(self) -> torch.Tensor:
        """Softmax-normalised learnable weights of (L_mu, L_cls, L_sigma); only with learnable_weights."""
        return F.softmax(self.loss_logits, dim=0)

    def expert_weights(self) -> torch.Tensor | None:
        """Weights of the experts in the combination (learned / val), None for the uniform average."""
        if self.inference == "learned":
            return F.softmax(self.combine_logits, dim=0)
        return self.val_weights if self.inference == "val" else None

    def expert_logits(self, x: torch.Tensor) -> dict:
        """``psi_e(mu_e)`` of every expert (evaluation path), by name."""
        h = self.trunk(x)
        return {name: expert(h)["logits"] for name, expert in self.experts.items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = "logits" if self.inference == "logits" else "probabilities"
        return combine_experts(list(self.expert_logits(x).values()), mode, self.expert_weights())


STREAM_MODES = {"uni": "cbs", "inv": "inv"}  # expert -> ClassAwareSampler mode of its own batch stream


class Medc(Recipe):
    """``train.method=medc``: see docs/methods.md (MEDC)."""

    def __init__(self, name: str, cfg: TrainConfig, in_dim: int, num_classes: int, class_counts,
                 options: dict | None = None):
        """The model, each expert's batch stream (``sample``), class weights and region-size targets."""
        self.name, self.cfg, self.options = name, cfg, options or {}
        self.medc = medc = self.section("medc", MedcConfig)
        counts = count_vector(class_counts)
        if counts.shape != (num_classes,):
            raise ValueError(f"class_counts has shape {counts.shape}, expected ({num_classes},)")
        self.model = MedcModel(in_dim, num_classes, medc, self.section("move", MoveConfig))
        names = list(self.model.experts)
        self.streams = ({e: STREAM_MODES[e] for e in names if e in STREAM_MODES}
                        if medc.expert_input == "sample" else {})
        self.class_weights = {e: torch.tensor(expert_class_weights(counts, e), dtype=torch.float32) for e in names}
        self.gammas = {e: torch.tensor(region_targets(counts, e, medc.region_a, medc.region_b), dtype=torch.float32)
                       for e in names}
        self.last: dict = {}
        self.metrics: dict = {}

    def clip_parameters(self):
        """``train.grad_clip`` (if set) applies to every parameter, as for the late-average baselines."""
        return list(self.model.parameters())

    def start_epoch(self, epoch: int) -> None:
        pass

    def resample_rows(self, y: torch.Tensor, kind: str, generator: torch.Generator | None) -> torch.Tensor:
        """B row indices drawn with replacement, per-video probability ∝ mean of its labels' class weight."""
        labels = (y.detach() > 0).float().cpu()
        count = labels.sum(dim=1)
        weight = self.class_weights[kind]
        per_video = torch.where(count > 0, labels @ weight / count.clamp(min=1), torch.ones_like(count))
        device = generator.device if generator is not None else torch.device("cpu")
        rows = torch.multinomial(per_video.to(device), y.shape[0], replacement=True, generator=generator)
        return rows.to(y.device)

    def expert_inputs(self, x, y, generator, streams) -> tuple:
        """``(trunk output, its targets, {expert: (its rows of the trunk output, targets, BCE class weight
        or None)})`` by ``medc.expert_input``; the trunk runs once, on the rows some expert uses."""
        mode = self.medc.expert_input
        if mode == "sample":
            if streams is None and self.streams:
                raise ValueError("medc.expert_input=sample needs the batch streams of the training loop")
            streams = streams or self.stream_rows([len(y)])
            own = {e: streams[e if e in self.streams else "main"] for e in self.model.experts}
            used = list(dict.fromkeys((s.start, s.stop) for s in own.values()))  # rows the trunk sees
            h = self.model.trunk(torch.cat([x[a:b] for a, b in used]) if len(used) > 1 else x[slice(*used[0])])
            offset = dict(zip(used, np.cumsum([0] + [b - a for a, b in used]).tolist()))
            rows = {e: slice(offset[(s.start, s.stop)], offset[(s.start, s.stop)] + s.stop - s.start)
                    for e, s in own.items()}
            y_h = torch.cat([y[a:b] for a, b in used])
            return h, y_h, {e: (h[rows[e]], y[own[e]], None) for e in own}
        h, out = self.model.trunk(x), {}
        for e in self.model.experts:
            if mode == "reweight":
                out[e] = (h, y, self.class_weights[e].to(y.device))
            elif e == "lt":
                out[e] = (h, y, None)
            else:  # batch_resample
                rows = self.resample_rows(y, e, generator)
                self.last[f"{e}_rows"] = rows
                out[e] = (h[rows], y[rows], None)
        return h, y, out

    def training_loss(self, x, y, chosen, generator, streams=None):
        """Sum over the experts of ``lambda_mu L_mu + lambda_cls L_cls + lambda_sigma L_sigma`` (plus the
        combination loss with ``inference=learned``); per-expert terms in :meth:`step_metrics`."""
        model, medc = self.model, self.medc
        self.last = {}
        h, y_h, inputs = self.expert_inputs(x, y, generator, streams)
        device = generator.device if generator is not None else torch.device("cpu")
        totals, metrics = {"l_mu": 0.0, "l_cls": 0.0, "l_sigma": 0.0}, {}
        for name, expert in model.experts.items():
            h_e, y_e, weight = inputs[name]
            noise = (torch.randn((h_e.shape[0], expert.dim), generator=generator, device=device)
                     if medc.noise else None)
            out = expert(h_e, noise, spread=True)
            terms = {"l_cls": classification_loss(out["logits"], y_e, weight, medc.cls_reduction),
                     "l_mu": sorting_loss(out["mu"], y_e, medc.tau),
                     "l_sigma": region_loss(out["sigma"], y_e, self.gammas[name])}
            for key, value in terms.items():
                totals[key] = totals[key] + value
                metrics[f"{key}/{name}"] = value.detach()
            metrics[f"positives/{name}"] = anchors_with_positives(y_e)
            self.last[name] = {k: v.detach() for k, v in out.items()}
        w = model.loss_weights() if model.loss_logits is not None else (medc.lambda_mu, medc.lambda_cls,
                                                                            medc.lambda_sigma)
        total = w[0] * totals["l_mu"] + w[1] * totals["l_cls"] + w[2] * totals["l_sigma"]
        if model.combine_logits is not None:
            total = total + self.combination_loss(h, y_h, metrics)
        self.last.update({k: v.detach() for k, v in totals.items()})
        self.metrics = metrics
        return total

    def combination_loss(self, h: torch.Tensor, y: torch.Tensor, metrics: dict) -> torch.Tensor:
        """``inference=learned``: BCE of the softmax-weighted probability average of the experts'
        evaluation-path logits (eval mode, no gradient into the experts or the trunk) on every row the
        trunk saw; it trains only the combination weights."""
        with torch.no_grad(), evaluating(self.model.experts):
            logits = [expert(h.detach())["logits"] for expert in self.model.experts.values()]
        weights = self.model.expert_weights()
        for name, value in zip(self.model.experts, weights):
            metrics[f"weight/{name}"] = value.detach()
        return classification_loss(combine_experts(logits, "probabilities", weights), y, None,
                                   self.medc.cls_reduction)

    def step_metrics(self) -> dict:
        """Per-expert loss terms (``l_cls/<expert>``, ``l_mu/...``, ``l_sigma/...``), the share of videos
        with a positive for the sorting loss (``positives/<expert>``) and learned combination weights."""
        return self.metrics

    def experts(self, x: torch.Tensor) -> dict:
        """Each expert's evaluation-path logits ``psi_e(mu_e)``."""
        return self.model.expert_logits(x)

    def calibrate(self, selection_experts) -> dict:
        """``inference=val``: the expert weights on a simplex grid (step ``val_step``) that maximise the
        selection split's mAP, stored in the model (``val_weights``)."""
        if self.medc.inference != "val":
            return {}
        logits, targets = selection_experts()
        names = list(self.model.experts)
        weights, best = choose_expert_weights([logits[n] for n in names], targets, self.medc.val_step)
        self.model.val_weights.copy_(torch.as_tensor(weights, dtype=torch.float32))
        return {"expert_weights": dict(zip(names, weights.round(6).tolist())), "selection_mAP": best}
