"""Feature store: HDF5 shards written whole and renamed, read through memory maps.

The ground the stages share: the extract stage writes it; training (train/data.py), predict/export
and the benchmarks read it through the public API (`__all__`) only, never through private names, so
the on-disk layout can change behind it. The layout, the API and the write protocol are described
in docs/formats.md ("Feature store").
"""

from __future__ import annotations

import errno
import hashlib
import json
import mmap
import os
import re
import time
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Sequence

import h5py
import numpy as np

from manifests.errors import UserError

__all__ = ["FeatureStore", "ShardWriter", "ShardIndex", "CorruptShardError", "read_shard_index", "list_shards",
           "first_free_shard", "shard_name", "remove_partials", "FORMAT", "FORMAT_VERSION"]

FORMAT = "vltr-features"
FORMAT_VERSION = 1
_SHARD_RE = re.compile(r"^shard-(\d+)\.h5$")
_PER_VIDEO_STR = ("decoder", "notes")
_PER_VIDEO_F8 = ("fps", "duration")
_PER_VIDEO_I8 = ("n_frames_meta", "n_frames_decoded", "height", "width")


class CorruptShardError(UserError):
    """One or more complete-looking shards cannot be read or fail verification."""

    def __init__(self, problems: list[tuple[str, str]], hint: str = ""):
        self.problems = problems
        lines = "; ".join(f"{p}: {why}" for p, why in problems[:5])
        more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
        super().__init__(f"corrupted feature shard(s): {lines}{more}. {hint}".strip())


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(str(d), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def shard_name(i: int) -> str:
    """The file name of shard number `i`."""
    return f"shard-{i:05d}.h5"


def list_shards(path: Path) -> list[Path]:
    """The complete shard files of a directory, in name order (none when it does not exist)."""
    path = Path(path)
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if _SHARD_RE.match(p.name) and p.is_file())


def first_free_shard(path: Path) -> int:
    """The number of the next new shard of a directory: one past the highest existing shard."""
    return max((int(_SHARD_RE.match(p.name).group(1)) + 1 for p in list_shards(path)), default=0)


# --------------------------------------------------------------------------- writing

