"""The train stage on synthetic features: learning, every method, determinism, resume, refusals."""

import json
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from manifests.frames import random_indices, uniform_indices
from pipeline.cli import main
from train import loop
from train.checkpoints import load
from train.config import TrainConfig
from train.data import FeatureBank

FAST = ["--set", "train.epochs=4", "--set", "train.batch_size=16", "--set", "train.hidden=32",
        "--set", "train.eval_every=2", "--set", "train.train_frames=6", "--set", "train.eval_frames=10",
        "--set", "train.lr=0.003", "--no-progress", "-q"]


@pytest.fixture
def work(tmp_path, feature_work_dir):

    run = tmp_path / "run"
    return run, feature_work_dir(run)


def train(args, *extra):
    return main(["run", "--stage", "train", *args, *FAST, *extra])


def weights(run, method="baseline", name="last.pt"):
    return load(run / "train" / method / name)["model"]


def test_index_rules():
    counts = np.bincount(uniform_indices(7, 150))
    assert counts.tolist() == [25, 25, 25, 25, 25, 24, 1]
    assert uniform_indices(200, 150)[:10].tolist() == [0, 1, 2, 4, 5, 6, 8, 9, 10, 12]
    drawn = random_indices(3, 60, np.random.default_rng(0))
    assert len(drawn) == 60 and np.all(np.diff(drawn) >= 0) and set(drawn) == {0, 1, 2}


def test_feature_bank_ram_and_disk_agree(work):
    run, _ = work
    ids = ["v0000", "v0031", "v0050"]
    ram, disk = FeatureBank(run / "extract", ids, cache="ram"), FeatureBank(run / "extract", ids, cache="none")
    frames = [np.array([0, 0, 2]), np.array([1, 2, 1]), np.array([2, 1, 0])]
    assert ram.cache == "ram" and disk.cache == "none"
    assert torch.equal(ram.clips([0, 1, 2], frames), disk.clips([0, 1, 2], frames))
    assert ram.clips([2], [np.array([0])]).dtype == torch.float32


def test_baseline_learns_and_evaluates(work):
    run, args = work
    assert train(args, "--set", "train.epochs=12", "--set", "train.eval_every=4") == 0
    manifest = json.loads((run / "train" / "baseline" / "manifest.json").read_text())
    summary = manifest["summary"]
    assert summary["select_on"] == "val" and summary["best_epoch"] in (3, 7, 11)
    assert summary["selection_metrics"]["mAP"] > 0.9  # the synthetic classes are separable
    with np.load(run / "train" / "baseline" / "predictions.npz") as pred:
        assert pred["scores"].shape == (16, 4) and str(pred["method"]) == "baseline"
    log = [json.loads(line) for line in (run / "train" / "baseline" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(12)) and log[-1]["loss"] < log[0]["loss"]
    assert log[0]["lr"] == pytest.approx(0.003)
    assert main(["run", "--stage", "evaluate", *args, *FAST, "--set", "train.epochs=12",
                 "--set", "train.eval_every=4"]) == 0
    metrics = json.loads((run / "evaluate" / "baseline" / "metrics.json").read_text())
    assert metrics["run"]["method"] == "baseline" and metrics["run"]["select_on"] == "val"
    assert metrics["metrics"]["mAP"] > 0.8


def test_every_method_trains(work):
    run, args = work
    methods = ["focal", "ldam_drw", "eql", "cb_loss", "cbs", "srs", "mixup", "framestack"]
    # DRW must start inside the 4-epoch run (a switch outside it is refused: tests/train/test_schedule.py)
    assert train(args, "--set", f"train.method=[{','.join(methods)}]", "--set", "train.loss.ldam_drw.drw_epoch=2") == 0
    for method in methods:
        log = [json.loads(x) for x in (run / "train" / method / "log.jsonl").read_text().splitlines()]
        assert len(log) == 4 and all(np.isfinite(r["loss"]) for r in log), method
    assert load(run / "train" / "framestack" / "last.pt")["recipe"]["previous_ap"].shape == (4,)


def test_cpu_training_is_bit_reproducible(work, tmp_path):
    run, args = work
    assert train(args) == 0
    first = weights(run)
    assert train(args, "--force") == 0
    second = weights(run)
    assert all(torch.equal(first[k], second[k]) for k in first)


@contextmanager
def interrupted_at_epoch(epoch: int):
    """Training raises KeyboardInterrupt (Ctrl-C) when it reaches ``epoch``."""
    original = loop.Trainer.train_epoch

    def interrupt(self, current):
        if current == epoch:
            raise KeyboardInterrupt
        return original(self, current)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop.Trainer, "train_epoch", interrupt)
        yield


