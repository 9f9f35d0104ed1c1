"""A small, seeded, long-tailed set of real H.264 videos for the embedded demo: every class is an
*(object, motion direction)* pair, e.g. ``red_circle_moving_left``, with a surface pattern per
direction. :func:`generate_demo` writes the videos, ``labels.csv`` (the ``csv`` format),
``class_names.txt``, ``annotations.jsonl`` and ``demo.json``; the layout, the video anatomy, the
long tail, the multi-label videos and the seeding are described in docs/formats.md ("The demo set").
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from manifests.errors import UserError
from manifests.files import publish_dir

__all__ = [
    "COLOURS",
    "DIRECTIONS",
    "DemoSpec",
    "DemoSpecError",
    "GENERATOR_VERSION",
    "PATTERNS",
    "SHAPES",
    "class_names",
    "generate_demo",
    "is_complete",
    "train_profile",
]

#: Bump when the output of the generator changes for the same seed and spec: an existing
#: set written by another version is then regenerated instead of reused.
GENERATOR_VERSION = 2

#: Saturated colours, far from the low-saturation backgrounds (RGB, 0..255).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 70, 235),
    "yellow": (240, 220, 20),
    "magenta": (230, 40, 220),
    "cyan": (20, 220, 230),
    "orange": (250, 140, 10),
    "purple": (140, 40, 200),
}

#: Shapes, each drawn from a signed distance in object coordinates (see ``_shape_sdf``).
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "stripes", "diamond", "star")

#: Surface patterns; a class's pattern is that of its direction (``spec.directions`` index), so
#: classes differ in appearance and not only in motion.
PATTERNS: tuple[str, ...] = ("plain", "bands", "bars", "checker", "diagonal", "rings")

#: Direction name -> (dx, dy) in image coordinates (y grows downwards).
DIRECTIONS: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
    "up_left": (-1, -1),
    "up_right": (1, -1),
    "down_left": (-1, 1),
    "down_right": (1, 1),
    "still": (0, 0),
}

SPLITS = ("train", "val", "test")
_MAX_OBJECTS = len(SHAPES) * len(COLOURS)


class DemoSpecError(UserError, ValueError):
    """An invalid :class:`DemoSpec` or an unusable output directory."""


@dataclass(frozen=True)
class DemoSpec:
    """What to generate; all defaults are small (24 classes, ~380 clips of 16 frames at 96 px)."""

    #: distinct objects (shape + colour); object k has shape ``SHAPES[k % 8]``.
    num_objects: int = 6
    #: motion directions (keys of :data:`DIRECTIONS`); classes = objects x directions.
    directions: tuple = ("left", "right", "up", "down")
    #: train videos of the head class (rank 0).
    max_train_per_class: int = 30
    #: train videos of any class are at least this many.
    min_train_per_class: int = 3
    #: tail/head ratio of the exponential profile (1.0 = balanced).
    imbalance: float = 0.1
    val_per_class: int = 2
    test_per_class: int = 3
    #: fraction of the videos of each split that show two objects (two labels).
    multi_label_fraction: float = 0.1
    #: frames per video, distractor frames included.
    frames: int = 16
    fps: int = 8
    #: width = height in pixels; must be even (yuv420p).
    size: int = 96
    #: frames without the labelled motion (clutter, other background), split at random
    #: between the start and the end of the clip.
    distractor_frames: int = 3

    def __post_init__(self):
        """Normalise the fields (ints, floats, a tuple of directions) and check every one; all problems
        are reported together in one :class:`DemoSpecError`."""
        directions = self.directions
        if isinstance(directions, str):
            directions = (directions,)
        object.__setattr__(self, "directions", tuple(str(d) for d in directions))
        problems = []

        def check_int(name, low, high=None):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                problems.append(f"{name} must be an integer, got {value!r}")
                return
            object.__setattr__(self, name, int(value))
            if value < low or (high is not None and value > high):
                rng = f">= {low}" if high is None else f"in [{low}, {high}]"
                problems.append(f"{name} must be {rng}, got {value}")

        check_int("num_objects", 1, _MAX_OBJECTS)
        check_int("max_train_per_class", 1)
        check_int("min_train_per_class", 1)
        check_int("val_per_class", 0)
        check_int("test_per_class", 0)
        check_int("frames", 2)
        check_int("fps", 1)
        check_int("size", 32, 4096)
        check_int("distractor_frames", 0)
        for name in ("imbalance", "multi_label_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
                problems.append(f"{name} must be a number, got {value!r}")
            else:
                object.__setattr__(self, name, float(value))
        if not problems:
            if not 0.0 < self.imbalance <= 1.0:
                problems.append(f"imbalance must be in (0, 1], got {self.imbalance}")
            if not 0.0 <= self.multi_label_fraction <= 1.0:
                problems.append(f"multi_label_fraction must be in [0, 1], got {self.multi_label_fraction}")
            if self.min_train_per_class > self.max_train_per_class:
                problems.append(f"min_train_per_class ({self.min_train_per_class}) must not exceed "
                                f"max_train_per_class ({self.max_train_per_class})")
            if self.size % 2:
                problems.append(f"size must be even (yuv420p), got {self.size}")
            if self.frames - self.distractor_frames < 2:
                problems.append(f"frames ({self.frames}) must exceed distractor_frames "
                                f"({self.distractor_frames}) by at least 2 to show motion")
        if not self.directions:
            problems.append("directions must not be empty")
        unknown = [d for d in self.directions if d not in DIRECTIONS]
        if unknown:
            problems.append(f"unknown directions {unknown}; choose from {sorted(DIRECTIONS)}")
        if len(set(self.directions)) != len(self.directions):
            problems.append(f"directions must be distinct, got {list(self.directions)}")
        if problems:
            raise DemoSpecError("invalid DemoSpec: " + "; ".join(problems))

    @property
    def num_classes(self) -> int:
        return self.num_objects * len(self.directions)

    def to_dict(self) -> dict:
        """JSON-ready dict (``directions`` as a list)."""
        out = dataclasses.asdict(self)
        out["directions"] = list(self.directions)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "DemoSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(data) - known)
        if extra:
            raise DemoSpecError(f"unknown DemoSpec fields {extra}; known: {sorted(known)}")
        return cls(**data)


# ----------------------------------------------------------------------------- classes / plan

def _object(k: int) -> tuple[str, str]:
    """(colour, shape) of object k; distinct for k < len(SHAPES) * len(COLOURS)."""
    shape = SHAPES[k % len(SHAPES)]
    colour = list(COLOURS)[(k + k // len(SHAPES)) % len(COLOURS)]
    return colour, shape


def _class_of(spec: DemoSpec, obj: int, direction: int) -> int:
    return obj * len(spec.directions) + direction


def class_names(spec: DemoSpec = DemoSpec()) -> list[str]:
    """Class i = object ``i // len(directions)`` moving in direction ``i % len(directions)``."""
    names = []
    for obj in range(spec.num_objects):
        colour, shape = _object(obj)
        for direction in spec.directions:
            motion = "still" if direction == "still" else f"moving_{direction}"
            names.append(f"{colour}_{shape}_{motion}")
    return names


