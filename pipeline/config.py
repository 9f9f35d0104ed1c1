"""Run configuration: YAML files with defaults, ``--set key=value`` overrides, strict validation.

Every section rejects unknown keys; a mistake is reported as one message naming the key and the
valid ones. Relative paths are taken relative to the current directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator
from pydantic_core import PydanticCustomError

from evaluate.config import EvaluateConfig
from evaluate.report import schedule_text
from extract.config import ExtractConfig
from train import registry as method_registry
from train.config import SCHEDULE_KEYS, TrainConfig, parse_method_entry
from train.run_settings import RunSettings
from manifests.datasets import read_text
from manifests.errors import UserError
from pipeline import formats
from pipeline.synthetic_config import SyntheticSpec
from pipeline.yaml_limits import load_yaml

PACKAGE_CONFIGS = Path(__file__).parent / "configs"
DEFAULT_CONFIG = "demo"


class Section(BaseModel):
    """A config section: unknown keys refused, assignments validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatasetConfig(Section):
    """Where the labels (and optionally the videos) are, and in which format."""

    format: str = Field("demo", description=f"one of {formats.names_message()} (pipeline/formats.py)")
    root: str | None = Field(None, description="videolt/minikinetics: folder of label lists; "
                             "csv/kinetics_csv: the CSV file; demo/synthetic: where to generate "
                             "(default <work_dir>/demo-data, <work_dir>/synthetic-data)")
    videos: str | None = Field(None, description="folder of <video_id>.<ext> files (videolt, minikinetics, kinetics_csv)")
    class_names: str | None = Field(None, description="file with one class name per line (csv, kinetics_csv)")
    demo_seed: int = Field(0, description="seed of the generated demo videos")
    synthetic: SyntheticSpec = Field(SyntheticSpec(), description="the synthetic feature benchmark's knobs "
                                     "(format synthetic)")

    @field_validator("format", mode="before")
    @classmethod
    def _known_format(cls, value):
        """A registered format name, refused in pydantic's Literal wording otherwise."""
        if isinstance(value, str) and value in formats.FORMATS:
            return value
        raise PydanticCustomError("literal_error", "Input should be {expected}",
                                  {"expected": formats.names_message()})


def _default_thresholds(which: int) -> str:
    """The default head (0) or tail (1) threshold of each format, for the split.head/tail help."""
    given = {name: f.thresholds[which] for name, f in formats.FORMATS.items()
             if not callable(f.thresholds) and tuple(f.thresholds) != formats.FALLBACK_THRESHOLDS}
    return "; ".join([f"default {formats.FALLBACK_THRESHOLDS[which]}", *(f"{k} {v}" for k, v in given.items())])


class SplitConfig(Section):
    """How the train/val/test membership and class groups are built."""

    profile: Literal["auto", "given", "minikinetics", "exp", "step"] = Field(
        "auto", description="auto: minikinetics for dataset.format=minikinetics, else given")
    imbalance: float = Field(0.01, gt=0, le=1, description="n_min / n_max of the minikinetics/exp/step profiles")
    max_per_class: int | None = Field(None, gt=0, description="n_max of exp/step (default: the largest class)")
    seed: int | None = Field(None, description="seed of exp/step selection (default: the top-level seed)")
    head: int | None = Field(None, ge=0, description=f"head: train count > head ({_default_thresholds(0)})")
    tail: int | None = Field(None, ge=0, description=f"tail: train count <= tail ({_default_thresholds(1)})")


class RunSections(Section):
    """The sections of a run configuration before the methods' own (:data:`Config` adds those)."""

    work_dir: str = "runs/demo"
    seed: int = 2021
    seeds: list[int] | None = Field(None, min_length=1, description="train and evaluate every method once per "
                                    "seed (run folders <method>-seed<N>); data and split keep `seed`")
    dataset: DatasetConfig = DatasetConfig()
    extract: ExtractConfig = ExtractConfig()
    split: SplitConfig = SplitConfig()
    train: TrainConfig = TrainConfig()


