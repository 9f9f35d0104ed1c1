"""``bench train``: time of one training step of each method on a fixed synthetic batch."""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from train import methods, registry
from train.config import TrainConfig


def bench_train(batch: int = 128, frames: int = 60, dim: int = 2048, classes: int = 1004, repeats: int = 3,
                method_names: tuple = ("baseline", "move", "medc"), seed: int = 0) -> dict:
    """Per-step seconds (min/median of ``repeats`` after one warm-up step), samples/s and parameter
    counts of each method's training step (forward, loss, backward, Adam step) on the CPU/GPU; samples/s
    counts the main batch (MEDC's steps also carry its experts' streams)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rng = np.random.default_rng(seed)
    counts = np.sort(rng.integers(44, 1913, classes))[::-1].copy()
    x = torch.from_numpy(rng.normal(size=(batch, frames, dim)).astype(np.float32)).to(device)
    y = torch.zeros(batch, classes, device=device)
    y[torch.arange(batch), torch.from_numpy(rng.integers(0, classes, batch))] = 1
    chosen = torch.full((batch,), -1, device=device)
    options = {name: model() for name, model in registry.section_models().items()}
    results = {}
    for name in method_names:
        if name not in registry.METHODS:
            continue
        torch.manual_seed(seed)
        recipe = methods.build(name, TrainConfig(method=name, train_frames=frames), dim, classes, counts, options)
        recipe.model.to(device).train()
        optimizer = torch.optim.Adam(recipe.parameters(), lr=1e-4)
        generator = torch.Generator().manual_seed(seed)
        copies = 1 + len(recipe.streams)  # a recipe with extra batch streams (MEDC) gets one batch per stream
        extra = {"streams": recipe.stream_rows([batch] * copies)} if recipe.streams else {}
        xs, ys, cs = (t.repeat(copies, *[1] * (t.dim() - 1)) for t in (x, y, chosen))
        times = []
        for step in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            loss = recipe.training_loss(xs, ys, cs, generator, **extra)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step:  # the first step warms up allocators and kernels
                times.append(time.perf_counter() - started)
        median = statistics.median(times)
        results[name] = {"step_s_min": round(min(times), 4), "step_s_median": round(median, 4),
                         "samples_per_s": round(batch / median, 1),
                         "parameters": sum(p.numel() for p in recipe.model.parameters())}
        del recipe, optimizer
    loading = bench_loading(batch, frames, dim, repeats=repeats, seed=seed)
    step = results.get("baseline", {}).get("step_s_median")
    if step:
        loading["baseline_step_over_batch_build"] = {k: round(step / v["batch_s_median"], 2)
                                                     for k, v in loading["caches"].items()}
    return {"bench": "train", "device": device.type, "batch": batch, "frames": frames, "dim": dim,
            "classes": classes, "repeats": repeats, "methods": results, "loading": loading}


def bench_loading(batch: int = 128, frames: int = 60, dim: int = 2048, videos: int = 256, stored: int = 150,
                  repeats: int = 3, seed: int = 0) -> dict:
    """Seconds to build one training batch (random frames of ``batch`` videos) from a synthetic
    store, with the features packed in RAM and read from the shards (page cache warm)."""
    import tempfile
    from pathlib import Path

    from extract.store import ShardWriter
    from train.data import EpochBatches, FeatureBank

    rng = np.random.default_rng(seed)
    out = {"videos": videos, "stored_frames": stored, "caches": {}}
    with tempfile.TemporaryDirectory() as tmp:
        writer = ShardWriter(Path(tmp), "shard-00000.h5", dim, "float16")
        ids = [f"v{i:05d}" for i in range(videos)]
        for video_id in ids:
            writer.add(video_id, rng.normal(size=(stored, dim)).astype(np.float16), {})
        writer.close()
        labels = {i: [i % 10] for i in range(videos)}
        batches = [rng.choice(videos, batch, replace=videos < batch) for _ in range(repeats + 1)]
        for cache in ("ram", "none"):
            bank = FeatureBank(tmp, ids, cache=cache)
            dataset = EpochBatches(bank, labels, 10, batches, None, frames, seed, 0)
            times = []
            for i in range(len(batches)):
                started = time.perf_counter()
                dataset[i]
                if i:
                    times.append(time.perf_counter() - started)
            out["caches"][cache] = {"batch_s_min": round(min(times), 4),
                                    "batch_s_median": round(statistics.median(times), 4)}
    return out