def train_profile(spec: DemoSpec = DemoSpec()) -> list[int]:
    """Train videos per *rank* (rank 0 = head): ``max(min, int(max * imbalance ** (r / (C - 1))))``."""
    C = spec.num_classes
    if C == 1:
        return [spec.max_train_per_class]
    return [max(spec.min_train_per_class, int(spec.max_train_per_class * spec.imbalance ** (r / (C - 1))))
            for r in range(C)]


def _plan(spec: DemoSpec, seed: int) -> dict:
    """Decide every video's split and labels (no pixels); deterministic in (seed, spec)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    C = spec.num_classes
    rank_of_class = rng.permutation(C)          # class c has rank rank_of_class[c]
    profile = train_profile(spec)
    train_target = np.array([profile[r] for r in rank_of_class], dtype=np.int64)
    per_split_primary = {
        "train": train_target,
        "val": np.full(C, spec.val_per_class, dtype=np.int64),
        "test": np.full(C, spec.test_per_class, dtype=np.int64),
    }
    n_dir = len(spec.directions)
    eligible = np.zeros((C, C), dtype=bool)      # eligible[c, d]: d may be c's second label
    for c in range(C):
        for d in range(C):
            if spec.num_objects > 1:
                eligible[c, d] = (c // n_dir) != (d // n_dir)
            else:
                eligible[c, d] = c != d
    videos = []
    for split in SPLITS:
        primaries = np.repeat(np.arange(C), per_split_primary[split])
        primaries = primaries[rng.permutation(len(primaries))]
        n = len(primaries)
        n_multi = int(np.floor(spec.multi_label_fraction * n + 0.5)) if C > 1 else 0
        multi = set(rng.choice(n, size=n_multi, replace=False).tolist()) if n_multi else set()
        weights = train_target.astype(float) if split == "train" else np.ones(C)
        for i, primary in enumerate(primaries.tolist()):
            labels = [primary]
            if i in multi:
                w = weights * eligible[primary]
                labels.append(int(rng.choice(C, p=w / w.sum())))
            videos.append({"split": split, "labels": labels})
    width = max(5, len(str(len(videos) - 1)))
    for index, video in enumerate(videos):
        video["index"] = index
        video["video_id"] = f"demo_{index:0{width}d}"
    return {"rank_of_class": rank_of_class.tolist(), "train_target": train_target.tolist(), "videos": videos}


# ----------------------------------------------------------------------------- drawing

def _shape_sdf(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (positive inside, in units of the object radius) of a shape of radius ~1."""
    if shape in ("circle",):
        return 1.0 - np.sqrt(u * u + v * v)
    if shape in ("square", "stripes"):
        return 0.85 - np.maximum(np.abs(u), np.abs(v))
    if shape == "triangle":   # equilateral, apex up, circumradius 1.2 (centred on its centroid)
        inradius = 0.6
        d = None
        for phi in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
            e = inradius - (np.cos(phi) * u + np.sin(phi) * v)
            d = e if d is None else np.minimum(d, e)
        return d
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        bar = 0.3
        return np.maximum(np.minimum(bar - au, 1.0 - av), np.minimum(bar - av, 1.0 - au))
    if shape == "ring":
        return 0.3 - np.abs(np.sqrt(u * u + v * v) - 0.7)
    if shape == "diamond":
        return (1.05 - (np.abs(u) + np.abs(v))) / np.sqrt(2.0)
    if shape == "star":
        r = np.sqrt(u * u + v * v)
        theta = np.arctan2(v, u)
        return 0.72 + 0.33 * np.cos(5 * theta + np.pi / 2) - r
    raise ValueError(f"unknown shape {shape!r}")


