"""MEA: the lt expert is Baseline + Agg, the tail streams' distributions, label-free test-time weights, resume."""

import json

import numpy as np
import pytest
import torch

from train.checkpoints import load
from train.mea import two_views

FAST = ["--set", "train.epochs=3", "--set", "train.batch_size=16", "--set", "train.train_frames=6",
        "--set", "train.eval_frames=10", "--set", "train.hidden=16", "--set", "move.vlad_hidden=16",
        "--set", "move.clusters=4", "--set", "move.psa_dim=null", "--set", "train.lr_steps=[]",
        "--set", "train.eval_every=3", "--no-progress", "-q"]


def test_two_views_are_the_even_and_odd_frames():
    x = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    a, b = two_views(x)
    assert torch.equal(a, x[:, [0, 2, 4]]) and torch.equal(b, x[:, [1, 3]])
    one = x[:, :1]
    assert all(torch.equal(v, one) for v in two_views(one))


def _train(run, args, *extra):
    from pipeline.cli import main

    assert main(["run", "--stage", "train", *args, *FAST, *extra]) == 0


@pytest.mark.parametrize("lt_method", ["baseline", "framestack"])
def test_lt_expert_is_its_method_on_the_aggregators_head_bit_for_bit(tmp_path, feature_work_dir, lt_method):
    run = tmp_path / "run"
    args = feature_work_dir(run)
    _train(run, args, "--set", f"train.method=[{lt_method}+aggregators,mea]", "--set", f"mea.lt_method={lt_method}",
           "--set", "mea.trunk=lt")  # the tail experts do not train the trunk: the lt expert is its method exactly
    baseline = np.load(run / "train" / f"{lt_method}+aggregators" / "predictions.npz")
    mea = np.load(run / "train" / "mea" / "predictions.npz")
    assert np.array_equal(baseline["scores"], mea["expert_lt"])
    assert not any(name.startswith("view_") for name in mea.files)  # mea.save_views is off by default
    for name in ("bal", "inv", "mix_mean", "mix_val", "mix_agreement"):
        assert mea[f"expert_{name}"].shape == baseline["scores"].shape
    summary = json.loads((run / "train" / "mea" / "manifest.json").read_text())["summary"]["calibration"]
    for key in ("val_weights", "agreement_weights"):
        assert sum(summary[key].values()) == pytest.approx(1.0)
    # the scores are the uniform mix (the default inference)
    assert np.array_equal(mea["scores"], mea["expert_mix_mean"])


def test_test_labels_are_never_read_by_the_agreement(tmp_path, feature_work_dir, monkeypatch):
    """The recipe gets the test videos without their labels (empty label lists) when it fits its weights."""
    from train import loop
    from train.mea import Mea

    seen = []
    original = Mea.adapt

    def spy(self, unlabelled_views):
        seen.append(True)
        return original(self, unlabelled_views)

    original_predict = loop.predict

    def checked_predict(model, bank, data, cfg, device, forward=None):
        if forward is not None and getattr(forward, "__name__", "") == "view_experts":
            assert all(labels == [] for labels in data.labels)  # nothing to read
        return original_predict(model, bank, data, cfg, device, forward)

    monkeypatch.setattr(Mea, "adapt", spy)
    monkeypatch.setattr(loop, "predict", checked_predict)
    run = tmp_path / "run"
    args = feature_work_dir(run)
    _train(run, args, "--set", "train.method=mea", "--set", "mea.inference=agreement", "--set", "mea.save_views=true")
    assert seen == [True]
    calibration = json.loads((run / "train" / "mea" / "manifest.json").read_text())["summary"]["calibration"]
    assert set(calibration["agreement_weights"]) == {"lt", "bal", "inv"}
    # the views it fitted on are kept, and evaluate's refit on the whole test set gives the same weights and mix
    from pipeline.cli import main

    with np.load(run / "train" / "mea" / "predictions.npz") as saved:
        assert float(saved["view_step"]) == 0.1 and str(saved["scores_kind"]) == "logits"
        for expert in ("lt", "bal", "inv"):
            assert saved[f"view_a_{expert}"].shape == saved[f"view_b_{expert}"].shape == saved["scores"].shape
    assert main(["run", "--stage", "evaluate", *args, *FAST, "--set", "train.method=mea", "--set",
                 "mea.inference=agreement", "--set", "mea.save_views=true"]) == 0
    document = json.loads((run / "evaluate" / "mea" / "metrics.json").read_text())
    refit = document["experts"]["mix_agreement_per_profile"]
    assert refit["weights"]["as_is"] == calibration["agreement_weights"]
    assert refit["mAP"] == pytest.approx(document["experts"]["mix_agreement"]["mAP"], abs=1e-6)
    assert set(refit["weights"]) == {"as_is", "uniform", "long_tailed", "inverse"}
    with np.load(run / "train" / "mea" / "predictions.npz") as saved:  # mea.inference picks the scores
        assert np.array_equal(saved["scores"], saved["expert_mix_agreement"])


@pytest.mark.parametrize("stream, mode", [("bal", "cbs"), ("inv", "inv")])
def test_tail_streams_draw_their_class_distribution(stream, mode):
    """Over many draws, the stream's primary classes follow the sampler's distribution: uniform over the
    classes (bal) or proportional to resort(n) / n per video of class c summed (inv)."""
    from train.samplers import ClassAwareSampler, resort
    from train.mea import STREAM_MODES

    assert STREAM_MODES[stream] == mode
    counts = np.array([40, 20, 10, 5, 2, 1])
    labels = [[c] for c, n in enumerate(counts) for _ in range(n)]
    sampler = ClassAwareSampler(labels, len(counts), mode, num_samples=60_000)
    videos, classes = sampler.draw(np.random.default_rng(0))
    drawn = np.bincount(classes, minlength=len(counts)) / len(classes)
    expected = np.ones(len(counts)) if mode == "cbs" else resort(counts.astype(float))
    expected = expected / expected.sum()
    assert np.abs(drawn - expected).max() < 0.01
    video_class = np.array([label[0] for label in labels])[videos]
    assert np.array_equal(video_class, classes)  # each drawn video carries its drawn class


def test_interrupted_mea_resumes_to_the_same_weights(tmp_path, feature_work_dir):
    from test_train_stage import interrupted_at_epoch

    from pipeline.cli import main

    run = tmp_path / "run"
    args = feature_work_dir(run)
    argv = ["run", "--stage", "train", *args, *FAST, "--set", "train.method=mea", "--set", "train.epochs=4"]
    assert main(argv) == 0
    uninterrupted = load(run / "train" / "mea" / "last.pt")
    with interrupted_at_epoch(2):
        assert main([*argv, "--force"]) == 130
    assert load(run / "train" / "mea" / "last.pt")["epoch"] == 2
    assert main(argv) == 0
    resumed = load(run / "train" / "mea" / "last.pt")
    assert all(torch.equal(uninterrupted["model"][k], resumed["model"][k]) for k in resumed["model"])
    assert torch.equal(uninterrupted["recipe"]["previous_ap"], resumed["recipe"]["previous_ap"])
