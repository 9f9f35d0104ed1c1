"""Tests for train.models: parameter counts (REFERENCE section 9), shapes, and aggregator behaviour."""

import pytest
import torch
import torch.nn.functional as F

from train import models
from train.aggregators import NetVLADAggregator, PSAAggregator
from train.models import AggregatorHead, NonlinearClassifier


def n_params(m):
    return sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------- parameter counts / state dicts

def test_nonlinear_classifier_param_counts():
    assert n_params(NonlinearClassifier(2048, 1004)) == 6_253_548
    assert n_params(NonlinearClassifier(3072, 1004)) == 8_350_700


def test_psa_param_count_and_keys():
    psa = PSAAggregator(2048)
    assert psa.d_k == psa.d_v == 512
    assert n_params(psa) == 16_781_312
    assert set(psa.state_dict()) == {
        "w_qs.weight", "w_ks.weight", "w_vs.weight", "fc.weight", "layer_norm.weight", "layer_norm.bias"}


def test_netvlad_param_count_and_keys():
    with torch.device("meta"):  # 134 M parameters: count them without allocating
        vlad = NetVLADAggregator(2048)
    assert n_params(vlad) == 134_486_144
    assert vlad.hidden_fc.weight.numel() == 134_217_728
    keys = set(vlad.state_dict())
    for k in ["bn1.weight", "bn1.running_mean", "vlad.activation_fc.weight", "vlad.gate_weight",
              "vlad.bn1.weight", "vlad.bn1.running_var", "hidden_fc.weight", "bn2.weight", "bn2.bias"]:
        assert k in keys
    assert "vlad.activation_fc.bias" not in keys and "hidden_fc.bias" not in keys


def test_aggregator_head_param_count():
    with torch.device("meta"):
        head = models.build("aggregators", 2048, 1004)
    assert isinstance(head, AggregatorHead)
    assert n_params(head.classifier) == 8_350_700
    assert n_params(head) == 134_486_144 + 16_781_312 + 8_350_700
    assert head.in_dim == 2048 and head.num_classes == 1004


def test_classifier_state_dict_keys():
    assert set(NonlinearClassifier(8, 3, hidden=5).state_dict()) == {
        "fc1.weight", "fc1.bias", "project.weight", "project.bias"}


# ---------------------------------------------------------------- build / shapes

@pytest.mark.parametrize("head,kw", [("lateavg", {"hidden": 16}),
                                     ("aggregators", {"hidden": 16, "clusters": 4, "vlad_hidden": 8})])
def test_build_shapes(head, kw):
    torch.manual_seed(0)
    m = models.build(head, 12, 7, **kw)
    assert m.in_dim == 12 and m.num_classes == 7
    out = m(torch.randn(3, 5, 12))
    assert out.shape == (3, 7)
    m.eval()
    assert m(torch.randn(2, 9, 12)).shape == (2, 7)


def test_build_errors():
    with pytest.raises(ValueError, match="lateavg"):
        models.build("nope", 4, 2)
    with pytest.raises(ValueError, match="hidden"):
        models.build("lateavg", 4, 2, clusters=3)


def test_nonlinear_classifier_late_average_of_logits():
    torch.manual_seed(0)
    m = NonlinearClassifier(6, 4, hidden=10).eval()
    x = torch.randn(2, 5, 6)
    per_frame = m.project(torch.relu(m.fc1(x)))
    torch.testing.assert_close(m(x), per_frame.mean(1))
    # late averaging of logits differs from averaging features first
    assert not torch.allclose(m(x), m(x.mean(1, keepdim=True)))
    m.train()
    torch.manual_seed(1)
    a = m(x)
    torch.manual_seed(2)
    assert not torch.allclose(a, m(x))  # dropout active in train mode


# ---------------------------------------------------------------- PSA

def _psa_manual(psa, x, query, keep=None):
    """Independent restatement of the static PSA (eval mode, no dropout)."""
    b, t, d = x.shape
    h, dk = psa.n_head, psa.d_k
    out = []
    for i in range(b):
        heads = []
        for hh in range(h):
            wq = psa.w_qs.weight[hh * dk:(hh + 1) * dk]
            wk = psa.w_ks.weight[hh * dk:(hh + 1) * dk]
            wv = psa.w_vs.weight[hh * dk:(hh + 1) * dk]
            q = query[i] @ wq.T  # (Q, dk)
            k = x[i] @ wk.T
            v = x[i] @ wv.T
            s = q @ k.T / dk ** 0.5
            if keep is not None:
                s = torch.where(keep[i][None, :], s, torch.full_like(s, -1e9))
            heads.append(torch.softmax(s, -1) @ v)
        o = torch.cat(heads, -1) @ psa.fc.weight.T + query[i]
        out.append(F.layer_norm(o, (d,), psa.layer_norm.weight, psa.layer_norm.bias, eps=1e-6))
    return torch.stack(out)


def test_psa_matches_restatement_and_shapes():
    torch.manual_seed(0)
    psa = PSAAggregator(16, n_head=4).eval()
    with torch.no_grad():
        psa.layer_norm.weight.uniform_(0.5, 1.5)
        psa.layer_norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 7, 16)
    out = psa(x)
    assert out.shape == (3, 1, 16)
    torch.testing.assert_close(out, _psa_manual(psa, x, x.mean(1, keepdim=True)), rtol=1e-5, atol=1e-5)
    assert psa.aggregate(x).shape == (3, 16)
    torch.testing.assert_close(psa.aggregate(x), out[:, 0])
    # explicit multi-query + key mask
    q = torch.randn(3, 2, 16)
    keep = torch.rand(3, 7) > 0.4
    keep[:, 0] = True
    out2 = psa(x, query=q, key_mask=keep)
    assert out2.shape == (3, 2, 16)
    torch.testing.assert_close(out2, _psa_manual(psa, x, q, keep), rtol=1e-5, atol=1e-5)
    # numeric masks behave like bool masks (0 = excluded)
    torch.testing.assert_close(psa(x, query=q, key_mask=keep.float()), out2)