def _pattern(pattern: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bold brightness pattern of a motion direction (index into PATTERNS), 0.35..1."""
    name = PATTERNS[pattern % len(PATTERNS)]
    if name == "plain":
        return np.ones_like(u)
    phase = {"bands": v, "bars": u, "diagonal": (u + v) / np.sqrt(2), "rings": np.sqrt(u * u + v * v)}.get(name)
    if phase is not None:
        on = np.sin(2 * np.pi * phase / 0.5) > 0
    else:  # checker
        on = (np.sin(2 * np.pi * u / 0.6) > 0) ^ (np.sin(2 * np.pi * v / 0.6) > 0)
    return np.where(on, 1.0, 0.35)


def _texture(shape: str, k: int, pattern: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Brightness factor inside the object (moves with it): the direction's bold pattern times
    a shape texture (stripes for the stripes shape, an object-specific gentle wave otherwise)."""
    if shape == "stripes":
        base = np.where(np.sin(2 * np.pi * u / 0.42) > 0, 1.0, 0.3)
    else:
        angle = 0.7 * k
        freq = 1.2 + 0.35 * (k % 4)
        base = 0.9 + 0.1 * np.sin(2 * np.pi * freq * (np.cos(angle) * u + np.sin(angle) * v))
    return (base * _pattern(pattern, u, v)).astype(np.float32)


def _background(rng: np.random.Generator, t: int, size: int, yy: np.ndarray, xx: np.ndarray,
                saturation: float) -> np.ndarray:
    """(t, size, size, 3) float32: tinted base colour + linear gradient + static and temporal noise."""
    grey = rng.uniform(50, 170)
    base = grey + rng.uniform(-saturation, saturation, size=3)
    angle = rng.uniform(0, 2 * np.pi)
    amp = rng.uniform(5, 25)
    ramp = (np.cos(angle) * (xx - size / 2) + np.sin(angle) * (yy - size / 2)) / (size / 2)
    img = base[None, None, :] + (amp * ramp)[:, :, None]
    img = img + rng.normal(0.0, rng.uniform(2.0, 7.0), size=(size, size, 1)) \
              + rng.normal(0.0, 2.0, size=(size, size, 3))
    frames = np.broadcast_to(img.astype(np.float32), (t, size, size, 3))
    return frames + rng.normal(0.0, 1.5, size=(t, size, size, 1)).astype(np.float32)


def _composite(frames: np.ndarray, yy: np.ndarray, xx: np.ndarray, cx: np.ndarray, cy: np.ndarray,
               radius: float, rotation: float, shape: str, k: int, pattern: int, colour) -> None:
    """Draw one object (anti-aliased, dark outline, texture) centred at (cx[t], cy[t]) into frames."""
    dx = xx[None] - cx[:, None, None]
    dy = yy[None] - cy[:, None, None]
    c, s = np.cos(rotation), np.sin(rotation)
    u = (c * dx + s * dy) / radius
    v = (-s * dx + c * dy) / radius
    sdf_px = _shape_sdf(shape, u, v) * radius
    alpha = np.clip(sdf_px + 0.5, 0.0, 1.0).astype(np.float32)
    shade = _texture(shape, k, pattern, u, v)
    shade = shade * np.where(sdf_px < 1.5, 0.45, 1.0).astype(np.float32)   # outline
    fill = np.asarray(colour, dtype=np.float32)[None, None, None, :] * shade[..., None]
    a = alpha[..., None]
    frames *= 1.0 - a
    frames += a * fill


def _path(rng: np.random.Generator, direction: tuple[int, int], size: int, margin: float,
          m_frames: int) -> tuple[np.ndarray, np.ndarray, list, list]:
    """Monotone path of the object centre over the motion frames; stays fully inside the frame."""
    avail = size - 2 * margin
    frac = rng.uniform(0.6, 0.95)
    start, stop = [], []
    for d in direction:
        if d == 0:
            p = rng.uniform(margin, size - margin)
            start.append(p)
            stop.append(p)
        else:
            disp = frac * avail
            lo = margin if d > 0 else margin + disp
            p0 = rng.uniform(lo, lo + avail - disp)
            start.append(p0)
            stop.append(p0 + d * disp)
    s = np.linspace(0.0, 1.0, m_frames)
    ease = rng.uniform(-0.5, 0.5)                  # speed profile: derivative 1 + ease*(1-2s) > 0
    s = s + ease * s * (1.0 - s)
    cx = start[0] + (stop[0] - start[0]) * s
    cy = start[1] + (stop[1] - start[1]) * s
    return cx.astype(np.float32), cy.astype(np.float32), start, stop


def _clutter(frames: np.ndarray, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, size: int) -> None:
    """Static random boxes and blobs of random colours (no labelled object, no labelled motion)."""
    for _ in range(int(rng.integers(3, 9))):
        colour = rng.uniform(0, 255, size=3).astype(np.float32)
        cx, cy = rng.uniform(0, size, size=2)
        rx, ry = rng.uniform(0.04, 0.15, size=2) * size
        if rng.random() < 0.5:
            mask = (np.abs(xx - cx) <= rx) & (np.abs(yy - cy) <= ry)
        else:
            mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
        frames[:, mask] = colour


def _render(video: dict, spec: DemoSpec, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Pixels (frames, size, size, 3) uint8 and the annotation of one planned video."""
    T, size, D = spec.frames, spec.size, spec.distractor_frames
    M = T - D
    n_before = int(rng.integers(0, D + 1))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    xx += 0.5
    yy += 0.5
    labels = video["labels"]
    motion = _background(rng, M, size, yy, xx, saturation=25.0)
    specs = _object_specs(labels, len(spec.directions), size, rng)
    paths = _object_paths(specs, spec, size, M, rng)
    objects = _draw_objects(motion, yy, xx, specs, paths, spec)
    before, after = (_distractor_segment(n, rng, size, yy, xx) for n in (n_before, D - n_before))
    pieces = [p for p in (before, motion, after) if p is not None]
    pixels = np.clip(np.concatenate(pieces, axis=0), 0, 255).round().astype(np.uint8)
    annotation = {
        "video_id": video["video_id"], "split": video["split"], "labels": [int(x) for x in labels],
        "primary": int(labels[0]), "motion_frames": [n_before, n_before + M], "objects": objects,
    }
    return pixels, annotation


def _object_specs(labels: list, n_dir: int, size: int, rng: np.random.Generator) -> list:
    """(label, object, direction, radius, rotation) per label; objects are smaller in multi-label videos."""
    radius_scale = 0.8 if len(labels) > 1 else 1.0
    specs = []
    for label in labels:
        obj, d = divmod(label, n_dir)
        radius = float(rng.uniform(0.15, 0.2) * size * radius_scale)
        rotation = float(rng.uniform(-0.35, 0.35))
        specs.append((label, obj, d, radius, rotation))
    return specs


def _object_paths(specs: list, spec: DemoSpec, size: int, frames: int, rng: np.random.Generator) -> list:
    """(cx, cy, start, stop) per object; a second object is kept off the first one's path where possible."""
    paths = []
    for j, (_label, _obj, d, radius, _rotation) in enumerate(specs):
        margin = 1.2 * radius + 1.0
        direction = DIRECTIONS[spec.directions[d]]
        best = None
        for _attempt in range(12):
            cand = _path(rng, direction, size, margin, frames)
            if j == 0:
                best = cand
                break
            gap = np.min(np.hypot(cand[0] - paths[0][0], cand[1] - paths[0][1]))
            if best is None or gap > best[-1]:
                best = (*cand, gap)
            if gap > 1.1 * (margin + 1.2 * specs[0][3]):
                break
        paths.append(best[:4])
    return paths


def _draw_objects(motion: np.ndarray, yy, xx, specs: list, paths: list, spec: DemoSpec) -> list:
    """Composite every object onto the motion frames (in place); returns their annotations."""
    objects = []
    for (label, obj, d, radius, rotation), (cx, cy, start, stop) in zip(specs, paths):
        colour_name, shape = _object(obj)
        _composite(motion, yy, xx, cx, cy, radius, rotation, shape, obj, d, COLOURS[colour_name])
        objects.append({
            "label": int(label), "object": colour_name + "_" + shape, "colour": list(COLOURS[colour_name]),
            "shape": shape, "direction": spec.directions[d], "pattern": PATTERNS[d % len(PATTERNS)],
            "radius": round(radius, 3),
            "start_xy": [round(float(p), 3) for p in start], "stop_xy": [round(float(p), 3) for p in stop],
        })
    return objects


def _distractor_segment(n: int, rng: np.random.Generator, size: int, yy, xx):
    """``n`` cluttered background frames without any object (None when n is 0)."""
    if n == 0:
        return None
    seg = np.array(_background(rng, n, size, yy, xx, saturation=60.0))
    _clutter(seg, rng, yy, xx, size)
    return seg


def _encode(path: Path, pixels: np.ndarray, fps: int) -> None:
    """Write frames as H.264 mp4 (yuv420p, constant fps, no B-frames), the same bytes every time: one
    thread and no macroblock-tree rate control (with mb-tree, x264 gave a few of the ~400 demo videos
    different bytes from run to run while other processes were busy; docs/decisions.md)."""
    import av

    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = pixels.shape[2]
        stream.height = pixels.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.codec_context.thread_count = 1
        stream.options = {"crf": "20", "preset": "veryfast",
                          "x264-params": f"bframes=0:keyint={max(1, len(pixels))}:threads=1:mbtree=0"}
        for i, img in enumerate(pixels):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


# ----------------------------------------------------------------------------- files

def _read_json(path: Path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def is_complete(out_dir, seed: int = 0, spec: DemoSpec = DemoSpec()) -> bool:
    """True if ``out_dir`` holds a complete set made by this generator version with this seed and spec."""
    out_dir = Path(out_dir)
    meta = _read_json(out_dir / "demo.json")
    if not isinstance(meta, dict):
        return False
    if (meta.get("generator_version") != GENERATOR_VERSION or meta.get("seed") != seed
            or meta.get("spec") != spec.to_dict()):
        return False
    if not (out_dir / "labels.csv").is_file() or not (out_dir / "class_names.txt").is_file():
        return False
    total = meta.get("counts", {}).get("videos", {}).get("total")
    videos = out_dir / "videos"
    try:
        n_files = sum(1 for p in videos.iterdir() if p.suffix == ".mp4")
    except OSError:
        return False
    return n_files == total


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove_stale_temps(out_dir: Path) -> None:
    """Remove temporary siblings left by generations whose process died."""
    prefix = f".{out_dir.name}.demo-tmp-"
    try:
        entries = list(out_dir.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        try:
            pid = int(entry.name[len(prefix):].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(entry, ignore_errors=True)


def _counts(spec: DemoSpec, plan: dict) -> dict:
    """Videos, multi-label videos, primary and total labels per class, per split (for demo.json)."""
    C = spec.num_classes
    out = {"videos": {}, "multi_label_videos": {}, "primary_per_class": {}, "labels_per_class": {}}
    for split in SPLITS:
        vids = [v for v in plan["videos"] if v["split"] == split]
        primary = np.zeros(C, dtype=np.int64)
        labels = np.zeros(C, dtype=np.int64)
        for v in vids:
            primary[v["labels"][0]] += 1
            for label in v["labels"]:
                labels[label] += 1
        out["videos"][split] = len(vids)
        out["multi_label_videos"][split] = sum(len(v["labels"]) > 1 for v in vids)
        out["primary_per_class"][split] = primary.tolist()
        out["labels_per_class"][split] = labels.tolist()
    out["videos"]["total"] = len(plan["videos"])
    out["multi_label_videos"]["total"] = sum(out["multi_label_videos"][s] for s in SPLITS)
    return out


def _write_set(tmp: Path, seed: int, spec: DemoSpec, progress: bool) -> None:
    """Write the whole set into ``tmp``: every video (seeded per video), labels.csv, class_names.txt,
    annotations.jsonl, and demo.json last."""
    plan = _plan(spec, seed)
    names = class_names(spec)
    (tmp / "videos").mkdir()
    children = np.random.SeedSequence(seed).spawn(len(plan["videos"]) + 1)[1:]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(plan["videos"]), desc="demo videos", unit="video")
    annotations, rows = [], ["video_id,path,labels,split"]
    try:
        for video, child in zip(plan["videos"], children):
            pixels, annotation = _render(video, spec, np.random.default_rng(child))
            rel = f"videos/{video['video_id']}.mp4"
            _encode(tmp / rel, pixels, spec.fps)
            annotations.append(annotation)
            rows.append(f"{video['video_id']},{rel},{';'.join(str(x) for x in video['labels'])},{video['split']}")
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    (tmp / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (tmp / "class_names.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    with open(tmp / "annotations.jsonl", "w", encoding="utf-8") as handle:
        for annotation in annotations:
            handle.write(json.dumps(annotation, sort_keys=True) + "\n")
    n_dir = len(spec.directions)
    classes = [{
        "index": c, "name": names[c], "object": "_".join(_object(c // n_dir)),
        "direction": spec.directions[c % n_dir], "train_rank": plan["rank_of_class"][c],
        "train_target": plan["train_target"][c],
    } for c in range(spec.num_classes)]
    meta = {
        "format": "vltr-demo",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "spec": spec.to_dict(),
        "num_classes": spec.num_classes,
        "video": {"codec": "h264", "pix_fmt": "yuv420p", "fps": spec.fps, "frames": spec.frames,
                  "width": spec.size, "height": spec.size,
                  "motion_frames": spec.frames - spec.distractor_frames},
        "train_profile": train_profile(spec),
        "multi_label_counting": (
            "train_target / primary_per_class count primary labels only (the exponential profile, exact); "
            "secondary labels come on top, drawn proportional to train_target in train and uniformly in "
            "val/test, always of a different object; labels_per_class counts every label"),
        "classes": classes,
        "counts": _counts(spec, plan),
    }
    with open(tmp / "demo.json", "w", encoding="utf-8") as handle:
        json.dump(meta, handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())


def generate_demo(out_dir, seed: int = 0, spec: DemoSpec = DemoSpec(), progress: bool = False) -> Path:
    """Write the demo set into ``out_dir`` (layout: docs/formats.md, "The demo set") and return ``Path(out_dir)``.

    The set is built in a temporary sibling directory and renamed onto ``out_dir`` only when
    complete. If ``out_dir`` already holds a complete set with the same seed and spec (and
    generator version) it is returned untouched. A complete set with another seed/spec is
    replaced; any other non-empty ``out_dir`` is refused (:class:`DemoSpecError`).
    """
    if not isinstance(spec, DemoSpec):
        raise DemoSpecError(f"spec must be a DemoSpec, got {type(spec).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DemoSpecError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    out_dir = Path(out_dir).absolute()
    if is_complete(out_dir, seed, spec):
        return out_dir
    if out_dir.exists():
        if not out_dir.is_dir():
            raise DemoSpecError(f"{out_dir} exists and is not a directory; choose another demo directory")
        if any(out_dir.iterdir()) and not (out_dir / "demo.json").exists():
            raise DemoSpecError(f"{out_dir} is not empty and holds no demo set; choose an empty or new "
                                "directory for the demo videos")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DemoSpecError(f"cannot create {out_dir.parent}: {exc.strerror}") from exc
    _remove_stale_temps(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.demo-tmp-{os.getpid()}-", dir=out_dir.parent))
    try:
        _write_set(tmp, seed, spec, progress)
        publish_dir(tmp)
        old = None
        if out_dir.exists():
            if is_complete(out_dir, seed, spec):      # another process finished first
                return out_dir
            # an empty directory or a set with another seed/spec: move it aside, then replace it
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.demo-tmp-{os.getpid()}-old-",
                                        dir=out_dir.parent))
            os.rename(out_dir, old / "set")
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if is_complete(out_dir, seed, spec):      # lost a race to an identical generation
                return out_dir
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return out_dir
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
