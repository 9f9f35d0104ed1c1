"""``python -m pipeline bench gpu``: the acceptance check for a machine with a GPU, one verdict per line.

Checks ``extract``, ``scores``, ``epoch``, ``ddp`` and ``ray``, each through the product's own code on
the device (what each runs and its verdict: docs/benchmarks.md, "GPU acceptance check"). Without a
GPU one line says so and every check runs at a tiny size on the CPU (a dry run of the same code
paths, no speed verdicts). Timings are bracketed by ``torch.cuda.synchronize``; memory is
``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import json
import socket
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

EXTRACT_TARGET = 0.9  # extract-path frames/s over the bare bf16 forward
VIDEOLT_TRAIN = 179_334  # VideoLT's training videos (one epoch's projected steps)
CHECKS = ("extract", "scores", "epoch", "ddp", "ray")
RAY_TOLERANCE = {"cuda": 5e-2, "cpu": 0.0}  # max |Ray - in-process| / max |feature|: cudnn may pick other bf16 kernels
DDP_TOLERANCE = 1e-6  # relative weight difference, one epoch with and without a world-size-1 group


@dataclass(frozen=True)
class CheckSize:
    """The sizes of one run of the check (``H100`` or the CPU ``DRY`` run)."""

    image: int  # extraction frames: image x image RGB
    extract_videos: int
    frames_per_video: int
    extract_batch: int  # frames per forward pass (extract.batch_size)
    rounds: int  # timed rounds of each extraction way (the best counts)
    train_videos: int  # the epoch's training videos
    score_videos: int
    stored_frames: int  # frames stored per video (clips draw train.train_frames of them)
    dim: int
    classes: int
    ddp_videos: int
    ray_videos: int
    ray_frames: int
    ray_pixels: tuple  # (width, height) of the generated clips
    ray_crop: int | None  # None: the backbone's own resize / crop
    train: dict = field(default_factory=dict)  # TrainConfig overrides (none: the VideoLT recipe)
    move: dict = field(default_factory=dict)  # MoveConfig overrides


H100 = CheckSize(image=224, extract_videos=16, frames_per_video=256, extract_batch=64, rounds=3,
                 train_videos=128 * 48, score_videos=1024, stored_frames=8, dim=2048, classes=1004,
                 ddp_videos=1024, ray_videos=4, ray_frames=32, ray_pixels=(320, 240), ray_crop=None)
DRY = CheckSize(image=32, extract_videos=2, frames_per_video=8, extract_batch=4, rounds=1, train_videos=48,
                score_videos=24, stored_frames=4, dim=32, classes=10, ddp_videos=32, ray_videos=2, ray_frames=4,
                ray_pixels=(64, 48), ray_crop=32,
                train={"batch_size": 16, "hidden": 32, "train_frames": 6, "eval_frames": 6, "num_workers": 0},
                move={"clusters": 4, "vlad_hidden": 16, "psa_dim": 8, "n_head": 2})


@dataclass
class Verdict:
    """One check's outcome: PASS / FAIL, or DRY (ran on the CPU, no verdict on speed)."""

    check: str
    status: str
    detail: str
    numbers: dict = field(default_factory=dict)

    def line(self) -> str:
        return f"{self.status:<4}  {self.check:<7} {self.detail}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, work) -> float:
    """Seconds of ``work()``, the device synchronised before and after."""
    _sync(device)
    started = time.perf_counter()
    work()
    _sync(device)
    return time.perf_counter() - started


def _judge(device: torch.device, ok: bool) -> str:
    return "DRY" if device.type != "cuda" and ok else ("PASS" if ok else "FAIL")


# ---------------------------------------------------------------------------------------------- data
@dataclass
class Features:
    """A synthetic VideoLT-shaped feature store and its splits (positions into one bank)."""

    root: Path
    ids: list
    labels: list
    counts: np.ndarray
    train: np.ndarray
    score: np.ndarray
    ddp: np.ndarray


