"""Helpers of the MOVE and MEDC tests: a small synthetic batch and one training step of a recipe."""

from __future__ import annotations

import torch

D, C, T = 32, 6, 12  # feature dim, classes, frames per clip


def batch(b=8, t=T, seed=0, labels=None):
    """(x (b, t, D), one-hot y (b, C)); labels default to 0, 1, ..., C-1, 0, ..."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, D, generator=g)
    y = torch.zeros(b, C)
    labels = labels if labels is not None else [i % C for i in range(b)]
    y[torch.arange(b), torch.as_tensor(labels)] = 1
    return x, y


def step(recipe, x, y, seed=0, streams=None):
    """The recipe's training loss on (x, y) in train mode, with a seeded generator. A recipe with extra
    batch streams gets each stream's rows after the main ones: ``streams[name]`` = (x, y), default the
    main rows again."""
    recipe.model.train()
    extra = {}
    if recipe.streams:
        parts = [(x, y), *((streams or {}).get(name, (x, y)) for name in recipe.streams)]
        x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        extra["streams"] = recipe.stream_rows([len(p[1]) for p in parts])
    return recipe.training_loss(x, y, torch.full((len(y),), -1), torch.Generator().manual_seed(seed), **extra)