def config_model() -> type:
    """The run configuration's model: :class:`RunSections`, one section per method that has its own
    (train/registry.py: ``move``, ``medc``), then ``evaluate``, in the order ``pipeline config`` prints."""
    sections = {name: (model, model()) for name, model in method_registry.section_models().items()}
    return create_model("Config", __base__=RunSections, __module__=__name__, __doc__="The whole run configuration.",
                        **sections, evaluate=(EvaluateConfig, EvaluateConfig()))


Config = config_model()


def resolve_config_file(name_or_path: str) -> Path:
    """A config given as a path, or as a name found in ./configs/ or the package's configs."""
    candidates = [Path(name_or_path)]
    if not name_or_path.endswith((".yaml", ".yml")):
        candidates += [Path("configs") / f"{name_or_path}.yaml", PACKAGE_CONFIGS / f"{name_or_path}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    names = sorted({p.stem for d in (Path("configs"), PACKAGE_CONFIGS) if d.is_dir() for p in d.glob("*.yaml")})
    raise UserError(f"config {name_or_path!r} not found (looked at {', '.join(map(str, candidates))}); "
                    f"give a YAML file or one of: {', '.join(names)}")


def _read_yaml(path: Path) -> dict:
    """A config file's mapping (bounded YAML); one UserError line otherwise."""
    try:
        data = load_yaml(read_text(path), str(path)) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config must be a mapping of sections (dataset:, extract:, ...)")
    return data


def apply_override(data: dict, assignment: str) -> None:
    """Apply one ``dotted.key=value`` override (value parsed as YAML) to a nested dict."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {assignment!r}: expected key=value, e.g. --set split.imbalance=0.1")
    try:
        value = load_yaml(raw, f"--set {key.strip()}") if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"--set {assignment!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def load_config(config: str | None = None, overrides: tuple = (), work_dir: str | None = None) -> Config:
    """Read a config (default: the demo), apply overrides and ``--work-dir``, validate."""
    return read_config(config, overrides, work_dir)[0]


def read_config(config: str | None = None, overrides: tuple = (), work_dir: str | None = None) -> tuple:
    """``(Config, sources)``: the validated config and, per dotted key set by the user, where its value
    came from (``file <path>``, ``--set``, ``--work-dir``); every other value is a product default.

    Without ``--config`` the demo's file applies to the demo only: when ``--set dataset.format=...``
    names another format, the run starts from the product defaults (256/224 px, 150 frames, the
    VideoLT schedule) and its work dir is ``runs/<format>``.
    """
    given = {}
    for assignment in overrides:
        apply_override(given, assignment)
    fmt = given.get("dataset", {}).get("format") if isinstance(given.get("dataset"), dict) else None
    data, sources, label = {}, {}, "product defaults"
    if config is not None or fmt in (None, "demo"):
        path = resolve_config_file(config or DEFAULT_CONFIG)
        data, label = _read_yaml(path), f"config {path}"
        sources = dict.fromkeys(_leaves(data), f"file {path}")
    elif isinstance(fmt, str):
        data["work_dir"] = f"runs/{fmt}"
    for assignment in overrides:
        apply_override(data, assignment)
    sources.update(dict.fromkeys(_leaves(given), "--set"))
    if work_dir is not None:
        data["work_dir"], sources["work_dir"] = work_dir, "--work-dir"
    cfg = validate(data, source=label + (" with --set overrides" if overrides else ""))
    return cfg, sources


def _leaves(data: dict, prefix: str = "") -> list:
    """Dotted keys of the values set in a nested dict (an empty dict is a value)."""
    keys = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            keys += _leaves(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def validate(data: dict, source: str = "config") -> Config:
    """Build a :class:`Config`, turning validation errors into one readable message."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"invalid {source}:\n" + "\n".join(
            "  " + _describe(error) for error in _relevant(exc.errors()))) from None


