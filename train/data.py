"""Training data: per-video features from the extract store, sampled into fixed-length clips.

Clips are built a whole batch at a time. Every random draw is a function of (seed, epoch, batch),
so a run is reproducible and resumes exactly, whichever process builds the batch. Features are
read from a packed float16 copy in RAM (or on the GPU) when it fits, else from the store's shards
by loader processes.
"""

from __future__ import annotations

import numpy as np
import psutil
import torch

from extract.store import FeatureStore
from manifests.datasets import multi_hot
from manifests.errors import UserError
from manifests.frames import random_indices, uniform_indices

CHECK_ROWS = 1 << 16  # rows per finiteness check of the packed features (bounds the temporary mask)
RAM_FRACTION = 0.5  # cache=auto packs features in RAM when they take at most this share of free memory


class FeatureBank:
    """Features of a fixed list of videos, addressable by position in that list."""

    def __init__(self, store_dir, video_ids, cache: str = "auto", device: torch.device | None = None):
        self.store = FeatureStore(store_dir)
        missing = [v for v in video_ids if v not in self.store]
        if missing:
            raise KeyError(f"{len(missing)} videos have no features in {store_dir} (e.g. {missing[:3]})")
        self.video_ids = list(video_ids)
        self.lengths = self.store.lengths(self.video_ids)
        self.dim = int(self.store.feature_dim)
        if cache == "auto":
            needed = int(self.lengths.sum()) * self.dim * np.dtype(self.store.dtype).itemsize
            cache = "ram" if needed <= RAM_FRACTION * psutil.virtual_memory().available else "none"
        self.cache = cache
        self.packed = self.offsets = None
        if cache in ("ram", "gpu"):
            packed, self.offsets = self.store.load_packed(self.video_ids)
            self.packed = torch.from_numpy(packed)
            for start in range(0, len(self.packed), CHECK_ROWS):  # once here; disk reads are checked per batch
                bad = (~torch.isfinite(self.packed[start:start + CHECK_ROWS]).all(dim=1)).nonzero()
                if len(bad):
                    self._refuse(int(np.searchsorted(self.offsets, start + int(bad[0]), side="right")) - 1)
            if cache == "gpu":
                self.packed = self.packed.to(device)

    def clips(self, positions, frames, check: bool = True) -> torch.Tensor:
        """(B, T, D) float32 features of the videos at ``positions``, frame rows ``frames[i]``.

        Non-finite values (a shard damaged on disk) are refused, naming the video and its shard;
        ``check=False`` leaves that to the caller (loader processes, whose errors arrive wrapped).
        """
        if self.packed is not None:
            rows = np.concatenate([self.offsets[p] + f for p, f in zip(positions, frames)])
            index = torch.from_numpy(rows).to(self.packed.device)
            return self.packed[index].view(len(positions), -1, self.dim).float()
        rows = self.store.rows_batch([self.video_ids[p] for p in positions], frames)  # one gather per shard
        x = torch.from_numpy(rows).float()  # float16 -> float32 in torch (numpy's is slow)
        if check:
            self.check_finite(x, positions)
        return x

    def check_finite(self, x: torch.Tensor, positions) -> None:
        """Refuse clips read from disk that hold NaN/Inf (packed features were checked when loaded)."""
        if self.packed is None:
            bad = (~torch.isfinite(x).flatten(1).all(dim=1)).nonzero()
            if len(bad):
                self._refuse(int(positions[int(bad[0])]))

    def _refuse(self, position: int) -> None:
        video = self.video_ids[position]
        raise UserError(f"features of video {video!r} in {self.store.path / self.store.shard_of(video)} "
                        "contain NaN or Inf; re-run the extract stage with --repair")


def batch_spans(num_videos: int, batch_size: int, world: int = 1) -> list:
    """``(start, stop)`` of each batch of an epoch of ``num_videos``; a last batch of fewer than two
    videos per process joins the one before it (BatchNorm needs two rows)."""
    cuts = list(range(0, num_videos, batch_size))
    if len(cuts) > 1 and num_videos - cuts[-1] < 2 * world:
        cuts.pop()
    return list(zip(cuts, cuts[1:] + [num_videos]))


def batch_rng(seed: int, epoch: int, batch: int) -> np.random.Generator:
    """The random stream of one training batch."""
    return np.random.default_rng([seed, epoch, batch])


def train_frames(lengths, num_frames: int, rng: np.random.Generator) -> list:
    """Random training frame indices of each video (sorted, with replacement)."""
    return [random_indices(int(n), num_frames, rng) for n in lengths]


def eval_frames(lengths, num_frames: int) -> list:
    """Uniform evaluation frame indices of each video."""
    return [uniform_indices(int(n), num_frames) for n in lengths]


class EpochBatches(torch.utils.data.Dataset):
    """Batch ``i`` of one training epoch: (features, targets, chosen classes or -1, video positions,
    rows per stream).

    ``streams`` (optional) are extra batch streams of the same epoch, each a ``(batches, chosen)``
    pair like the main one (e.g. MEDC's class-balanced and inverse streams): batch ``i`` carries the
    main stream's rows first, then each stream's rows in order; ``rows per stream`` (a 1-D int64
    tensor, main first) tells them apart. A Dataset of whole batches, so loader processes can build
    them in parallel while staying deterministic (``batch_size=None`` in the DataLoader).
    """

    def __init__(self, bank: FeatureBank, labels: list, num_classes: int, batches: list, chosen: list | None,
                 num_frames: int, seed: int, epoch: int, shard: tuple = (0, 1), streams: list = ()):
        self.bank, self.labels, self.num_classes = bank, labels, num_classes
        self.streams = [(batches, chosen), *streams]
        self.num_frames, self.seed, self.epoch = num_frames, seed, epoch
        self.rank, self.world = shard  # data parallelism: this process's rows of each batch

    def __len__(self) -> int:
        return len(self.streams[0][0])

    def __getitem__(self, i: int):
        rng = batch_rng(self.seed, self.epoch, i)  # frames of the main rows first, then each stream's
        mine = slice(self.rank, None, self.world)
        positions, frames, chosen, sizes = [], [], [], []
        for batches, picked in self.streams:
            drawn = train_frames(self.bank.lengths[batches[i]], self.num_frames, rng)  # the whole global batch
            rows = batches[i][mine]
            positions.append(rows)
            frames += drawn[mine]
            chosen.append(picked[i][mine] if picked is not None else np.full(len(rows), -1))
            sizes.append(len(rows))
        positions = np.concatenate(positions)
        x = self.bank.clips(positions, frames, check=False)  # checked by the trainer, in the main process
        y = torch.from_numpy(multi_hot([self.labels[p] for p in positions], self.num_classes)).float()
        return (x, y, torch.as_tensor(np.concatenate(chosen)), torch.as_tensor(positions),
                torch.as_tensor(sizes, dtype=torch.int64))