def test_psa_single_key_mask_returns_that_frame():
    torch.manual_seed(0)
    psa = PSAAggregator(16, n_head=4).eval()
    x = torch.randn(2, 6, 16)
    j = 4
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[:, j] = True
    out, attn = psa(x, key_mask=mask, return_attn=True)
    assert attn.shape == (2, 4, 1, 6)
    expected_attn = torch.zeros(2, 4, 1, 6)
    expected_attn[..., j] = 1.0
    torch.testing.assert_close(attn, expected_attn)
    q0 = x.mean(1, keepdim=True)
    expected = psa.layer_norm(psa.fc(psa.w_vs(x[:, j:j + 1])) + q0)  # attention output = V of frame j
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_psa_fully_masked_is_uniform():
    torch.manual_seed(0)
    psa = PSAAggregator(8, n_head=2).eval()
    x = torch.randn(1, 5, 8)
    _, attn = psa(x, key_mask=torch.zeros(1, 5, dtype=torch.bool), return_attn=True)
    torch.testing.assert_close(attn, torch.full_like(attn, 0.2))


# ---------------------------------------------------------------- NetVLAD

def _warm_bn(module, x, steps=3):
    module.train()
    with torch.no_grad():
        for _ in range(steps):
            module(x + 0.1 * torch.randn_like(x))
    module.eval()


def _netvlad_manual(m, x):
    """Independent restatement of the static NetVLAD forward in eval mode."""
    def bn(z, layer):
        return (z - layer.running_mean) / torch.sqrt(layer.running_var + layer.eps) * layer.weight + layer.bias
    outs = []
    for i in range(x.shape[0]):
        xi = bn(x[i], m.bn1)  # (T, D)
        a = torch.softmax(bn(xi @ m.vlad.activation_fc.weight.T, m.vlad.bn1), dim=1)  # (T, K)
        v = a.T @ xi * torch.sigmoid(m.vlad.gate_weight)  # (K, D)
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
        flat = v.T.reshape(-1)  # feature-major: index d*K + k
        flat = flat / flat.norm().clamp_min(1e-12)
        outs.append(torch.clamp(bn(m.hidden_fc.weight @ flat, m.bn2), 0, 6))
    return torch.stack(outs)


def test_netvlad_matches_restatement():
    torch.manual_seed(0)
    m = NetVLADAggregator(6, clusters=3, hidden=5)
    x = torch.randn(4, 7, 6)
    _warm_bn(m, x)
    with torch.no_grad():
        m.bn2.weight.uniform_(0.5, 2.0)
        m.bn2.bias.uniform_(0.0, 1.0)
    out = m(x)
    assert out.shape == (4, 5)
    torch.testing.assert_close(out, _netvlad_manual(m, x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m.pool(m.normalise(x)), out)


def test_netvlad_frame_mask_equals_removed_frames():
    torch.manual_seed(0)
    m = NetVLADAggregator(6, clusters=3, hidden=5)
    x = torch.randn(2, 8, 6)
    _warm_bn(m, x)
    keep = torch.tensor([[1, 0, 1, 1, 0, 0, 1, 1], [0, 1, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    masked = m(x, frame_mask=keep)
    for i in range(2):
        ref = m(x[i:i + 1, keep[i]])
        torch.testing.assert_close(masked[i:i + 1], ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m(x, frame_mask=keep.float()), masked)


def test_netvlad_train_mode_bn_over_all_frame_rows():
    torch.manual_seed(0)
    m = NetVLADAggregator(6, clusters=3, hidden=5).train()
    x = torch.randn(3, 4, 6) + 2.0
    m(x)
    torch.testing.assert_close(m.bn1.running_mean, 0.1 * x.reshape(12, 6).mean(0))
    # gradients reach the input BN in the static version (no detach)
    m.zero_grad()
    m(x).sum().backward()
    assert m.bn1.weight.grad is not None


def test_aggregator_head_features_order_and_classifier():
    torch.manual_seed(0)
    head = AggregatorHead(12, 5, hidden=16, clusters=4, vlad_hidden=8)
    x = torch.randn(3, 6, 12)
    _warm_bn(head.netvlad, x)
    head.eval()
    f = head.features(x)
    assert f.shape == (3, 8 + 12)
    torch.testing.assert_close(f[:, :8], head.netvlad(x))
    torch.testing.assert_close(f[:, 8:], head.psa.aggregate(x))
    torch.testing.assert_close(head(x), head.classifier(f.unsqueeze(1)))
    assert head.classifier.in_dim == 20


def test_psa_heads_are_512_wide_as_the_reference_whatever_the_feature_dim():
    from train.move import MoveModel

    for model in (MoveModel(64, 5), models.build("aggregators", 64, 5)):
        assert model.psa.w_qs.weight.shape == (4 * 512, 64)  # reference: d_k = d_v = 512
        assert model.psa.fc.weight.shape == (64, 4 * 512)
    for model in (MoveModel(64, 5, psa_dim=None), models.build("aggregators", 64, 5, psa_dim=None)):
        assert model.psa.w_qs.weight.shape == (64, 64)  # null: feature dim / heads = 16 per head