def write_features(root: Path, size: CheckSize, seed: int = 0) -> Features:
    """Random float16 features of ``train + score`` videos in one shard, one label each from a
    long-tailed class distribution (every class at least once)."""
    from extract.store import ShardWriter

    rng = np.random.default_rng(seed)
    n = size.train_videos + size.score_videos
    weights = np.exp(-np.linspace(0, np.log(43.0), size.classes))  # VideoLT's ~43x imbalance
    drawn = rng.choice(size.classes, n - size.classes, p=weights / weights.sum())
    labels = np.concatenate([np.arange(size.classes), drawn])
    rng.shuffle(labels)
    ids = [f"v{i:06d}" for i in range(n)]
    writer = ShardWriter(root, "shard-00000.h5", size.dim, "float16")
    for video_id in ids:
        writer.add(video_id, rng.standard_normal((size.stored_frames, size.dim), dtype=np.float32), {})
    writer.close()
    train = np.arange(size.train_videos)
    counts = np.bincount(labels[train], minlength=size.classes)
    return Features(root, ids, [[int(c)] for c in labels], np.maximum(counts, 1), train,
                    np.arange(size.train_videos, n), train[:size.ddp_videos])


def _train_config(size: CheckSize, method: str, device: torch.device):
    from train.config import TrainConfig

    return TrainConfig(method=method, epochs=2, lr_steps=[], device="auto" if device.type == "cuda" else "cpu",
                       **size.train)


def _trainer(features: Features, size: CheckSize, method: str, device: torch.device, positions, run_dir: Path):
    """A :class:`Trainer` of ``method`` on ``positions`` of the store, weights seeded as the train stage does."""
    from train import methods
    from train.config import MoveConfig
    from train.data import FeatureBank
    from train.loop import SplitData, Trainer, derived_seed

    cfg = _train_config(size, method, device)
    bank = FeatureBank(features.root, features.ids, cache=cfg.cache)
    torch.manual_seed(derived_seed(0))
    recipe = methods.build(method, cfg, size.dim, size.classes, features.counts, {"move": MoveConfig(**size.move)})
    split = SplitData(positions, [features.labels[p] for p in positions], [features.ids[p] for p in positions])
    return Trainer(recipe, cfg, bank, {"train": split}, features.counts, 0, run_dir, {}, (1, 0), progress=False)


