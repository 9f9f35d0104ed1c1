"""Classifier heads and temporal aggregators for the train stage.

All modules map per-frame features ``(B, T, D)`` to a per-video output and expose ``.in_dim``.
Classifiers additionally expose ``.num_classes`` and return raw logits ``(B, C)`` (apply ``sigmoid``
for multi-label probabilities).

* :class:`NonlinearClassifier` -- "lateavg" (the published VideoLT classifier): per-frame
  ``project(dropout(relu(fc1(x))))`` followed by the mean of the per-frame LOGITS over time.
* :class:`PSAAggregator` -- static pooled-query multi-head attention (MOVE's PSA). ``forward`` takes an
  explicit query/key mask so that the dynamic MOVE version can be built on top of it.
* :class:`NetVLADAggregator` -- static gated soft-assignment pooling ("NetVLAGD", MOVE's NetVLAD), with the
  input BatchNorm split out (:meth:`NetVLADAggregator.normalise`) from the pooling
  (:meth:`NetVLADAggregator.pool`) so that a dynamic version can detach / mask between the two.
* :class:`AggregatorHead` -- "Baseline + Agg" (MOVE's baseline): ``[NetVLAD, PSA]`` -> NonlinearClassifier.
* :func:`build` -- factory by head name.

Parameter counts (in_dim 2048, C 1004): NonlinearClassifier 6,253,548 (3072 input: 8,350,700);
PSAAggregator 16,781,312; NetVLADAggregator 134,486,144.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from train.config import HEADS as HEAD_NAMES

__all__ = [
    "NonlinearClassifier",
    "PSAAggregator",
    "NetVLADAggregator",
    "AggregatorHead",
    "HEADS",
    "build",
    "count_parameters",
]


def _as_frames(x: torch.Tensor) -> torch.Tensor:
    """Accept (B, T, D); a (B, D) tensor is treated as a single-frame clip."""
    if x.dim() == 2:
        return x.unsqueeze(1)
    if x.dim() != 3:
        raise ValueError(f"expected a (B, T, D) tensor, got shape {tuple(x.shape)}")
    return x


class NonlinearClassifier(nn.Module):
    """Late-average non-linear classifier ("lateavg").

    ``logits = mean_t project(dropout(relu(fc1(x_t))))``. State-dict keys ``fc1.*``, ``project.*``.
    Default PyTorch initialisation.
    """

    def __init__(self, in_dim: int, num_classes: int, hidden: int = 2048, dropout: float = 0.5):
        super().__init__()
        self.in_dim = int(in_dim)
        self.num_classes = int(num_classes)
        self.hidden = int(hidden)
        self.fc1 = nn.Linear(self.in_dim, self.hidden)
        self.relu = nn.ReLU()
        self.drop_layer = nn.Dropout(p=dropout)
        self.project = nn.Linear(self.hidden, self.num_classes)

    def frame_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Per-frame logits (B, T, C)."""
        x = _as_frames(x)
        return self.project(self.drop_layer(self.relu(self.fc1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.frame_logits(x).mean(dim=1)


class PSAAggregator(nn.Module):
    """Static pooled-query multi-head attention aggregator (MOVE's PSA).

    ``forward(x, query=None, key_mask=None)`` returns ``(B, Q, D)``:

    * ``query`` (B, Q, D) raw-feature queries; default: the temporal mean of ``x`` (Q = 1). The query is
      also the residual.
    * ``key_mask`` (B, T) or (B, Q, T), bool or numeric; entries equal to 0 / False are excluded from
      the keys with ``masked_fill(-1e9)`` exactly as the reference (so a fully-masked row gives a
      uniform softmax over all frames). The mask is shared by all heads.

    ``out = LayerNorm_eps1e-6(Dropout(fc(concat_heads(Dropout(softmax(Q K^T / sqrt(d_k))) V))) + query)``
    with ``W_q, W_k, W_v, fc`` bias-free. :meth:`aggregate` gives the static (B, D) output.
    State-dict keys ``w_qs, w_ks, w_vs, fc, layer_norm``.
    """

    def __init__(
        self,
        d_model: int,
        n_head: int = 4,
        d_k: int | None = None,
        d_v: int | None = None,
        dropout: float = 0.1,
        attn_dropout: float = 0.1,
    ):
        super().__init__()
        if d_k is None or d_v is None:
            if d_model % n_head:
                raise ValueError(f"d_model {d_model} is not divisible by n_head {n_head}; pass d_k and d_v")
        self.in_dim = self.d_model = self.out_dim = int(d_model)
        self.n_head = int(n_head)
        self.d_k = int(d_k) if d_k is not None else self.d_model // self.n_head
        self.d_v = int(d_v) if d_v is not None else self.d_model // self.n_head
        self.w_qs = nn.Linear(self.d_model, self.n_head * self.d_k, bias=False)
        self.w_ks = nn.Linear(self.d_model, self.n_head * self.d_k, bias=False)
        self.w_vs = nn.Linear(self.d_model, self.n_head * self.d_v, bias=False)
        self.fc = nn.Linear(self.n_head * self.d_v, self.d_model, bias=False)
        self.temperature = self.d_k ** 0.5
        self.attn_dropout = nn.Dropout(attn_dropout)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(self.d_model, eps=1e-6)

    def forward(
        self,
        x: torch.Tensor,
        query: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        return_attn: bool = False,
    ):
        x = _as_frames(x)
        b, t, _ = x.shape
        if query is None:
            query = x.mean(dim=1, keepdim=True)
        elif query.dim() == 2:
            query = query.unsqueeze(1)
        nq = query.shape[1]
        h, dk, dv = self.n_head, self.d_k, self.d_v
        q = self.w_qs(query).view(b, nq, h, dk).transpose(1, 2)  # (B, H, Q, dk)
        k = self.w_ks(x).view(b, t, h, dk).transpose(1, 2)  # (B, H, T, dk)
        v = self.w_vs(x).view(b, t, h, dv).transpose(1, 2)  # (B, H, T, dv)
        scores = torch.matmul(q / self.temperature, k.transpose(2, 3))  # (B, H, Q, T)
        if key_mask is not None:
            if key_mask.dim() == 2:  # (B, T) -> (B, 1, 1, T)
                m = key_mask[:, None, None, :]
            elif key_mask.dim() == 3:  # (B, Q or 1, T) -> (B, 1, Q, T)
                m = key_mask[:, None, :, :]
            else:
                raise ValueError(f"key_mask must be (B, T) or (B, Q, T), got {tuple(key_mask.shape)}")
            # -1e9 as the reference; clipped to the dtype's range so fp16 autocast works too
            scores = scores.masked_fill(m.to(scores.device) == 0, max(-1e9, torch.finfo(scores.dtype).min))
        attn = self.attn_dropout(F.softmax(scores, dim=-1))
        out = torch.matmul(attn, v).transpose(1, 2).contiguous().view(b, nq, h * dv)
        out = self.layer_norm(self.dropout(self.fc(out)) + query)
        if return_attn:
            return out, attn
        return out

    def aggregate(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Static aggregation: temporal-mean query, (B, D)."""
        return self.forward(x, key_mask=key_mask).squeeze(1)


class _GatedVLAD(nn.Module):
    """Inner soft-assignment pooling ("NetVLAGD"): keys ``activation_fc.weight``, ``gate_weight``, ``bn1.*``."""

    def __init__(self, in_dim: int, clusters: int):
        super().__init__()
        self.in_dim = int(in_dim)
        self.clusters = int(clusters)
        self.activation_fc = nn.Linear(self.in_dim, self.clusters, bias=False)
        self.gate_weight = nn.Parameter(torch.empty(self.clusters, self.in_dim))
        nn.init.xavier_normal_(self.gate_weight)
        self.bn1 = nn.BatchNorm1d(self.clusters)

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = x.shape
        if frame_mask is not None:
            # zeroed frames contribute nothing to V_k but still enter the BN(K) statistics
            x = x * frame_mask.to(device=x.device, dtype=x.dtype).reshape(b, t, 1)
        rows = x.reshape(b * t, d)
        a = F.softmax(self.bn1(self.activation_fc(rows)), dim=1)  # (B*T, K)
        a = a.view(b, t, self.clusters).transpose(1, 2)  # (B, K, T)
        v = torch.matmul(a, x)  # (B, K, D), no centroid residual
        v = v * torch.sigmoid(self.gate_weight)
        v = v.transpose(1, 2)  # (B, D, K)
        v = F.normalize(v, p=2, dim=1)  # intra-norm over D for each cluster
        v = v.reshape(b, d * self.clusters)  # feature-major flatten
        return F.normalize(v, p=2, dim=1)


class NetVLADAggregator(nn.Module):
    """Static NetVLAD ("NetVLAGD") aggregator (MOVE's NetVLAD, no DFS), (B, T, D) -> (B, hidden).

    ``forward(x, frame_mask=None) = pool(normalise(x), frame_mask)`` where

    * :meth:`normalise`: BatchNorm1d(D) over all B*T frame rows (``bn1``);
    * :meth:`pool`: optional ``frame_mask`` (B, T) multiplies the normalised frames; soft assignment
      ``softmax_K(BN_K(activation_fc(x)))``; ``V_k = sum_t a_tk x_t``; gate ``V *= sigmoid(gate_weight)``;
      intra L2-norm over D; feature-major flatten; global L2-norm; ``ReLU6(BN(hidden_fc(v)))``.

    State-dict keys ``bn1.*``, ``vlad.activation_fc.weight``, ``vlad.gate_weight``, ``vlad.bn1.*``,
    ``hidden_fc.weight``, ``bn2.*``.
    """

    def __init__(self, in_dim: int, clusters: int = 64, hidden: int = 1024):
        super().__init__()
        self.in_dim = int(in_dim)
        self.clusters = int(clusters)
        self.hidden = self.out_dim = int(hidden)
        self.bn1 = nn.BatchNorm1d(self.in_dim)
        self.vlad = _GatedVLAD(self.in_dim, self.clusters)
        self.hidden_fc = nn.Linear(self.clusters * self.in_dim, self.hidden, bias=False)
        self.bn2 = nn.BatchNorm1d(self.hidden)
        self.relu = nn.ReLU6()

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Input BatchNorm over all frame rows; (B, T, D) -> (B, T, D)."""
        x = _as_frames(x)
        b, t, d = x.shape
        return self.bn1(x.reshape(b * t, d)).view(b, t, d)

    def pool(self, x_normalised: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pool already-normalised frames (B', T, D) -> (B', hidden)."""
        v = self.vlad(_as_frames(x_normalised), frame_mask)
        return self.relu(self.bn2(self.hidden_fc(v)))

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.pool(self.normalise(x), frame_mask)


class AggregatorHead(nn.Module):
    """"Baseline + Agg" (of the published MOVE code): static NetVLAD + static PSA -> NonlinearClassifier.

    ``features(x) = concat([NetVLAD(x) (vlad_hidden), PSA(x) (in_dim)])``; the classifier sees it as a
    one-frame clip ``(B, 1, vlad_hidden + in_dim)``.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden: int = 2048,
        clusters: int = 64,
        vlad_hidden: int = 1024,
        n_head: int = 4,
        dropout: float = 0.5,
        psa_dropout: float = 0.1,
        psa_dim: int | None = 512,
    ):
        super().__init__()
        self.in_dim = int(in_dim)
        self.num_classes = int(num_classes)
        self.feature_dim = int(vlad_hidden) + self.in_dim
        self.netvlad = NetVLADAggregator(self.in_dim, clusters=clusters, hidden=vlad_hidden)
        self.psa = PSAAggregator(self.in_dim, n_head=n_head, d_k=psa_dim, d_v=psa_dim, dropout=psa_dropout,
                                 attn_dropout=psa_dropout)
        self.classifier = NonlinearClassifier(self.feature_dim, self.num_classes, hidden=hidden, dropout=dropout)

    def aggregator_parameters(self):
        """Parameters of the two aggregators (the reference clips only the classifier's gradients)."""
        return list(self.netvlad.parameters()) + list(self.psa.parameters())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = _as_frames(x)
        return torch.cat([self.netvlad(x), self.psa.aggregate(x)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).unsqueeze(1))


HEADS = dict(zip(HEAD_NAMES, (NonlinearClassifier, AggregatorHead), strict=True))  # train.config.HEADS, in order


def build(head: str, in_dim: int, num_classes: int, **kw) -> nn.Module:
    """Build a (B, T, D) -> logits (B, C) model by head name ("lateavg" or "aggregators")."""
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; valid heads: {sorted(HEADS)}")
    cls = HEADS[head]
    valid = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "in_dim", "num_classes")]
    unknown = sorted(set(kw) - set(valid))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for head {head!r}; valid: {valid}")
    return cls(in_dim, num_classes, **kw)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

