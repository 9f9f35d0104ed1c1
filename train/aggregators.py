"""MOVE's temporal aggregators, shared by the aggregators head, MOVE and MEDC's aggregators trunk.

:class:`PSAAggregator` (pooled-query attention) and :class:`NetVLADAggregator` (gated soft-assignment
pooling) map per-frame features (B, T, D) to a video feature; :class:`AggregatedFeatures` is the base of
every model that pools a clip with them (static path). docs/methods.md describes them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["as_frames", "PSAAggregator", "NetVLADAggregator", "AggregatedFeatures", "aggregator_order"]

AGGREGATORS = {"both": ("psa", "netvlad"), "psa": ("psa",), "netvlad": ("netvlad",)}  # move.aggregators


def as_frames(x: torch.Tensor) -> torch.Tensor:
    """Accept (B, T, D); a (B, D) tensor is treated as a single-frame clip."""
    if x.dim() == 2:
        return x.unsqueeze(1)
    if x.dim() != 3:
        raise ValueError(f"expected a (B, T, D) tensor, got shape {tuple(x.shape)}")
    return x


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
        """``n_head`` heads of width ``d_k`` / ``d_v`` (default ``d_model / n_head``); dropouts as the reference."""
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
        """``(B, Q, D)`` (and the attention ``(B, H, Q, T)`` with ``return_attn``); see the class docstring."""
        x = as_frames(x)
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
        x = as_frames(x)
        b, t, d = x.shape
        return self.bn1(x.reshape(b * t, d)).view(b, t, d)

    def pool(self, x_normalised: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pool already-normalised frames (B', T, D) -> (B', hidden)."""
        v = self.vlad(as_frames(x_normalised), frame_mask)
        return self.relu(self.bn2(self.hidden_fc(v)))

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.pool(self.normalise(x), frame_mask)



def aggregator_order(which: str) -> tuple:
    """The aggregators of ``move.aggregators`` (``psa``, ``netvlad`` or ``both``) in MOVE's order."""
    if which not in AGGREGATORS:
        raise ValueError(f"aggregators must be psa, netvlad or both, got {which!r}")
    return AGGREGATORS[which]


class AggregatedFeatures(nn.Module):
    """Base of the models that pool a clip into one video feature with PSA and/or NetVLAD (static path).

    :meth:`add_aggregators` creates ``self.psa`` / ``self.netvlad`` (None when unused); ``order`` is
    the order of their creation (so of their random initialisation and state-dict keys) and of their
    parts in :meth:`features`.
    """

    def add_aggregators(self, in_dim: int, order: tuple, clusters: int = 64, vlad_hidden: int = 1024,
                        n_head: int = 4, psa_dim: int | None = 512, psa_dropout: float = 0.1) -> None:
        """Create the aggregators named in ``order``; sets ``feature_dim`` (D for PSA + vlad_hidden)."""
        self.psa = self.netvlad = None
        self.aggregator_names = tuple(order)
        width = 0
        for name in self.aggregator_names:
            if name == "psa":
                self.psa = PSAAggregator(in_dim, n_head=n_head, d_k=psa_dim, d_v=psa_dim, dropout=psa_dropout,
                                         attn_dropout=psa_dropout)
                width += int(in_dim)
            elif name == "netvlad":
                self.netvlad = NetVLADAggregator(in_dim, clusters=clusters, hidden=vlad_hidden)
                width += int(vlad_hidden)
            else:
                raise ValueError(f"unknown aggregator {name!r}; valid: psa, netvlad")
        self.feature_dim = width

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Static aggregated features (B, feature_dim): mean-query PSA over all frames, unmasked NetVLAD."""
        x = as_frames(x)
        parts = [self.psa.aggregate(x) if name == "psa" else self.netvlad(x) for name in self.aggregator_names]
        return torch.cat(parts, dim=1)
