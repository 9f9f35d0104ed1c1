"""MOVE (train.move): DFS constants against REFERENCE section 9, module sizes, the dynamic training path
(masks, reference quirks, gradient flow), the static evaluation path, ablations, determinism, learning."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from recipe_testutils import C, D, T, batch, step

from train import methods
from train.checkpoints import load
from train.config import MoveConfig, TrainConfig
from train.move import (
    Move,
    MoveModel,
    beta22,
    calibrated_targets,
    calibration,
    dfs_bounds,
    random_subsets,
    sample_counts,
    video_bounds,
)

# VideoLT classes of the REFERENCE section 9 table: river, desert, beach, 3DPrinter, funeral, jellyfish, makingDolls
VIDEOLT_COUNTS = np.array([1912, 1268, 1228, 308, 100, 45, 44])
COUNTS = np.array([60, 30, 12, 6, 3, 1])  # class 0: c~ = 1, so its bound L equals train_frames


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def make(compat="fixed", train_frames=T, counts=COUNTS, **move):
    cfg = TrainConfig(hidden=32, train_frames=train_frames, compat=compat)
    opts = {"move": MoveConfig(**{"clusters": 4, "vlad_hidden": 8, **move})}
    return methods.build("move", cfg, D, len(counts), counts, opts)


# ----------------------------------------------------------------------------- DFS constants (REFERENCE 9)

def test_dfs_videolt_fixture():
    lb, c_tilde = dfs_bounds(VIDEOLT_COUNTS, train_frames=60, sigma=3.0)
    s = calibration(c_tilde, 0.5)
    np.testing.assert_allclose(c_tilde, [1.0, 0.6552, 0.6338, 0.1413, 0.0300, 0.0005, 0.0], atol=5e-5)
    np.testing.assert_allclose(lb, [60.0, 39.315, 38.030, 8.480, 3.0, 3.0, 3.0], atol=5e-4)
    L = video_bounds(lb, np.eye(7))
    assert L.dtype == np.uint32 and L.tolist() == [60, 39, 38, 8, 3, 3, 3]
    np.testing.assert_allclose(s, [0.5, 0.8448, 0.8662, 1.3587, 1.4700, 1.4995, 1.5], atol=5e-5)


def test_dfs_multi_label_bound_is_the_truncated_mean():
    lb, _ = dfs_bounds(VIDEOLT_COUNTS)
    y = np.zeros((2, 7))
    y[0, [0, 6]] = 1  # {river (1912), makingDolls (44)}: uint32((60 + 3) / 2)
    y[1, [1, 2]] = 1  # desert + beach: uint32((39.315 + 38.030) / 2) = 38
    assert video_bounds(lb, y).tolist() == [31, 38]
    assert video_bounds(lb, torch.as_tensor(y, dtype=torch.float32)).tolist() == [31, 38]


@pytest.mark.parametrize("factor,bounds,scales", [
    (0.01, [60, 47, 37, 18, 5, 3, 3], [0.5, 1.192, 1.5]),
    (0.1, [60, 52, 46, 30, 14, 5, 3], [0.5, 0.989, 1.5]),
])
def test_dfs_minikinetics_ranks(factor, bounds, scales):
    counts = np.array([int(399 * factor ** (r / 199)) for r in range(200)])
    lb, c_tilde = dfs_bounds(counts)
    L = video_bounds(lb, np.eye(200))
    assert [int(L[r]) for r in (0, 10, 20, 50, 100, 150, 199)] == bounds
    s = calibration(c_tilde, 0.5)
    np.testing.assert_allclose([s[0], s[50], s[199]], scales, atol=5e-4)


def test_dfs_equal_counts_and_unlabelled_videos():
    lb, c_tilde = dfs_bounds([5, 5, 5], train_frames=10, sigma=2)
    assert c_tilde.tolist() == [0, 0, 0] and lb.tolist() == [2, 2, 2]
    assert video_bounds(lb, np.zeros((1, 3))).tolist() == [2]


def test_calibrated_targets_by_hand():
    s = calibration([1.0, 0.5, 0.0], gamma=0.5)
    np.testing.assert_allclose(s, [0.5, 1.0, 1.5])
    mixed = torch.tensor([[1.0, 0.3, 0.8], [0.0, 1.0, 0.5]])
    expected = torch.tensor([[0.5, 0.3, 1.0], [0.0, 1.0, 0.75]])
    assert torch.allclose(calibrated_targets(mixed, s), expected)


# ----------------------------------------------------------------------------- random draws

def test_beta22_and_uniform_counts():
    g = torch.Generator().manual_seed(1)
    w = np.array([beta22(g) for _ in range(4000)])
    assert w.min() >= 0 and w.max() <= 1
    assert w.mean() == pytest.approx(0.5, abs=0.02) and w.var() == pytest.approx(0.05, abs=0.006)  # Beta(2,2)
    bounds = torch.tensor([1, 5, 12, 30, 0] * 400)
    k = sample_counts(bounds, 12, g)
    low = bounds.clamp(1, 12)
    assert torch.all(k >= low) and torch.all(k <= 12)
    assert set(k[bounds == 5].tolist()) == set(range(5, 13))  # uniform on {L..T}, both ends reached
    mask = random_subsets(k, 12, g)
    assert torch.equal(mask.sum(1), k)


# ----------------------------------------------------------------------------- modules

def test_module_sizes_at_videolt_scale():
    with torch.device("meta"):
        model = MoveModel(2048, 1004)
    assert n_params(model.psa) == 16_781_312
    assert n_params(model.netvlad) == 134_486_144
    assert n_params(model.classifier) == 8_350_700 and model.classifier.in_dim == 3072
    with torch.device("meta"):
        assert MoveModel(2048, 1004, aggregators="psa").classifier.in_dim == 2048
        assert MoveModel(2048, 1004, aggregators="netvlad").classifier.in_dim == 1024


def test_recipe_is_registered_and_never_clips():
    recipe = make()
    assert isinstance(recipe, Move) and recipe.clip_parameters() == []
    assert recipe.model.classifier.in_dim == D + 8
    assert {id(p) for p in recipe.parameters()} == {id(p) for p in recipe.model.parameters()}


def test_eval_path_is_static_aggregators_and_classifier():
    recipe = make()
    x, y = batch()
    step(recipe, x, y).backward()  # move the BN running statistics away from their initial values
    model = recipe.model.eval()
    x150 = torch.randn(3, 150, D)
    with torch.no_grad():
        expected = model.classifier(torch.cat([model.psa.aggregate(x150), model.netvlad(x150)], 1).unsqueeze(1))
        assert torch.allclose(model(x150), expected)
        # the PSA eval query is the mean of all frames, with no key mask
        assert torch.allclose(model.psa.aggregate(x150), model.psa(x150, query=x150.mean(1, keepdim=True))[:, 0])


# ----------------------------------------------------------------------------- dynamic path

@pytest.mark.parametrize("compat", ["fixed", "reference"])
def test_dynamic_masks_respect_the_bounds(compat):
    recipe = make(compat)
    x, y = batch(12)
    step(recipe, x, y)
    info = recipe.last
    L = info["bounds"].clamp(1, T)
    assert torch.equal(info["bounds"], torch.as_tensor(video_bounds(recipe.lb, y).astype(np.int64)))
    for kept in (info["psa_query_mask"].sum(2), info["vlad_masks"].sum(2)):  # (B, 2) frames kept per view
        assert kept.shape == (12, 2) and torch.all(kept >= L[:, None]) and torch.all(kept <= T)
    sampled = info["psa_key_mask"].sum(1)
    if compat == "reference":
        sampled = T - sampled  # the k' sampled frames are the EXCLUDED keys
    assert torch.all(sampled >= L) and torch.all(sampled <= T)


def test_full_bound_video_gets_identical_vlad_views_and_uniform_reference_attention():
    recipe = make("reference")
    x, y = batch(6, labels=[0] * 6)  # class 0 is the most frequent: L = T
    assert video_bounds(recipe.lb, y).tolist() == [T] * 6
    model = recipe.model.train()
    info = {}
    with torch.no_grad():
        v1, v2 = model.dynamic_netvlad(x, torch.full((6,), T), 2, torch.Generator().manual_seed(0), True, info)
    assert info["vlad_masks"].all() and torch.allclose(v1, v2, atol=1e-6)
    model.eval()  # no attention dropout, so the weights are the softmax itself
    info = {}
    with torch.no_grad():
        model.dynamic_psa(x, torch.full((6,), T), 2, torch.Generator().manual_seed(0), True, info)
    assert not info["psa_key_mask"].any()  # every frame was sampled, hence excluded
    assert torch.allclose(info["psa_attn"], torch.full_like(info["psa_attn"], 1 / T))
    assert info["psa_query_mask"].all()  # both queries are the mean of all frames
    # the fixed variant keeps the sampled frames as keys instead
    info = {}
    with torch.no_grad():
        make("fixed").model.eval().dynamic_psa(x, torch.full((6,), T), 2, torch.Generator().manual_seed(0),
                                               False, info)
    assert info["psa_key_mask"].all()


def test_reference_detach_freezes_the_input_bn_affine_parameters():
    x, y = batch()
    ref, fixed = make("reference"), make("fixed")
    step(ref, x, y).backward()
    step(fixed, x, y).backward()
    assert ref.model.netvlad.bn1.weight.grad is None and ref.model.netvlad.bn1.bias.grad is None
    assert fixed.model.netvlad.bn1.weight.grad is not None
    assert fixed.model.netvlad.bn1.weight.grad.abs().sum() > 0
    for recipe in (ref, fixed):  # everything else is trained
        assert recipe.model.psa.w_qs.weight.grad is not None
        assert recipe.model.netvlad.hidden_fc.weight.grad is not None
        assert recipe.model.classifier.fc1.weight.grad is not None


def test_calibrated_targets_in_a_training_step():
    recipe = make()
    x, y = batch(8, labels=[0] * 8)  # the same label everywhere: the mixed target is y whatever the perm
    step(recipe, x, y)
    target = recipe.last["target"]
    assert 0 <= recipe.last["lam"] <= 1 and 1 <= recipe.last["omega"] <= 2
    assert torch.allclose(target[:, 0], torch.full((8,), 0.5))  # s = 1 - 1 + 0.5 for the most frequent class
    assert torch.all(target[:, 1:] == 0)


def test_ablation_switches():
    x, y = batch()
    no_extra = make(extrapolation=False)
    step(no_extra, x, y)
    assert no_extra.last["views"] == 1 and no_extra.last["omega"] is None
    assert no_extra.last["psa_query_mask"].shape[1] == 1 and no_extra.last["vlad_masks"].shape[1] == 1
    no_inter = make(interpolation=False)
    step(no_inter, x, y)
    assert no_inter.last["lam"] is None and torch.equal(no_inter.last["target"], y)
    psa = make(aggregators="psa")
    assert psa.model.netvlad is None and psa.model.classifier.in_dim == D
    vlad = make(aggregators="netvlad")
    assert vlad.model.psa is None and vlad.model.classifier.in_dim == 8
    for recipe in (psa, vlad, no_extra, no_inter):
        loss = step(recipe, x, y)
        assert torch.isfinite(loss)
        loss.backward()
        assert recipe.model.eval()(torch.randn(2, 20, D)).shape == (2, C)
    assert "psa_attn" not in vlad.last and "vlad_masks" not in psa.last


def test_same_generator_seed_same_loss():
    x, y = batch()
    a, b = make(), make()
    b.model.load_state_dict(a.model.state_dict())
    losses = []
    for recipe, seed in ((a, 3), (b, 3), (b, 4)):
        torch.manual_seed(0)  # dropout
        losses.append(step(recipe, x, y, seed).item())
    assert losses[0] == losses[1] and losses[0] != losses[2]


# ----------------------------------------------------------------------------- learning

def synthetic(n=60, classes=4, dim=16, frames=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(classes, dim, generator=g) * 2
    labels = torch.arange(n) % classes
    x = prototypes[labels][:, None, :] + torch.randn(n, frames, dim, generator=g)
    return x, F.one_hot(labels, classes).float()


@pytest.mark.parametrize("compat", ["fixed", "reference"])
def test_training_loss_decreases(compat):
    torch.manual_seed(0)
    x, y = synthetic()
    counts = y.sum(0).numpy() * np.array([4, 3, 2, 1])  # imbalanced counts for the DFS constants
    cfg = TrainConfig(hidden=32, train_frames=8, compat=compat)
    recipe = methods.build("move", cfg, 16, 4, counts, {"move": MoveConfig(clusters=4, vlad_hidden=8)})
    opt = torch.optim.Adam(recipe.parameters(), lr=3e-3)
    history = []
    for i in range(30):
        rows = torch.randperm(60, generator=torch.Generator().manual_seed(i))[:20]
        loss = step(recipe, x[rows], y[rows], seed=i)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert np.mean(history[-5:]) < np.mean(history[:5]) - 0.05
    recipe.model.eval()
    with torch.no_grad():
        accuracy = (recipe.model(x).argmax(1) == y.argmax(1)).float().mean()
    assert accuracy > 0.5  # chance is 0.25; 100 steps reach 1.0


@pytest.mark.parametrize("extra", [[], ["--set", "train.compat=reference", "--set", "move.extrapolation=false"]])
def test_move_runs_through_the_train_stage(tmp_path, extra, feature_work_dir):
    from pipeline.cli import main

    run = tmp_path / "run"
    args = feature_work_dir(run)
    argv = ["run", "--stage", "train", *args, "--set", "train.method=move", "--set", "train.epochs=3",
            "--set", "train.batch_size=16", "--set", "train.hidden=32", "--set", "train.train_frames=6",
            "--set", "train.eval_frames=10", "--set", "move.vlad_hidden=16", "--set", "move.clusters=4",
            "--set", "train.lr=0.003", *extra, "--no-progress", "-q"]
    assert main(argv) == 0
    log = [json.loads(line) for line in (run / "train" / "move" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 3 and all(np.isfinite(r["loss"]) for r in log)
    with np.load(run / "train" / "move" / "predictions.npz") as pred:
        assert pred["scores"].shape == (16, 4) and str(pred["method"]) == "move"
    keys = load(run / "train" / "move" / "best.pt")["model"].keys()
    assert "classifier.fc1.weight" in keys and ("psa.w_qs.weight" in keys) and ("netvlad.bn1.weight" in keys)
    if not extra:  # bit-reproducible on CPU: a forced re-run gives the same weights
        first = load(run / "train" / "move" / "last.pt")["model"]
        assert main([*argv, "--force"]) == 0
        second = load(run / "train" / "move" / "last.pt")["model"]
        assert all(torch.equal(first[k], second[k]) for k in first)