def _relevant(errors: list) -> list:
    """One error per key, without pydantic's union-branch names in the key (``literal[...]``), and
    only the most specific key of a union (``train.method.1`` rather than ``train.method``)."""
    by_key = {}
    for error in errors:
        loc = tuple(str(p) for p in error["loc"] if "[" not in str(p))
        by_key.setdefault(loc, {**error, "loc": loc})
    return [e for key, e in by_key.items()
            if not any(other[:len(key)] == key and len(other) > len(key) for other in by_key)]


def _describe(error: dict) -> str:
    """One pydantic error as one line naming the key (an unknown key: the valid ones there)."""
    loc = [str(p) for p in error["loc"]]
    key = ".".join(loc)
    if error["type"] == "extra_forbidden":
        model = _model_at(loc[:-1])
        valid = ", ".join(model.model_fields) if model else "?"
        return f"unknown key {key!r}; valid keys here: {valid}"
    given = error.get("input")
    message = error["msg"].removeprefix("Value error, ")  # our validators' own messages need no prefix
    return f"{key}: {message} (got {given!r})"


def _model_at(loc: list):
    """The section model at a dotted location of :data:`Config`, or None where it is a value."""
    model = Config
    for part in loc:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def group_thresholds(cfg: Config) -> tuple:
    """The (head, tail) thresholds in force: split.head/tail, else the dataset format's defaults
    (for the synthetic benchmark: scaled to its profile so the group shares are VideoLT's)."""
    head, tail = formats.lookup(cfg.dataset.format).default_thresholds(cfg)
    return (cfg.split.head if cfg.split.head is not None else head,
            cfg.split.tail if cfg.split.tail is not None else tail)


def split_profile(cfg: Config) -> str:
    """split.profile with ``auto`` resolved."""
    if cfg.split.profile != "auto":
        return cfg.split.profile
    return formats.lookup(cfg.dataset.format).split_profile


def single_runs(cfg: Config) -> list:
    """One config per method of ``train.method`` (a list trains several methods one after another),
    and per seed of ``seeds`` when given (the split keeps the top-level seed)."""
    runs = []
    for entry in cfg.train.methods():
        method, head = parse_method_entry(entry)
        train = cfg.train.model_copy(update={"method": method, "head": head or cfg.train.head})
        one = cfg.model_copy(update={"train": train})
        if cfg.seeds is None:
            runs.append(one)
            continue
        split = cfg.split.model_copy(update={"seed": split_seed(cfg)})
        runs += [one.model_copy(update={"seed": seed, "seeds": [seed], "split": split}) for seed in cfg.seeds]
    return runs


def run_schedule(cfg: Config) -> dict:
    """The schedule one run (a single method) trains with, ``{key: (value, config key)}`` for each of
    ``epochs, lr, lr_steps, batch_size``: the method's own section where it sets the key (``medc.lr``),
    else ``train.<key>``."""
    method = cfg.train.method
    own = getattr(cfg, method) if method_registry.lookup(method).config else None
    schedule = {}
    for key in SCHEDULE_KEYS:
        value = getattr(own, key, None)
        schedule[key] = (value, f"{method}.{key}") if value is not None else (getattr(cfg.train, key), f"train.{key}")
    return schedule


def run_settings(cfg: Config) -> RunSettings:
    """The settings of one run (a config of :func:`single_runs`), resolved once: train.* with the run's
    schedule (:func:`run_schedule`), the sections the method and head read (train/registry.py), the seed."""
    train = cfg.train.model_copy(update={key: value for key, (value, _) in run_schedule(cfg).items()})
    sections = {name: getattr(cfg, name) for name in method_registry.run_sections(train.method, train.head)}
    return RunSettings(train, sections, cfg.seed)