class ShardWriter:
    """Collects videos for one shard; `close()` makes the shard visible atomically."""

    def __init__(self, directory: Path, name: str, feature_dim: int, dtype: str = "float16",
                 attrs: Optional[dict] = None):
        """Start shard `name` in `directory`: features stream to its .bin.partial file."""
        self.dir = Path(directory)
        self.name = name
        self.final = self.dir / name
        self.tmp_h5 = self.dir / (name + ".partial")
        self.tmp_bin = self.dir / (name[:-3] + ".bin.partial")
        self.feature_dim = int(feature_dim)
        self.dtype = np.dtype(dtype)
        self.attrs = dict(attrs or {})
        self._bin = open(self.tmp_bin, "wb", buffering=0)  # unbuffered: a failed write is undone exactly
        self._sha = hashlib.sha256()
        self._broken: Optional[BaseException] = None  # a write that failed and could not be undone
        self.ids: list[str] = []
        self.lengths: list[int] = []
        self.frame_indices: list[np.ndarray] = []
        self.timestamps: list[np.ndarray] = []
        self.per_video: dict[str, list] = {k: [] for k in _PER_VIDEO_STR + _PER_VIDEO_F8 + _PER_VIDEO_I8}

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_frames(self) -> int:
        return int(sum(self.lengths))

    def add(self, video_id: str, feats: np.ndarray, meta: dict) -> None:
        """Append one video: (T>=1, D) finite features (ValueError otherwise) and its decoder metadata
        (frame_indices, timestamps, decoder, notes, fps, duration, ...; missing ones are stored as unknown)."""
        feats = np.asarray(feats)
        if feats.ndim != 2 or feats.shape[1] != self.feature_dim or feats.shape[0] < 1:
            raise ValueError(f"{video_id}: features must be (T>=1, {self.feature_dim}), got {feats.shape}")
        if not np.isfinite(feats).all():
            raise ValueError(f"{video_id}: features contain NaN/Inf")
        if self.dtype == np.float16 and feats.dtype != np.float16 and np.abs(feats).max() > 65504:
            raise ValueError(f"{video_id}: features overflow float16 (|x| > 65504); use extract.dtype=float32")
        if self._broken is not None:
            raise OSError(f"{self.tmp_bin}: an earlier write failed ({self._broken}); this shard cannot be "
                          "completed") from self._broken
        data = np.ascontiguousarray(feats.astype(self.dtype, copy=False))
        b = data.tobytes()
        start = self._bin.tell()
        try:
            self._write_all(b)
        except BaseException as e:
            self._undo_write(start, e)
            raise
        self._sha.update(b)
        t = data.shape[0]
        self.ids.append(video_id)
        self.lengths.append(t)
        fi = meta.get("frame_indices")
        self.frame_indices.append(np.asarray(fi if fi is not None else np.arange(t), dtype=np.int64).reshape(-1)[:t])
        ts = meta.get("timestamps")
        self.timestamps.append(np.asarray(ts if ts is not None else np.full(t, np.nan), dtype=np.float64)
                               .reshape(-1)[:t])
        for k in _PER_VIDEO_STR:
            v = meta.get(k, "")
            self.per_video[k].append(v if isinstance(v, str) else json.dumps(v))
        for k in _PER_VIDEO_F8:
            v = meta.get(k)
            self.per_video[k].append(float(v) if v is not None else float("nan"))
        for k in _PER_VIDEO_I8:
            v = meta.get(k)
            self.per_video[k].append(int(v) if v is not None else -1)

    def _write_all(self, b: bytes) -> None:
        view = memoryview(b)
        while len(view):
            n = self._bin.write(view)
            if not n:
                raise OSError(errno.EIO, f"short write to {self.tmp_bin}")
            view = view[n:]

    def _undo_write(self, start: int, exc: BaseException) -> None:
        """Cut the .bin back to `start` after a failed (possibly partial) write of one video, so that
        the next video lands at the right offset; if that is impossible the writer refuses to close."""
        try:
            self._bin.truncate(start)
            self._bin.seek(start)
            if self._bin.tell() != start:
                raise OSError("could not rewind the shard file")
        except BaseException:
            self._broken = exc

    def _size_bound(self) -> int:
        """An upper bound of the .h5 file's size (features, index arrays, strings, attributes, metadata)."""
        total, n = self.num_frames, len(self.ids)
        size = total * self.feature_dim * self.dtype.itemsize + total * 16 + (n + 1) * 8
        size += n * 8 * (len(_PER_VIDEO_F8) + len(_PER_VIDEO_I8))
        for strings in [self.ids] + [self.per_video[k] for k in _PER_VIDEO_STR]:
            size += sum(len(x.encode("utf-8", "surrogatepass")) + 64 for x in strings)
        for k, v in self.attrs.items():
            size += len(k) + len(v if isinstance(v, str) else json.dumps(v, default=str)) + 512
        return size + (1 << 20)

    def _create_reserved(self) -> None:
        """Start the .h5.partial as an empty HDF5 file with its full size reserved on disk, so that a full
        disk (or a file size limit, or a quota) is a plain OSError here, before HDF5 writes anything: the
        HDF5 library does not recover from a failed write (errors at every later call, crash at exit)."""
        with open(self.tmp_h5, "wb") as fh:
            fh.write(_empty_h5_image())
            fh.flush()
            if hasattr(os, "posix_fallocate"):
                try:
                    os.posix_fallocate(fh.fileno(), 0, self._size_bound())
                except OSError as e:
                    if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                        raise

    def close(self) -> Path:
        """Write the shard (`<name>.partial`, fsync, rename). Any failure to write (full disk, ...) is an
        OSError; the partial files are then left for `abort()` (or the next run) to remove."""
        if self._broken is not None:
            raise OSError(f"{self.tmp_bin}: an earlier write failed ({self._broken}); the shard is not "
                          "complete") from self._broken
        self._bin.flush()
        os.fsync(self._bin.fileno())
        self._bin.close()
        self._create_reserved()
        failed = None
        try:
            self._write_h5()
        except (OSError, RuntimeError) as e:  # h5py reports a failed write as either
            failed = _as_os_error(e)
        if failed is not None:
            raise failed  # raised outside the handler: no reference to HDF5 objects is kept
        with open(self.tmp_h5, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(self.tmp_h5, self.final)
        _fsync_dir(self.dir)
        self.tmp_bin.unlink(missing_ok=True)
        return self.final

    def _write_h5(self) -> None:
        """Write the .h5.partial file: the streamed features (copied in 64 MB steps), the per-row and
        per-video datasets, and the attributes (dicts as JSON strings)."""
        total = self.num_frames
        d = self.feature_dim
        raw = np.memmap(self.tmp_bin, dtype=self.dtype, mode="r", shape=(total, d)) if total else None
        str_dt = h5py.string_dtype("utf-8")
        with h5py.File(self.tmp_h5, "r+") as f:
            ds = f.create_dataset("features", shape=(total, d), dtype=self.dtype)  # contiguous
            step = max(1, (64 << 20) // max(1, d * self.dtype.itemsize))
            for s in range(0, total, step):
                ds[s:s + step] = raw[s:s + step]
            f.create_dataset("offsets", data=np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64))
            f.create_dataset("video_ids", data=np.array(self.ids, dtype=object), dtype=str_dt)
            f.create_dataset("frame_indices", data=np.concatenate(self.frame_indices).astype(np.int64))
            f.create_dataset("timestamps", data=np.concatenate(self.timestamps).astype(np.float64))
            for k in _PER_VIDEO_STR:
                f.create_dataset(k, data=np.array(self.per_video[k], dtype=object), dtype=str_dt)
            for k in _PER_VIDEO_F8:
                f.create_dataset(k, data=np.array(self.per_video[k], dtype=np.float64))
            for k in _PER_VIDEO_I8:
                f.create_dataset(k, data=np.array(self.per_video[k], dtype=np.int64))
            for k, v in self.attrs.items():
                f.attrs[k] = v if isinstance(v, (str, int, float, np.integer, np.floating)) else json.dumps(v)
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["num_videos"] = len(self.ids)
            f.attrs["num_frames"] = total
            f.attrs["feature_dim"] = d
            f.attrs["dtype"] = self.dtype.name
            f.attrs["features_sha256"] = self._sha.hexdigest()
            f.attrs["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            f.attrs["complete"] = 1
        del raw

    def abort(self) -> None:
        """Drop the shard: close and delete its partial files."""
        try:
            self._bin.close()
        except Exception:
            pass
        self.tmp_bin.unlink(missing_ok=True)
        self.tmp_h5.unlink(missing_ok=True)


_EMPTY_H5: Optional[bytes] = None


def _empty_h5_image() -> bytes:
    """The bytes of an empty HDF5 file (made in memory once per process)."""
    global _EMPTY_H5
    if _EMPTY_H5 is None:
        with h5py.File(f"empty-{os.getpid()}.h5", "w", driver="core", backing_store=False) as f:
            f.flush()
            _EMPTY_H5 = bytes(f.id.get_file_image())
    return _EMPTY_H5


def _as_os_error(e: BaseException) -> OSError:
    """An h5py write error as a short OSError: HDF5's messages carry the OS errno in the text."""
    text = str(e)
    m = re.search(r"errno = (\d+)", text)
    code = int(m.group(1)) if m else (e.errno if isinstance(e, OSError) and e.errno else None)
    if code:
        return OSError(code, os.strerror(code))
    return OSError(errno.EIO, f"HDF5 write failed ({type(e).__name__}: {text.splitlines()[0][:200] if text else ''})")


def remove_partials(directory: Path) -> list[str]:
    """Delete leftovers of a killed writer (never taken for complete shards)."""
    out = []
    d = Path(directory)
    if d.is_dir():
        for p in d.iterdir():
            if p.name.startswith("shard-") and p.name.endswith(".partial"):
                p.unlink(missing_ok=True)
                out.append(p.name)
    return out


# --------------------------------------------------------------------------- reading

class ShardIndex:
    """One checked shard: `path`, video `ids`, row `offsets` (N+1), `feat_offset` (byte offset of the
    contiguous features in the file, None when not contiguous), `total` rows, `dim`, `dtype`, and the
    raw HDF5 `attrs`."""
    __slots__ = ("path", "ids", "offsets", "feat_offset", "total", "dim", "dtype", "attrs")


def _attr(v):
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, np.generic):
        v = v.item()
    return v


def read_shard_index(path: Path, deep: bool = False) -> ShardIndex:
    """Open and check one shard; raises ValueError with the reason when it is corrupt."""
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _attr(v) for k, v in f.attrs.items()}
            if attrs.get("format") != FORMAT:
                raise ValueError(f"not a {FORMAT} shard (format={attrs.get('format')!r})")
            if int(attrs.get("complete", 0)) != 1:
                raise ValueError("shard not marked complete")
            ds = f["features"]
            total, dim = ds.shape
            offsets = f["offsets"][()].astype(np.int64)
            ids = [x.decode() if isinstance(x, bytes) else str(x) for x in f["video_ids"][()]]
            n = int(attrs["num_videos"])
            if len(ids) != n or len(offsets) != n + 1 or offsets[0] != 0 or offsets[-1] != total \
                    or (np.diff(offsets) < 1).any() or int(attrs["num_frames"]) != total:
                raise ValueError("inconsistent index (ids/offsets/frames)")
            for k in ("frame_indices", "timestamps"):
                if f[k].shape[0] != total:
                    raise ValueError(f"{k} has {f[k].shape[0]} rows, expected {total}")
            for k in _PER_VIDEO_STR + _PER_VIDEO_F8 + _PER_VIDEO_I8:
                if f[k].shape[0] != n:
                    raise ValueError(f"{k} has {f[k].shape[0]} entries, expected {n}")
            off = ds.id.get_offset()
            dtype = ds.dtype
            if deep:
                h = hashlib.sha256()
                step = max(1, (64 << 20) // max(1, dim * dtype.itemsize))
                for s in range(0, total, step):
                    h.update(np.ascontiguousarray(ds[s:s + step]).tobytes())
                if h.hexdigest() != attrs.get("features_sha256"):
                    raise ValueError("feature checksum mismatch (data damaged on disk)")
        size = os.path.getsize(path)
        if off is not None and off + total * dim * dtype.itemsize > size:
            raise ValueError("file truncated (features extend past the end of the file)")
    except ValueError:
        raise
    except Exception as e:  # h5py raises OSError/KeyError/... on damaged files
        raise ValueError(f"cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''})") from None
    sh = ShardIndex()
    sh.path, sh.ids, sh.offsets, sh.feat_offset = Path(path), ids, offsets, off
    sh.total, sh.dim, sh.dtype, sh.attrs = int(total), int(dim), dtype, attrs
    return sh


class FeatureStore:
    """Read access to the features of an extract stage directory.

    FeatureStore(path) indexes every complete shard (`shard-*.h5`) and checks its structure; a
    damaged shard raises CorruptShardError naming the file (on_corrupt="skip" lists it in
    `.corrupt` and goes on). Reads go through memory maps and are safe after fork/pickling.
    """

    def __init__(self, path: str | os.PathLike, *, on_corrupt: str = "raise", deep_verify: bool = False,
                 max_open: int = 128):
        """Index every complete shard of `path` (see docs/formats.md); a UserError when shards of
        different extract settings are mixed."""
        self.path = Path(path)
        if not self.path.is_dir():
            raise UserError(f"feature store not found: {self.path} is not a directory (run the extract stage first)")
        self.max_open = max_open
        self.shards: list[ShardIndex] = []
        self.corrupt: list[tuple[str, str]] = []
        self.duplicates: list[str] = []
        self._index: dict[str, tuple[int, int]] = {}  # id -> (shard, row)
        for p in list_shards(self.path):
            try:
                sh = read_shard_index(p, deep=deep_verify)
            except ValueError as e:
                self.corrupt.append((p.name, str(e)))
                continue
            k = len(self.shards)
            self.shards.append(sh)
            for row, vid in enumerate(sh.ids):
                if vid in self._index:
                    self.duplicates.append(vid)
                    continue
                self._index[vid] = (k, row)
        if self.corrupt and on_corrupt == "raise":
            raise CorruptShardError(self.corrupt, f"in {self.path}; re-run the extract stage with --repair "
                                                  "to move them aside and re-extract their videos")
        self.attrs: dict = dict(self.shards[0].attrs) if self.shards else {}
        for k in ("transform", "sampling", "versions", "config", "tsm"):
            if isinstance(self.attrs.get(k), str):
                try:
                    self.attrs[k] = json.loads(self.attrs[k])
                except ValueError:
                    pass
        fps = {sh.attrs.get("fingerprint") for sh in self.shards}
        if len(fps) > 1:
            raise UserError(f"{self.path} mixes shards of different extract configs; delete the directory "
                            "and extract again")
        self._maps: OrderedDict[int, np.ndarray] = OrderedDict()
        self._mmaps: dict[int, mmap.mmap] = {}
        self._meta_cache: dict[int, dict] = {}
        self._vec = None

    # -- pickling (DataLoader workers): drop open maps
    def __getstate__(self):
        """Pickle without the open maps (DataLoader workers map the shards again)."""
        d = self.__dict__.copy()
        d["_maps"] = OrderedDict()
        d["_mmaps"] = {}
        d["_meta_cache"] = {}
        return d

    # -- basic protocol
    def ids(self) -> list[str]:
        """The stored video ids, shard by shard (a duplicate id counts once, from its first shard)."""
        return list(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, video_id) -> bool:
        return video_id in self._index

    def __iter__(self):
        return iter(self._index)

    @property
    def feature_dim(self) -> Optional[int]:
        """D, the feature size (None for an empty store)."""
        return self.shards[0].dim if self.shards else None

    @property
    def dtype(self) -> Optional[np.dtype]:
        """The stored dtype, float16 or float32 (None for an empty store)."""
        return self.shards[0].dtype if self.shards else None

    def num_frames(self, video_id: str) -> int:
        """The number of stored rows (frames) of one video."""
        k, row = self._locate(video_id)
        o = self.shards[k].offsets
        return int(o[row + 1] - o[row])

    def lengths(self, ids: Optional[Sequence[str]] = None) -> np.ndarray:
        """Rows per video of `ids` (default: all, in `ids()` order), int64."""
        ids = self.ids() if ids is None else ids
        return np.array([self.num_frames(v) for v in ids], dtype=np.int64)

    def _locate(self, video_id: str) -> tuple[int, int]:
        """(shard index, row) of a video; KeyError naming the store when it is not there."""
        try:
            return self._index[video_id]
        except KeyError:
            raise KeyError(f"video {video_id!r} is not in the feature store {self.path}") from None

    def _features(self, k: int) -> np.ndarray:
        """The (total, D) feature rows of shard k, memory-mapped (at most `max_open` shards stay mapped)."""
        m = self._maps.get(k)
        if m is not None:
            self._maps.move_to_end(k)
            return m
        sh = self.shards[k]
        if sh.feat_offset is not None:
            # a plain ndarray over a read-only map of the file (no np.memmap subclass overhead)
            with open(sh.path, "rb") as fh:
                mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            m = np.frombuffer(mm, dtype=sh.dtype, count=sh.total * sh.dim, offset=sh.feat_offset)
            m = m.reshape(sh.total, sh.dim)
            self._mmaps[k] = mm
        else:  # not contiguous (foreign writer): read through h5py
            with h5py.File(sh.path, "r") as f:
                m = f["features"][()]
        self._maps[k] = m
        while len(self._maps) > self.max_open:
            evicted, _ = self._maps.popitem(last=False)
            self._mmaps.pop(evicted, None)
        return m

    def _prefetch(self, k: int, start: np.ndarray, length: np.ndarray) -> None:
        """Ask the kernel to read the rows of these videos ahead, all at once (``MADV_WILLNEED``):
        a batch's videos are then read with many large requests in flight instead of one page fault
        per sampled row. A no-op where madvise is unavailable."""
        mm = self._mmaps.get(k)
        if mm is None or not hasattr(mmap, "MADV_WILLNEED"):
            return
        sh = self.shards[k]
        row_bytes = sh.dim * np.dtype(sh.dtype).itemsize
        for a, n in zip(start.tolist(), length.tolist()):
            first = sh.feat_offset + a * row_bytes
            aligned = first - first % mmap.PAGESIZE
            mm.madvise(mmap.MADV_WILLNEED, aligned, first - aligned + n * row_bytes)

    # -- reads
    def get(self, video_id: str, frames: Optional[np.ndarray] = None, dtype=None) -> np.ndarray:
        """(T, D) features of one video (a copy); `frames` selects rows (e.g. sampled indices)."""
        k, row = self._locate(video_id)
        sh = self.shards[k]
        a, b = int(sh.offsets[row]), int(sh.offsets[row + 1])
        m = self._features(k)
        out = m[a:b] if frames is None else m[a + np.asarray(frames, dtype=np.int64)]
        return np.array(out, dtype=dtype or sh.dtype, copy=True)

    def get_many(self, ids: Sequence[str], frames: Optional[Sequence[np.ndarray]] = None, dtype=None) -> list[np.ndarray]:
        """`get` of each video (with its own row indices when `frames` is given)."""
        if frames is None:
            return [self.get(v, dtype=dtype) for v in ids]
        return [self.get(v, f, dtype=dtype) for v, f in zip(ids, frames)]

    def _positions(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(shard index, first row, length) of each id, as arrays."""
        if self._vec is None:
            n = len(self._index)
            pos, shard, start, length = {}, np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64)
            for i, (vid, (k, row)) in enumerate(self._index.items()):
                o = self.shards[k].offsets
                pos[vid] = i
                shard[i], start[i], length[i] = k, o[row], o[row + 1] - o[row]
            self._vec = (pos, shard, start, length)
        pos, shard, start, length = self._vec
        try:
            p = np.fromiter((pos[v] for v in ids), dtype=np.int64, count=len(ids))
        except KeyError as e:
            raise KeyError(f"video {e.args[0]!r} is not in the feature store {self.path}") from None
        return shard[p], start[p], length[p]

    def sample_batch(self, ids: Sequence[str], num_frames: int, rng: np.random.Generator,
                     dtype=None) -> np.ndarray:
        """Training-style read: per video `num_frames` rows drawn uniformly with replacement and
        sorted (the reference's sort(randint(n, T))) -> (B, num_frames, D), in the store dtype
        unless `dtype` is given. One vectorised gather per shard."""
        _, _, length = self._positions(ids)
        idx = np.sort((rng.random((len(ids), num_frames)) * length[:, None]).astype(np.int64), axis=1)
        return self.rows_batch(ids, idx, dtype=dtype)

    def rows_batch(self, ids: Sequence[str], frames: Sequence[np.ndarray], dtype=None) -> np.ndarray:
        """(B, T, D) from per-video row indices of equal length T (e.g. uniform eval sampling).
        One vectorised gather per shard, after asking the kernel to read the videos ahead."""
        shard, start, length = self._positions(ids)
        idx = np.asarray(frames, dtype=np.int64)
        if (idx < 0).any() or (idx >= length[:, None]).any():
            raise IndexError("frame index out of range for at least one video")
        rows = start[:, None] + idx
        out = np.empty((len(ids), idx.shape[1], self.feature_dim), dtype=dtype or self.dtype)
        for k in np.unique(shard):
            sel = np.nonzero(shard == k)[0]
            features = self._features(int(k))
            self._prefetch(int(k), start[sel], length[sel])
            out[sel] = features[rows[sel]]
        return out

    def load_packed(self, ids: Optional[Sequence[str]] = None, dtype=None) -> tuple[np.ndarray, np.ndarray]:
        """Everything in RAM: (packed (sum T, D), offsets (len(ids)+1,)) in the order of `ids`."""
        ids = self.ids() if ids is None else list(ids)
        lengths = self.lengths(ids)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        packed = np.empty((int(offsets[-1]), self.feature_dim or 0), dtype=dtype or self.dtype)
        for i, v in enumerate(ids):
            k, row = self._index[v]
            sh = self.shards[k]
            packed[offsets[i]:offsets[i + 1]] = self._features(k)[sh.offsets[row]:sh.offsets[row + 1]]
        return packed, offsets

    def meta(self, video_id: str) -> dict:
        """A video's stored metadata: shard, num_frames, frame_indices, timestamps, decoder, notes, fps,
        duration, n_frames_meta, n_frames_decoded, height, width."""
        k, row = self._locate(video_id)
        sh = self.shards[k]
        per = self._meta_cache.get(k)
        if per is None:
            with h5py.File(sh.path, "r") as f:
                per = {name: f[name][()] for name in _PER_VIDEO_STR + _PER_VIDEO_F8 + _PER_VIDEO_I8}
                per["frame_indices"] = f["frame_indices"][()]
                per["timestamps"] = f["timestamps"][()]
            self._meta_cache = {k: per}  # keep one shard's metadata
        a, b = int(sh.offsets[row]), int(sh.offsets[row + 1])
        out = {"video_id": video_id, "shard": sh.path.name, "num_frames": b - a,
               "frame_indices": per["frame_indices"][a:b].copy(), "timestamps": per["timestamps"][a:b].copy()}
        for name in _PER_VIDEO_STR:
            v = per[name][row]
            out[name] = v.decode() if isinstance(v, bytes) else str(v)
        for name in _PER_VIDEO_F8:
            out[name] = float(per[name][row])
        for name in _PER_VIDEO_I8:
            out[name] = int(per[name][row])
        try:
            out["notes"] = json.loads(out["notes"]) if out["notes"] else []
        except ValueError:
            pass
        return out

    def index_table(self) -> dict[str, dict]:
        """{video_id: {"shard", "num_frames", "decoder"}} for every stored video (one read per shard)."""
        out: dict[str, dict] = {}
        for k, sh in enumerate(self.shards):
            with h5py.File(sh.path, "r") as f:
                dec = [x.decode() if isinstance(x, bytes) else str(x) for x in f["decoder"][()]]
            lens = np.diff(sh.offsets)
            for row, vid in enumerate(sh.ids):
                if self._index.get(vid) == (k, row):
                    out[vid] = {"shard": sh.path.name, "num_frames": int(lens[row]), "decoder": dec[row]}
        return out

    def shard_of(self, video_id: str) -> str:
        """The file name of the shard that holds a video."""
        return self.shards[self._locate(video_id)[0]].path.name

    def verify(self, deep: bool = True) -> list[tuple[str, str]]:
        """Re-check every shard (deep: feature checksums); returns [(file, problem)]."""
        problems = list(self.corrupt)
        for sh in self.shards:
            try:
                read_shard_index(sh.path, deep=deep)
            except ValueError as e:
                problems.append((sh.path.name, str(e)))
        return problems