# ---------------------------------------------------------------------------------------------- checks
def check_extract(device: torch.device, size: CheckSize, work: Path) -> Verdict:
    """Extract-path frames/s over the bare bf16 forward of the same ResNet-50."""
    from extract.encoder import FrameEncoder

    encoder = FrameEncoder("resnet50", pretrained=False, download=False, device=str(device),
                           amp="bf16" if device.type == "cuda" else "off", batch_size=size.extract_batch)
    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 256, (size.frames_per_video, size.image, size.image, 3), dtype=np.uint8)
              for _ in range(size.extract_videos)]
    frames = size.extract_videos * size.frames_per_video
    x = torch.randn(size.extract_batch, 3, size.image, size.image, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    batches = frames // size.extract_batch

    @torch.inference_mode()
    def bare():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            for _ in range(batches):
                encoder.model(x)

    def ours():
        for video in videos:
            encoder.embed_video(video)

    ours()  # warm-up: cudnn's algorithm search, the allocators
    bare()
    ours_s = min(_timed(device, ours) for _ in range(size.rounds))
    bare_s = min(_timed(device, bare) for _ in range(size.rounds))
    ours_fps, bare_fps = frames / ours_s, batches * size.extract_batch / bare_s
    ratio = ours_fps / bare_fps
    numbers = {"extract_fps": round(ours_fps, 1), "bare_fps": round(bare_fps, 1), "ratio": round(ratio, 3),
               "batch": size.extract_batch, "frames": frames, "precision": encoder.precision}
    detail = (f"ResNet-50 {encoder.precision}, batch {size.extract_batch}: extract path {ours_fps:.0f} frames/s, "
              f"bare forward {bare_fps:.0f} frames/s, ratio {ratio:.3f} (target >= {EXTRACT_TARGET})")
    return Verdict("extract", _judge(device, device.type != "cuda" or ratio >= EXTRACT_TARGET), detail, numbers)


def _rank_changes(a: np.ndarray, b: np.ndarray) -> float:
    """Share of classes (columns) whose ranking of the videos differs between ``a`` and ``b``."""
    return float(np.mean(np.any(np.argsort(a, axis=0, kind="stable") != np.argsort(b, axis=0, kind="stable"), axis=0)))


@torch.inference_mode()
def _bf16_forward(model, bank, data, cfg, device) -> np.ndarray:
    """Logits of a plain bf16-autocast forward (what predict avoids), as float32."""
    from train.loop import eval_frames

    out = []
    for start in range(0, len(data.positions), cfg.batch_size):
        positions = data.positions[start:start + cfg.batch_size]
        x = bank.clips(positions, eval_frames(bank.lengths[positions], cfg.eval_frames)).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out.append(model(x).float().cpu().numpy())
    return np.concatenate(out)


def check_scores(device: torch.device, size: CheckSize, work: Path, features: Features) -> Verdict:
    """The pipeline's scores under bf16 autocast rank the videos exactly as float32 does."""
    from train.loop import SplitData, predict

    parts, numbers, equal = [], {}, True
    for method in ("baseline", "move"):
        trainer = _trainer(features, size, method, device, features.train, work / method)
        data = SplitData(features.score, [features.labels[p] for p in features.score], [])
        fp32 = predict(trainer.model, trainer.bank, data, trainer.cfg, device)
        with torch.autocast(device.type, dtype=torch.bfloat16):  # as around a train.amp=bf16 step
            scored = predict(trainer.model, trainer.bank, data, trainer.cfg, device)
        raw = _bf16_forward(trainer.model, trainer.bank, data, trainer.cfg, device)
        same = _rank_changes(fp32, scored) == 0.0
        equal &= same
        numbers[method] = {"max_diff": float(np.abs(scored - fp32).max()), "ranking_equal": same,
                           "raw_bf16_max_diff": float(np.abs(raw - fp32).max()),
                           "raw_bf16_classes_reranked": round(_rank_changes(fp32, raw), 4)}
        parts.append(f"{method} max diff {numbers[method]['max_diff']:.2g} (ranking {'equal' if same else 'DIFFERS'}; "
                     f"a plain bf16 forward: max diff {numbers[method]['raw_bf16_max_diff']:.2g}, "
                     f"{numbers[method]['raw_bf16_classes_reranked']:.0%} of classes re-ranked)")
        del trainer
    detail = f"scores under bf16 autocast vs float32 on {len(features.score)} videos: " + "; ".join(parts)
    return Verdict("scores", _judge(device, equal), detail, numbers)


def _epoch(features: Features, size: CheckSize, method: str, device: torch.device, work: Path) -> dict:
    """A warm-up epoch, then one timed epoch of ``method``: seconds, steps, loss, peak GPU memory."""
    from train.data import batch_spans

    trainer = _trainer(features, size, method, device, features.train, work / method)
    trainer.train_epoch(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = {}
    seconds = _timed(device, lambda: result.update(loss=trainer.train_epoch(1)[0]))
    steps = len(batch_spans(len(features.train), trainer.cfg.batch_size))
    videolt_steps = len(batch_spans(VIDEOLT_TRAIN, trainer.cfg.batch_size))
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    out = {"epoch_s": round(seconds, 3), "steps": steps, "step_s": round(seconds / steps, 4), "loss": result["loss"],
           "videolt_epoch_s": round(seconds / steps * videolt_steps, 1), "peak_gib": peak and round(peak, 2),
           "cache": trainer.bank.cache, "amp": trainer.cfg.amp}
    del trainer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def check_epochs(device: torch.device, size: CheckSize, work: Path, features: Features) -> Verdict:
    """Time per epoch and peak GPU memory of baseline and MOVE."""
    numbers, parts = {}, []
    for method in ("baseline", "move"):
        r = numbers[method] = _epoch(features, size, method, device, work)
        memory = f"peak GPU memory {r['peak_gib']:.2f} GiB" if r["peak_gib"] is not None else "no GPU memory (CPU)"
        parts.append(f"{method} {r['epoch_s']:.2f} s for {r['steps']} steps ({r['step_s'] * 1000:.1f} ms/step; "
                     f"VideoLT epoch ~{r['videolt_epoch_s']:.0f} s), {memory}")
    finite = all(np.isfinite(r["loss"]) for r in numbers.values())
    detail = (f"one epoch on {len(features.train)} VideoLT-shaped videos ({size.dim}-d, {size.classes} classes): "
              + "; ".join(parts) + ("" if finite else "; the loss is not finite"))
    return Verdict("epoch", _judge(device, finite), detail, numbers)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _world_of_one(device: torch.device):
    """A process group of this process alone: NCCL on a GPU, gloo on the CPU."""
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        yield dist
    finally:
        dist.destroy_process_group()


def _trained_weights(features, size, device, work: Path) -> torch.Tensor:
    trainer = _trainer(features, size, "baseline", device, features.ddp, work)
    trainer.train_epoch(0)
    return torch.cat([p.detach().reshape(-1).float().cpu() for p in trainer.model.parameters()])


def _buffers_kept(device: torch.device) -> bool:
    """BatchNorm statistics averaged over a world of one process are unchanged."""
    from train import distributed

    bn = torch.nn.BatchNorm1d(4).to(device)
    bn(torch.randn(8, 4, device=device))
    before = bn.running_var.clone()
    distributed.average_buffers(bn)
    return bool(torch.equal(before, bn.running_var))


def check_ddp(device: torch.device, size: CheckSize, work: Path, features: Features) -> Verdict:
    """A world-size-1 process group: collectives, the trainer's all-reduce path, a DDP step."""
    from train import distributed

    plain = _trained_weights(features, size, device, work / "plain")
    with _world_of_one(device) as dist:
        backend = dist.get_backend()
        total = torch.ones(3, device=device)
        dist.all_reduce(total)
        gathered = distributed.gather_rows(torch.arange(4, device=device))
        buffers = _buffers_kept(device)
        dist.barrier()
        grouped = _trained_weights(features, size, device, work / "grouped")
        trainer = _trainer(features, size, "baseline", device, features.ddp, work / "ddp")
        model = torch.nn.parallel.DistributedDataParallel(
            trainer.model, device_ids=[torch.cuda.current_device()] if device.type == "cuda" else None)
        x, y, *_ = trainer.epoch_batches(0)[0]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x.to(device)), y.to(device))
        loss.backward()
        loss = loss.item()
        del model, trainer  # before the group goes
    collectives = bool(total.eq(1).all()) and gathered.cpu().tolist() == [0, 1, 2, 3] and buffers
    diff = float((grouped - plain).abs().max() / plain.abs().max())
    ok = collectives and diff <= DDP_TOLERANCE and np.isfinite(loss)
    numbers = {"backend": backend, "collectives": collectives, "epoch_relative_diff": diff, "ddp_loss": loss}
    detail = (f"{backend} world size 1: all_reduce/all_gather/BatchNorm averaging/barrier "
              f"{'ok' if collectives else 'WRONG'}; one epoch through the trainer's all-reduce path vs none: "
              f"relative weight diff {diff:.2g} (<= {DDP_TOLERANCE:g}); DistributedDataParallel step loss {loss:.4f}")
    return Verdict("ddp", _judge(device, ok), detail, numbers)


