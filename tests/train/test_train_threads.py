"""Training sizes torch threads and loader processes from the CPU budget (VLTR_CPUS here)."""

import torch

from pipeline.cli import main
from train import loop

FAST = ["--set", "train.epochs=1", "--set", "train.batch_size=16", "--set", "train.hidden=16",
        "--set", "train.eval_every=1", "--set", "train.train_frames=4", "--set", "train.eval_frames=4",
        "--no-progress", "-q"]


def test_training_uses_the_cpu_budget(tmp_path, feature_work_dir, monkeypatch):
    args = feature_work_dir(tmp_path / "run")
    seen = {}
    real_epoch, real_loader = loop.Trainer.train_epoch, loop.Trainer.loader

    def train_epoch(self, epoch):
        seen["threads"] = torch.get_num_threads()
        return real_epoch(self, epoch)

    def loader(self, dataset):
        batches = real_loader(self, dataset)
        seen["loader_workers"] = getattr(batches, "num_workers", None)
        return batches

    monkeypatch.setattr(loop.Trainer, "train_epoch", train_epoch)
    monkeypatch.setattr(loop.Trainer, "loader", loader)
    monkeypatch.setenv("VLTR_CPUS", "1")
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        code = main(["run", "--stage", "train", *args, *FAST, "--set", "train.cache=none",
                     "--set", "train.num_workers=2"])
    finally:
        torch.set_num_threads(before)
    assert code == 0
    assert seen == {"threads": 1, "loader_workers": 1}  # 2 loader processes asked, 1 CPU to run them
