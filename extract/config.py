"""Configuration of the extract stage (validated by pydantic; unknown keys are refused)."""

from __future__ import annotations

import dataclasses
import re
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .backbones import BackboneError, Preprocessing
from .registry import lookup, names_message

DEFAULT_BACKBONE = "efficientnet_lite0"


class ExtractConfig(BaseModel):
    """Settings of `extract`: decoding, sampling, backbone, store and runner."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # input
    source: Literal["videos", "npy"] = Field("videos", description="decode videos, or import per-video .npy features")
    npy_dir: Optional[str] = Field(None, description="folder of <video_id>.npy files (source=npy)")
    npy_dim: Optional[int] = Field(None, ge=1, description="expected feature dim of imported .npy (None: most common)")

    # backbone
    backbone: str = Field(DEFAULT_BACKBONE, description=f"feature extractor: {names_message()}")
    weights: Optional[str] = Field(None, description="path of a local weights file (else package/cache)")
    pretrained: bool = Field(True, description="False = random weights (tests only)")
    download: bool = Field(True, description="allow downloading weights when no local file is found")
    tsm_grouping: Literal["interleaved", "consecutive"] = Field(
        "interleaved", description="how tsm_r50 groups a video's frames into 8-segment clips")

    # sampling and preprocessing
    sampling: Literal["fixed", "fps"] = Field("fixed", description="fixed: num_frames per video; fps: one per 1/fps s")
    num_frames: int = Field(150, ge=1, description="frames per video (sampling=fixed)")
    fps: float = Field(1.0, gt=0, description="frames per second of video (sampling=fps)")
    max_frames: Optional[int] = Field(None, ge=1, description="cap on frames per video (sampling=fps)")
    resize: Optional[int] = Field(None, ge=8, description="short side after resize (antialiased; empty: the "
                                  "backbone's own, 256 for the registered ones)")
    crop: Optional[int] = Field(None, ge=8, description="centre crop size (empty: the backbone's own, 224 for the "
                                "registered ones)")
    decoder: Literal["auto", "decord", "pyav"] = Field("auto", description="auto: decord, PyAV fallback")

    # compute
    batch_size: int = Field(64, ge=1, description="frames per forward pass")
    dtype: Literal["float16", "float32"] = Field("float16", description="stored feature dtype")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    amp: Literal["auto", "bf16", "fp16", "off"] = Field("auto", description="autocast on GPU (auto: bf16 if supported)")
    num_threads: Optional[int] = Field(None, ge=1, description="torch CPU threads (None: the CPUs available: "
                                       "VLTR_CPUS, else CPU affinity and cgroup quota)")

    # runner
    runner: Literal["inprocess", "ray"] = Field("inprocess", description="in-process loop or Ray fan-out")
    ray_address: Optional[str] = Field(None, description="None: local Ray; 'auto' or host:port: join a cluster")
    ray_num_actors: Optional[int] = Field(None, ge=1, description="model actors (None: one per GPU, 1 on CPU)")
    num_decode_workers: Optional[int] = Field(
        None, ge=1, description="decode processes (in-process runner) / decode tasks in flight (Ray); None: "
        "1 on CPU, the available CPUs but one on a GPU, the cluster's free CPUs with Ray")
    decode_timeout_s: float = Field(60.0, gt=0, description="max seconds a decoder may go without progress")

    # outcome and store
    max_failure_fraction: float = Field(0.05, ge=0, le=1, description="stage fails when more videos fail")
    videos_per_shard: int = Field(64, ge=1, description="videos per HDF5 shard file")

    @field_validator("device")
    @classmethod
    def _check_device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", v):
            return v
        raise ValueError(f"device must be one of 'auto', 'cpu', 'cuda', 'cuda:N' (got {v!r})")

    @field_validator("backbone")
    @classmethod
    def _check_backbone(cls, v: str) -> str:
        lookup(v)  # BackboneError (a ValueError) names the registered names
        return v

    @model_validator(mode="before")
    @classmethod
    def _backbone_sizes(cls, data):
        """resize / crop left empty take the backbone's own (registry entry or timm's data config)."""
        if isinstance(data, dict) and (data.get("resize") is None or data.get("crop") is None):
            try:
                pre = lookup(str(data.get("backbone") or DEFAULT_BACKBONE)).preprocessing
            except BackboneError:
                return data  # reported by _check_backbone
            data = {**data, "resize": pre.resize if data.get("resize") is None else data["resize"],
                    "crop": pre.crop if data.get("crop") is None else data["crop"]}
        return data

    @model_validator(mode="after")
    def _check_sizes(self) -> "ExtractConfig":
        pre = self.preprocessing()
        if pre.crop > pre.resize:
            raise ValueError(f"crop ({pre.crop}) must not exceed resize ({pre.resize})")
        return self

    def preprocessing(self) -> Preprocessing:
        """The preprocessing in force: resize / crop from here (else the backbone's), interpolation,
        mean and std from the backbone."""
        pre = lookup(self.backbone).preprocessing
        return dataclasses.replace(pre, resize=self.resize or pre.resize, crop=self.crop or pre.crop)

    def fingerprint_fields(self) -> dict:
        """The settings that change the stored features (used to refuse mixing two configs); recorded
        in every shard's ``config`` attribute."""
        pre = self.preprocessing()
        d = {
            "source": self.source,
            "backbone": self.backbone,
            "pretrained": self.pretrained,
            "sampling": self.sampling,
            "resize": pre.resize,
            "crop": pre.crop,
            "dtype": self.dtype,
        }
        if self.sampling == "fixed":
            d["num_frames"] = self.num_frames
        else:
            d["fps"] = self.fps
            d["max_frames"] = self.max_frames
        d.update(lookup(self.backbone).fingerprint_fields(self))  # e.g. tsm_r50's clip grouping
        return d