class _Sink:
    """Features of finished videos in memory (the runners' ``ok`` / ``fail`` interface)."""

    def __init__(self):
        self.features, self.errors = {}, {}

    def ok(self, video_id: str, feats: np.ndarray, meta: dict) -> None:
        self.features[video_id] = np.asarray(feats, dtype=np.float32)

    def fail(self, video_id: str, reason: str, meta: dict | None = None) -> None:
        self.errors[video_id] = reason


def _ray_and_inprocess(cfg, todo: list) -> tuple:
    """``(actor description, Ray sink, in-process sink)`` of one extraction of ``todo`` by each runner."""
    from extract.encoder import encoder_from_config
    from extract.inprocess import run_inprocess
    from extract.ray_runner import RayRunner

    runner, ray_sink, local_sink = RayRunner(cfg), _Sink(), _Sink()
    try:
        described = runner.start()
        runner.run(todo, ray_sink, threading.Event())
    finally:
        runner.shutdown()
    run_inprocess(cfg, encoder_from_config(cfg), todo, local_sink, threading.Event())
    return described, ray_sink, local_sink


def _random_resnet50(path: Path) -> str:
    """A file of seeded random ResNet-50 weights, so that every process loads the same model."""
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    return str(path)


def check_ray(device: torch.device, size: CheckSize, work: Path) -> Verdict:
    """The Ray runner's model actor on the GPU gives the in-process runner's features."""
    from pipeline.bench.extract_bench import make_bench_video
    from extract.config import ExtractConfig

    todo = [(f"clip{i}", make_bench_video(work / f"clip{i}.mp4", *size.ray_pixels, seconds=2, seed=i))
            for i in range(size.ray_videos)]
    crop = {} if size.ray_crop is None else {"resize": size.ray_crop + 4, "crop": size.ray_crop}
    cfg = ExtractConfig(backbone="resnet50", weights=_random_resnet50(work / "resnet50.pt"), download=False,
                        runner="ray", num_frames=size.ray_frames, device="auto" if device.type == "cuda" else "cpu",
                        **crop)
    described, ray_sink, local_sink = _ray_and_inprocess(cfg, todo)
    done = sorted(set(ray_sink.features) & set(local_sink.features))
    scale = max((float(np.abs(local_sink.features[v]).max()) for v in done), default=1.0) or 1.0
    diff = max((float(np.abs(ray_sink.features[v] - local_sink.features[v]).max()) for v in done), default=np.inf)
    on_device = described["device"].startswith(device.type)
    ok = len(done) == len(todo) and on_device and diff / scale <= RAY_TOLERANCE[device.type]
    numbers = {"actor_device": described["device"], "precision": described["precision"], "videos": len(done),
               "relative_diff": diff / scale, "errors": {**ray_sink.errors, **local_sink.errors}}
    detail = (f"model actor on {described['device']} ({described['precision']}), {len(done)}/{len(todo)} videos by "
              f"both runners, max |Ray - in-process| {diff / scale:.2g} of the largest feature "
              f"(<= {RAY_TOLERANCE[device.type]:g})")
    return Verdict("ray", _judge(device, ok), detail, numbers)


