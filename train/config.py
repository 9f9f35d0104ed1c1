"""Configuration of the train stage (validated by pydantic; unknown keys are refused).

Defaults are the published recipe (the VideoLT baseline scripts): Adam 1e-4, steps x0.1 at epochs 30
and 60, 100 epochs, batch 128, gradient clipping 20, 60 random training frames and 150 uniform
evaluation frames, evaluation every 5 epochs.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from train import registry

HEADS = ("lateavg", "aggregators")
# What makes two runs' training comparable: a method section may set its own (MEDC), else train.* applies.
SCHEDULE_KEYS = ("epochs", "lr", "lr_steps", "batch_size")


def parse_method_entry(entry: str) -> tuple:
    """``(method, head)`` of a ``train.method`` entry ``<method>`` or ``<method>+<head>`` (head None without +)."""
    method, plus, head = entry.partition("+")
    return method, (head if plus else None)


def method_entry(method: str, head: str) -> str:
    """The entry (and run folder name) of ``method`` on ``head``: the method, plus the head when not the default."""
    return method if head == "lateavg" else f"{method}+{head}"


class TrainConfig(BaseModel):
    """Settings of `train`: method, head, schedule, data loading, selection protocol."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    method: str | list[str] = Field("baseline", description=f"a method ({registry.names_message()}), or a list "
                                    "run one after another; a list entry `<method>+aggregators` trains that method "
                                    "on the aggregators head")
    head: Literal["lateavg", "aggregators"] = Field("lateavg", description="late-averaged MLP or PSA+NetVLAD")
    hidden: int = Field(2048, ge=1, description="hidden width of the classifier MLP")
    dropout: float = Field(0.5, ge=0, lt=1, description="dropout of the classifier MLP")
    loss: dict[str, dict] = Field(default_factory=dict, description="loss parameter overrides by loss name, "
                                  "e.g. {focal: {gamma: 2}, ldam_drw: {drw_epoch: 20}}")
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-4, gt=0)
    lr_steps: list[int] = Field([30, 60], description="epochs at which the learning rate is multiplied by lr_gamma")
    lr_gamma: float = Field(0.1, gt=0)
    grad_clip: float | None = Field(20.0, gt=0, description="global L2 norm clip; null = none")
    train_frames: int = Field(60, ge=1, description="random frames per training clip (with replacement, sorted)")
    eval_frames: int = Field(150, ge=1, description="uniform frames per evaluation clip")
    eval_every: int = Field(5, ge=1, description="evaluate every N epochs (and after the last)")
    select_on: Literal["val", "test"] = Field(
        "val", description="split for checkpoint selection; test = the papers' protocol (stamped on results)")
    compat: Literal["fixed", "reference"] = Field(
        "fixed", description="reference: keep the published code's quirks that change numbers")
    framestack_ratio: float = Field(0.5, gt=0, le=1, description="fraction of each batch FrameStack mixes")
    cache: Literal["auto", "none", "ram", "gpu"] = Field(
        "auto", description="features in RAM (packed float16) / on the GPU; auto: RAM when it fits")
    num_workers: int = Field(2, ge=0, description="loader processes when features are read from disk "
                             "(at most the CPUs per process: VLTR_CPUS or detected)")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    amp: Literal["auto", "bf16", "fp16", "off"] = Field("auto", description="autocast on GPU")
    # How the runs of a method list x seeds are dispatched: not part of any run's identity (DISPATCH_KEYS).
    parallel: Literal["none", "ray"] = Field("none", description="none: the runs one after another; ray: as "
                                             "Ray tasks at once, one per GPU, else one per CPU slot")
    ray_address: str | None = Field(None, description="train.parallel=ray: empty = a local Ray; 'auto' or "
                                    "host:port = a cluster")
    slots: int | None = Field(None, ge=1, description="train.parallel=ray without GPUs: runs at once (default: "
                              "one per CPU, at most the number of runs); each trains on CPUs / slots threads")
    DISPATCH_KEYS: ClassVar[tuple] = ("parallel", "ray_address", "slots")  # how runs are scheduled, not what

    @field_validator("method")
    @classmethod
    def _known_methods(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("give at least one method")
        for entry in value if isinstance(value, list) else [value]:
            method, head = parse_method_entry(entry)
            spec = registry.METHODS.get(method)
            if spec is None or (head is not None and (head not in HEADS or spec.own_head)):
                raise ValueError(f"unknown method {entry!r}; valid: {registry.names_message()} (in a list also "
                                 f"<method>+aggregators, except for {' and '.join(registry.own_head_names())})")
            if head is not None and not isinstance(value, list):
                raise ValueError(f"{entry!r}: set train.head={head} for a single method")
        return value

    def methods(self) -> list:
        """The methods this config trains, in order."""
        return list(self.method) if isinstance(self.method, list) else [self.method]

    def run_name(self) -> str:
        """Folder name of a single-method run: the method, plus the head when not the default."""
        (method,) = self.methods()
        return method_entry(method, self.head)


class MoveConfig(BaseModel):
    """MOVE (AAAI'23): dynamic frame sampler, PSA + NetVLAD aggregators, extrapolation, calibrated mixing."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    lb: float = Field(3.0, ge=0, description="sigma: the floor of the per-class lower bound of kept frames")
    calib_bias: float = Field(0.5, description="gamma of the calibrated targets clamp(mix * (1 - c~ + gamma), 0, 1)")
    extrapolation: bool = Field(True, description="dynamic extrapolation between the two views")
    interpolation: bool = Field(True, description="calibrated interpolation (mixup with calibrated targets)")
    aggregators: Literal["psa", "netvlad", "both"] = Field("both", description="which aggregators")
    clusters: int = Field(64, ge=1, description="NetVLAD clusters")
    vlad_hidden: int = Field(1024, ge=1, description="NetVLAD output width")
    n_head: int = Field(4, ge=1, description="PSA attention heads")
    psa_dim: int | None = Field(512, ge=1, description="PSA per-head width d_k = d_v (512 as the reference); "
                                "null = feature dim / n_head")


class MeaConfig(BaseModel):
    """MEA (ours): Baseline + Agg's trunk and expert plus tail experts on re-sampled streams, combined at test time."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    lt_method: Literal["baseline", "focal", "ldam_drw", "eql", "cb_loss", "mixup", "framestack"] = Field(
        "baseline", description="the lt expert: this method on the aggregators head (baseline = Baseline + Agg)")
    experts: list[Literal["lt", "bal", "inv"]] = Field(["lt", "bal", "inv"], min_length=1,
                                                       description="lt = Baseline + Agg; bal / inv = classifiers on "
                                                       "class-balanced / inverse-frequency batch streams")
    framestack: bool = Field(True, description="FrameStack on the tail experts' clips (the lt expert's last AP)")
    trunk: Literal["lt", "all"] = Field("all", description="whose loss trains the shared trunk: the lt expert's only "
                                        "(lt expert and trunk = Baseline + Agg) or every expert's")
    inference: Literal["mean", "val", "agreement"] = Field(
        "mean", description="expert weights of the scores: uniform, chosen on the selection split, or chosen without "
        "labels from the agreement of two views of each test video (all three are reported as mix_*)")
    step: float = Field(0.1, gt=0, le=1, description="grid step of the val / agreement expert weights")
    save_views: bool = Field(False, description="write each expert's logits on the two views of every test video "
                             "into predictions.npz (2 x experts x videos x classes float32: ~1.2 GB on VideoLT's test "
                             "set), so evaluate refits the agreement weights on each test profile; on in the lt_bench "
                             "configs")


