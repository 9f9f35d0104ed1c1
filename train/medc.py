"""MEDC (Hu, Gao, Xu, TMM'23): multi-expert distribution calibration, as specified in
/work/shared/spec/MEDC.md (our reading of the paper; every interpretation is listed in
docs/decisions.md, section "MEDC").

Model (:class:`MedcModel`):

* **trunk** shared by the experts: ``medc.trunk=mlp`` a frame-wise ``Linear(D->H) + BN + ReLU``
  (BN over the B*T frame rows); ``medc.trunk=aggregators`` MOVE's static PSA + NetVLAD aggregated
  video feature ``[PSA (D), VLAD (vlad_hidden)]`` as a one-frame clip (B, 1, D + vlad_hidden), sized by
  the ``move`` config section.
* one :class:`Expert` per name in ``medc.experts`` (``lt``, ``uni``, ``inv``): frame-wise
  ``phi_e = Linear(->d) + BN + ReLU``; mean branch ``mu = mean_t BN(FC(h_e))``; variance branch on the
  centred frames ``r_t = h_{e,t} - mu``: temporal attention ``A = softmax(f_q(r) f_k(r)^T / sqrt(d))``,
  ``sigma = softplus(mean_t (A f_v(|r|))_t)`` (``medc.temporal_attention=false``:
  ``softplus(mean_t BN(FC(|r_t|)))``); classifier ``psi_e = Linear(d->C)``.
* training ``z = mu + eps * sigma`` (``eps ~ N(0, I)`` from the batch generator), evaluation ``z = mu``.
* ``forward(x)`` (the evaluation / prediction path) combines the experts' ``psi_e(mu_e)``:
  ``medc.inference=probabilities`` returns ``logit(mean_e sigmoid(s_e))`` computed exactly as
  ``logsumexp_e logsigmoid(s_e) - logsumexp_e logsigmoid(-s_e)`` (finite, no clamping, so rankings are
  not flattened by saturation); ``logits`` returns ``mean_e s_e``.

Loss (:meth:`Medc.training_loss`), summed over the experts:
``lambda_mu * L_mu + lambda_cls * L_cls + lambda_sigma * L_sigma`` with

* ``L_cls,e``: BCE-with-logits weighted per class by :func:`expert_class_weights` (mean over B x C);
* ``L_mu,e``: :func:`sorting_loss` (supervised contrastive on L2-normalised ``mu``, temperature tau);
* ``L_sigma,e``: :func:`region_loss` with the per-class targets of :func:`region_targets`.

``medc.learnable_weights=true`` replaces the three lambdas by ``softmax(model.loss_logits)``
(initialised to the configured lambdas normalised to sum 1).

``medc.expert_input=resample``: the trunk runs once on the batch; the ``lt`` expert sees the batch as is,
``uni`` / ``inv`` see B rows re-drawn with replacement (``torch.multinomial`` with the generator) with
per-video probability proportional to the mean over its labels of that expert's class weight, and use
unweighted BCE (re-sampling replaces re-weighting).

Randomness, in this order per expert (``medc.experts`` order): the re-sampled rows (resample mode,
``uni``/``inv`` only), then ``eps`` (float32 standard normals of shape (B, d)); all from the batch
generator, drawn on its device.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from train.config import MedcConfig, MoveConfig, TrainConfig
from train.losses import count_vector
from train.methods import Recipe

__all__ = [
    "EXPERTS",
    "resort",
    "expert_class_weights",
    "region_targets",
    "sample_region_targets",
    "sorting_loss",
    "region_loss",
    "combine_experts",
    "Expert",
    "MedcModel",
    "Medc",
]

EXPERTS = ("lt", "uni", "inv")


# --------------------------------------------------------------------------- class constants

def resort(values) -> np.ndarray:
    """The vector with its order reversed: the class of rank r (descending, ties by class index) gets
    the value of rank C-1-r. ``resort([5, 1, 3]) = [1, 5, 3]``."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.argsort(-v, kind="stable")  # class index by descending rank
    out = np.empty_like(v)
    out[order] = v[order[::-1]]
    return out


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


def combine_experts(logits: list, inference: str = "probabilities") -> torch.Tensor:
    """Combine per-expert logits (each (B, C)) into one (B, C) logit tensor (see module docstring)."""
    s = torch.stack(logits, dim=0)
    if inference == "logits":
        return s.mean(dim=0)
    if inference != "probabilities":
        raise ValueError(f"inference must be probabilities or logits, got {inference!r}")
    # logit(mean_e sigmoid(s_e)) = log(sum_e sigmoid(s_e)) - log(sum_e sigmoid(-s_e))
    return torch.logsumexp(F.logsigmoid(s), dim=0) - torch.logsumexp(F.logsigmoid(-s), dim=0)


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