def test_interrupted_training_resumes_to_the_same_weights(work):
    run, args = work
    assert train(args, "--set", "train.method=mixup") == 0
    uninterrupted = weights(run, "mixup")
    with interrupted_at_epoch(2):
        assert train(args, "--set", "train.method=mixup", "--force") == 130
    assert load(run / "train" / "mixup" / "last.pt")["epoch"] == 2
    assert train(args, "--set", "train.method=mixup") == 0
    resumed = weights(run, "mixup")
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in resumed)
    summary = json.loads((run / "train" / "mixup" / "manifest.json").read_text())["summary"]
    assert summary["resumed"] is True


def test_checkpoint_of_another_config_is_refused(work, capsys):
    run, args = work
    with interrupted_at_epoch(1):
        assert train(args) == 130
    assert train(args, "--set", "train.lr=0.01") == 2
    err = capsys.readouterr().err
    assert "belongs to another run (config changed (lr: 0.003 -> 0.01))" in err and "--resume never" in err
    assert train(args, "--set", "train.lr=0.01", "--resume", "never") == 0


def test_nan_loss_stops_with_a_message(work, capsys, monkeypatch):
    run, args = work
    from train import methods

    monkeypatch.setattr(methods.Recipe, "training_loss", lambda self, x, y, chosen, g: torch.tensor(float("nan")))
    assert train(args) == 1
    assert "training diverged: the baseline loss is nan at epoch 0, batch 0" in capsys.readouterr().err


def test_a_last_batch_of_one_video_joins_the_previous_batch(work):
    run, args = work
    # 45 training videos in batches of 22: 22 + 23 instead of 22 + 22 + 1 (BatchNorm needs two rows)
    assert train(args, "--set", "train.head=aggregators", "--set", "train.batch_size=22",
                 "--set", "train.epochs=1", "--set", "train.eval_every=1") == 0
    assert (run / "train" / "baseline+aggregators" / "predictions.npz").exists()


def test_predictions_are_float32_even_inside_bf16_autocast(work, monkeypatch):
    """Scores never come from a low-precision forward: bf16 logits would tie many per-class scores.
    CPU bf16 autocast stands in for the GPU's training precision (train.amp)."""
    run, _ = work
    monkeypatch.setattr(loop, "autocast", lambda device, amp: torch.autocast("cpu", dtype=torch.bfloat16))
    ids = [f"v{i:04d}" for i in range(60)]
    bank = FeatureBank(run / "extract", ids, cache="ram")
    data = loop.SplitData(np.arange(60), [[0]] * 60, ids)
    cfg = TrainConfig(batch_size=16, eval_frames=8, amp="bf16")
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(bank.dim, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))

    def model(x):  # late average of frame logits, like the lateavg head
        return mlp(x).mean(dim=1)

    model.eval = mlp.eval
    plain = loop.predict(model, bank, data, cfg, torch.device("cpu"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = loop.predict(model, bank, data, cfg, torch.device("cpu"))
        lowered = model(bank.clips(np.arange(60), [np.arange(8) % 3] * 60)).float().detach().numpy()
    assert inside.dtype == np.float32 and np.array_equal(inside, plain)

    def ties(scores):  # per class, videos sharing a score with another video
        return sum(len(col) - len(np.unique(col)) for col in scores.reshape(-1, scores.shape[-1]).T)

    assert ties(plain) == 0 and ties(lowered) > 0  # what the guard prevents


def test_training_progress_is_one_bar_over_every_batch_with_an_eta(work, capsys):
    _, args = work
    assert main(["run", "--stage", "train", *args, *[a for a in FAST if a not in ("--no-progress", "-q")],
                 "--set", "train.epochs=3"]) == 0
    err = capsys.readouterr().err
    last = err.replace("\r", "\n").strip().splitlines()
    bars = [line for line in last if line.startswith("train baseline")]
    # 24 + 12 + 6 + 3 = 45 train videos in batches of 16 -> 3 batches per epoch, 9 in all
    assert bars and "9/9" in bars[-1] and "epoch=3/3" in bars[-1] and "batch" in bars[-1]
    assert any("<" in line and "/9 " in line for line in bars)  # elapsed<remaining: an ETA


def test_a_cuda_device_without_a_gpu_is_one_clear_error(monkeypatch):
    from manifests.errors import UserError
    from train.loop import probabilities, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA GPU is visible"):
        resolve_device("cuda:0")
    assert resolve_device("auto") == torch.device("cpu")
    # float32 as the reference computes it: exp(100) overflows, so a very negative logit saturates to 0
    with np.errstate(over="ignore"):
        assert probabilities(np.array([0.0, 100.0, -100.0])).tolist() == [0.5, 1.0, 0.0]