# ---------------------------------------------------------------------------------------------- driver
def device_line(device: torch.device) -> str:
    """One line on what runs the check."""
    if device.type != "cuda":
        return (f"no CUDA GPU visible (torch {torch.__version__}): dry run of every check on the CPU at a tiny "
                "size; no verdicts on speed")
    props = torch.cuda.get_device_properties(device)
    return (f"GPU {props.name} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, CUDA "
            f"{torch.version.cuda}, bf16 {'supported' if torch.cuda.is_bf16_supported() else 'NOT supported'}")


def run_gpu_check(device: torch.device | None = None, size: CheckSize | None = None, emit=print,
                  checks: tuple = CHECKS) -> list:
    """Run ``checks`` (default: all; ``emit`` gets each line as it is decided); returns the verdicts. A
    check that raises is a FAIL with its error, and the others still run."""
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    size = size or (H100 if device.type == "cuda" else DRY)
    emit(device_line(device))
    verdicts = []
    with tempfile.TemporaryDirectory(prefix="vltr-gpu-check-") as tmp:
        work = Path(tmp)
        (work / "features").mkdir()
        features = write_features(work / "features", size)
        run = {"extract": lambda: check_extract(device, size, work),
               "scores": lambda: check_scores(device, size, work / "scores", features),
               "epoch": lambda: check_epochs(device, size, work / "epoch", features),
               "ddp": lambda: check_ddp(device, size, work / "ddp", features),
               "ray": lambda: check_ray(device, size, work)}
        for name in checks:
            started = time.perf_counter()
            try:
                verdict = run[name]()
            except Exception as exc:  # one broken check must not hide the others
                verdict = Verdict(name, "FAIL", f"{type(exc).__name__}: {exc}")
            verdict.numbers["seconds"] = round(time.perf_counter() - started, 1)
            emit(verdict.line())
            verdicts.append(verdict)
    return verdicts


def main() -> int:
    """``bench gpu``: the verdict lines, then one JSON line; exit 1 when a check failed."""
    started = time.perf_counter()
    verdicts = run_gpu_check(emit=lambda line: print(line, flush=True))
    print(json.dumps({"bench": "gpu", "seconds": round(time.perf_counter() - started, 1),
                      "checks": [asdict(v) for v in verdicts]}), flush=True)
    return 1 if any(v.status == "FAIL" for v in verdicts) else 0