def schedule_report(cfg: Config, sources: dict) -> list:
    """Lines for ``pipeline config``: the effective schedule of each run (runs that share one on one line),
    every value with the config key it comes from and where that key was set (default, file, --set)."""
    groups = {}
    for run in single_runs(cfg):
        parts = tuple(f"{key} {json.dumps(value)} ({where}: {sources.get(where, 'default')})"
                      for key, (value, where) in run_schedule(run).items())
        groups.setdefault(parts, []).append(run.train.run_name())
    return [f"{', '.join(dict.fromkeys(names))}: {', '.join(parts)}" for parts, names in groups.items()]


def schedule_mismatch(cfg: Config) -> str | None:
    """One warning when the runs of ``cfg`` train with different schedules, naming them; else None."""
    by_schedule = {}
    for run in single_runs(cfg):
        text = schedule_text({key: value for key, (value, _) in run_schedule(run).items()})
        by_schedule.setdefault(text, []).append(run.train.run_name())
    if len(by_schedule) < 2:
        return None
    groups = "; ".join(f"{', '.join(dict.fromkeys(names))}: {text}" for text, names in by_schedule.items())
    return (f"these runs train with different schedules, so their comparison is not like for like -- {groups}. "
            "Set the method sections' epochs/lr/lr_steps/batch_size to null to train every method on train.*")


def split_seed(cfg: Config) -> int:
    """The seed of the exp/step split selection: split.seed, else the top-level seed."""
    return cfg.split.seed if cfg.split.seed is not None else cfg.seed


def run_name(cfg: Config) -> str:
    """Folder of a single run under train/ and evaluate/: method, head, and the seed when ``seeds`` is set."""
    return cfg.train.run_name() + (f"-seed{cfg.seed}" if cfg.seeds else "")


def to_yaml(cfg: Config, sources: dict | None = None) -> str:
    """The resolved config as YAML (what ``python -m pipeline config`` prints); with ``sources``
    (from :func:`read_config`) every value carries a comment saying where it came from."""
    data = cfg.model_dump(mode="json")
    if sources is None:
        return yaml.safe_dump(data, sort_keys=False)
    lines = ["# where each value comes from: default (the product's), file <path>, --set, --work-dir"]
    _annotate(data, sources, "", 0, lines)
    return "\n".join(lines) + "\n"


def _annotate(node: dict, sources: dict, prefix: str, indent: int, lines: list) -> None:
    """Append ``node`` as YAML lines, each value with a comment naming where it came from."""
    for key, value in node.items():
        dotted = prefix + key
        if isinstance(value, dict) and value:
            lines.append(" " * indent + f"{key}:")
            _annotate(value, sources, dotted + ".", indent + 2, lines)
            continue
        text = yaml.safe_dump({key: value}, default_flow_style=True, width=1 << 20).strip()[1:-1]
        lines.append(" " * indent + f"{text}  # {sources.get(dotted, 'default')}")


def ineffective_settings(cfg: Config, sources: dict) -> list:
    """Warnings for keys the user set that have no effect in the chosen mode."""
    given = set(sources)
    rules = [
        (split_profile(cfg) == "given", ("split.imbalance", "split.max_per_class"),
         "the dataset's own train split is kept with split.profile=given; set split.profile=exp, step or "
         "minikinetics to re-balance it"),
        (split_profile(cfg) == "minikinetics", ("split.max_per_class",),
         "the minikinetics profile fixes n_max itself"),
        (cfg.dataset.format != "synthetic", tuple(k for k in given if k.startswith("dataset.synthetic.")),
         "it only shapes dataset.format=synthetic"),
        (cfg.dataset.format != "demo", ("dataset.demo_seed",), "it only seeds dataset.format=demo"),
        (cfg.dataset.format == "synthetic", ("extract.source", "extract.npy_dir", "extract.npy_dim"),
         "the synthetic benchmark's features are always imported from its generated .npy files"),
        (cfg.dataset.format != "synthetic" and cfg.extract.source == "videos", ("extract.npy_dir", "extract.npy_dim"),
         "they only apply to extract.source=npy"),
    ]
    return [f"{key} ({sources[key]}) has no effect: {why}"
            for applies, keys, why in rules if applies for key in keys if key in given]