class AggregatorTrunk(nn.Module):
    """Shared trunk: MOVE's static ``[PSA, NetVLAD]`` video feature as a one-frame clip (B, 1, D + hidden)."""

    def __init__(self, in_dim: int, move: MoveConfig):
        super().__init__()
        from train.move import (
            MoveModel,  # the static aggregators of MOVE; its classifier is not used
        )

        agg = MoveModel(in_dim, 1, hidden=1, aggregators=move.aggregators, clusters=move.clusters,
                        vlad_hidden=move.vlad_hidden, n_head=move.n_head)
        self.psa, self.netvlad = agg.psa, agg.netvlad
        self.out_dim = agg.feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.psa is not None:
            parts.append(self.psa.aggregate(x))
        if self.netvlad is not None:
            parts.append(self.netvlad(x))
        return torch.cat(parts, dim=1).unsqueeze(1)


class Expert(nn.Module):
    """One distribution expert: phi_e, mean branch, variance branch, classifier psi_e."""

    def __init__(self, in_dim: int, dim: int, num_classes: int, temporal_attention: bool = True):
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

    def forward(self, h: torch.Tensor, noise: torch.Tensor | None = None) -> dict:
        """``mu``, ``sigma`` (only when ``noise`` is given), ``z`` and ``logits`` for trunk output ``h``."""
        h_e = self.frames(h)
        mu = self.mean(h_e)
        if noise is None:
            return {"mu": mu, "sigma": None, "z": mu, "logits": self.classifier(mu)}
        sigma = self.spread(h_e, mu)
        z = mu + noise.to(device=mu.device, dtype=mu.dtype) * sigma
        return {"mu": mu, "sigma": sigma, "z": z, "logits": self.classifier(z)}


class MedcModel(nn.Module):
    """Trunk + experts; ``forward(x)`` = combined logits from ``z = mu`` (evaluation path)."""

    def __init__(self, in_dim: int, num_classes: int, medc: MedcConfig, move: MoveConfig | None = None):
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
        self.loss_logits = None
        if medc.learnable_weights:
            lam = np.array([medc.lambda_mu, medc.lambda_cls, medc.lambda_sigma], dtype=np.float64)
            init = np.log(np.maximum(lam / lam.sum(), 1e-8)) if lam.sum() > 0 else np.zeros(3)
            self.loss_logits = nn.Parameter(torch.tensor(init, dtype=torch.float32))

    def loss_weights(self) -> torch.Tensor:
        """Softmax-normalised learnable weights of (L_mu, L_cls, L_sigma); only with learnable_weights."""
        return F.softmax(self.loss_logits, dim=0)

    def expert_logits(self, x: torch.Tensor) -> dict:
        h = self.trunk(x)
        return {name: expert(h)["logits"] for name, expert in self.experts.items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return combine_experts(list(self.expert_logits(x).values()), self.inference)


class Medc(Recipe):
    """``train.method=medc``: see the module docstring."""

    def __init__(self, name: str, cfg: TrainConfig, in_dim: int, num_classes: int, class_counts,
                 options: dict | None = None):
        self.name, self.cfg, self.options = name, cfg, options or {}
        self.medc = self.section("medc", MedcConfig)
        move = self.section("move", MoveConfig)
        counts = count_vector(class_counts)
        if counts.shape != (num_classes,):
            raise ValueError(f"class_counts has shape {counts.shape}, expected ({num_classes},)")
        self.model = MedcModel(in_dim, num_classes, self.medc, move)
        names = list(self.model.experts)
        self.class_weights = {e: torch.tensor(expert_class_weights(counts, e), dtype=torch.float32) for e in names}
        self.gammas = {e: torch.tensor(region_targets(counts, e), dtype=torch.float32) for e in names}
        self.last: dict = {}

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

    def training_loss(self, x, y, chosen, generator):
        model, medc = self.model, self.medc
        h = model.trunk(x)
        device = generator.device if generator is not None else torch.device("cpu")
        l_mu = l_cls = l_sigma = 0.0
        info = {}
        for name, expert in model.experts.items():
            h_e, y_e, weight = h, y, self.class_weights[name].to(y.device)
            if medc.expert_input == "resample":
                weight = None
                if name != "lt":
                    rows = self.resample_rows(y, name, generator)
                    h_e, y_e = h[rows], y[rows]
                    info[f"{name}_rows"] = rows
            noise = torch.randn((x.shape[0], expert.dim), generator=generator, device=device)
            out = expert(h_e, noise)
            l_cls = l_cls + F.binary_cross_entropy_with_logits(out["logits"].float(), y_e.float(), weight=weight)
            l_mu = l_mu + sorting_loss(out["mu"], y_e, medc.tau)
            l_sigma = l_sigma + region_loss(out["sigma"], y_e, self.gammas[name])
            info[name] = {k: v.detach() for k, v in out.items()}
        if model.loss_logits is not None:
            w = model.loss_weights()
        else:
            w = (medc.lambda_mu, medc.lambda_cls, medc.lambda_sigma)
        total = w[0] * l_mu + w[1] * l_cls + w[2] * l_sigma
        info.update(l_mu=l_mu.detach(), l_cls=l_cls.detach(), l_sigma=l_sigma.detach())
        self.last = info
        return total
