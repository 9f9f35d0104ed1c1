"""Run ``python -m pipeline <argv>`` in this process (one torchrun rank) and record what this rank did.

Written to ``$PROBE_DIR/rank<R>.pt``: the trainer's model state and optimiser step count right after
training, its epoch history, and every file under ``$PROBE_WORK_DIR`` this rank opened for writing,
renamed or removed (seen through Python's audit hooks, so nothing in the pipeline is changed).
Used by tests/train/test_distributed.py.
"""

import os
import sys
from pathlib import Path

import torch

from pipeline.cli import main
from train import loop

WRITE_MODES = set("wax+")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT


def record_writes(root: Path, writes: list) -> None:
    """Append to ``writes`` every path under ``root`` this process writes, renames or removes."""

    def hook(event, args):
        if event == "open" and args[0] is not None and not isinstance(args[0], int):
            mode, flags = args[1], args[2]
            writing = bool(WRITE_MODES & set(mode)) if mode else bool(flags & WRITE_FLAGS)
            paths = [args[0]] if writing else []
        elif event in ("os.rename", "os.replace", "os.remove", "os.unlink"):
            paths = list(args[:2]) if event in ("os.rename", "os.replace") else [args[0]]
        else:
            return
        for path in paths:
            if isinstance(path, (str, os.PathLike)) and str(Path(os.fsdecode(path)).resolve()).startswith(str(root)):
                writes.append(os.path.relpath(Path(os.fsdecode(path)).resolve(), root))

    sys.addaudithook(hook)


def record_training(out: Path, rank: str) -> None:
    """Save this rank's trainer state after :meth:`Trainer.fit` to ``out/rank<R>.pt``."""
    fit = loop.Trainer.fit

    def fit_and_record(trainer):
        best = fit(trainer)
        steps = {int(s["step"]) for s in trainer.optimizer.state_dict()["state"].values()}
        state = {"model": {k: v.clone() for k, v in trainer.model.state_dict().items()},
                 "steps": steps, "history": trainer.history}
        torch.save(state, out / f"rank{rank}.pt")
        return best

    loop.Trainer.fit = fit_and_record


if __name__ == "__main__":
    out, rank = Path(os.environ["PROBE_DIR"]), os.environ.get("RANK", "0")
    writes = []
    record_writes(Path(os.environ["PROBE_WORK_DIR"]).resolve(), writes)
    record_training(out, rank)
    code = main(sys.argv[1:])
    (out / f"writes{rank}.txt").write_text("".join(w + "\n" for w in writes))
    sys.exit(code)