class MedcConfig(BaseModel):
    """MEDC (TMM'23, our reading): three distribution experts with mean/variance branches.

    Every component is a switch; ``docs/decisions.md`` (MEDC) gives each reading and its evidence.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    trunk: Literal["mlp", "aggregators"] = Field("mlp", description="shared trunk: frame-wise MLP or MOVE's aggregators")
    trunk_dim: int = Field(1024, ge=1, description="H: width of the shared trunk")
    expert_dim: int = Field(512, ge=1, description="d: width of each expert")
    experts: list[Literal["lt", "uni", "inv"]] = Field(["lt", "uni", "inv"], min_length=1,
                                                       description="which experts (single-expert ablations)")
    temporal_attention: bool = Field(True, description="variance branch by temporal attention (else FC+BN)")
    noise: bool = Field(True, description="training z = mu + eps * sigma (false: z = mu; sigma still gets L_sigma)")
    expert_input: Literal["sample", "reweight", "batch_resample"] = Field(
        "sample", description="how the uni/inv experts see their distributions: sample = own batch streams drawn "
        "from the whole training set (class-balanced / inverse); reweight = per-class BCE weights on the shared "
        "batch; batch_resample = rows re-drawn from the current batch (both ablations)")
    cls_reduction: Literal["sum", "mean"] = Field(
        "sum", description="BCE of each expert: sum over classes, mean over videos (sum) or mean over B x C (mean)")
    learnable_weights: bool = Field(False, description="softmax-normalised learnable loss weights (risky)")
    lambda_mu: float = Field(0.1, ge=0, description="weight of the mean (sorting) loss L_mu")
    lambda_cls: float = Field(1.0, ge=0, description="weight of the classification loss L_cls")
    lambda_sigma: float = Field(0.1, ge=0, description="weight of the region loss L_sigma")
    tau: float = Field(0.1, gt=0, description="temperature of the mean (contrastive) loss")
    region_a: float = Field(0.1, ge=0, description="a: region-size target of the rarest class (lt expert)")
    region_b: float = Field(1.0, gt=0, description="b: region-size target of the most frequent class (lt expert)")
    inference: Literal["probabilities", "logits", "learned", "val"] = Field(
        "probabilities", description="combination of the experts: mean of sigmoid outputs (reported as logits of "
        "the mean), mean of logits, learned softmax weights, or weights chosen on the selection split (val)")
    val_step: float = Field(0.1, gt=0, le=1, description="grid step of the inference=val expert weights")
    # The schedule inherits train.* unless set here, so that one comparison trains every method alike; the
    # paper's (120 epochs, Adam 1e-4, no decay, batch 128) is set by the videolt_*/minik200_* configs.
    epochs: int | None = Field(None, ge=1, description="MEDC's own epochs (the paper: 120); null = train.epochs")
    lr: float | None = Field(None, gt=0, description="MEDC's own Adam learning rate (the paper: 1e-4); "
                             "null = train.lr")
    lr_steps: list[int] | None = Field(None, description="MEDC's own step-decay epochs (the paper: [], none); "
                                        "null = train.lr_steps")
    batch_size: int | None = Field(None, ge=1, description="MEDC's own batch size per stream (the paper: 128); "
                                   "null = train.batch_size")

    @model_validator(mode="after")
    def _region_order(self):
        if self.region_a >= self.region_b:
            raise ValueError(f"region_a ({self.region_a}) must be below region_b ({self.region_b})")
        return self
