"""Typed run configuration: YAML files -> validated objects, dotted command-line overrides, saving.

A config has the seed's six sections (``data``, ``model``, ``diffusion``, ``training``, ``output``,
``logging``). Every key is checked: an unknown or misspelled key is a :class:`ConfigError` naming the key and
its closest valid spellings, and a bad value names the key and what was expected.
"""

from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from prdit.diffusion import create_diffusion
from prdit.errors import ConfigError
from prdit.hu import DEFAULT_HU_WINDOW
from prdit.io import atomic_write_text
from prdit.models.registry import parse_model_name


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PhantomConfig(Section):
    """How to generate the phantom dataset when ``data.dataset`` is ``phantom`` and ``data.root`` is empty."""

    num: int = Field(200, ge=2, description="number of phantom volumes to generate")
    seed: int = Field(0, description="seed of the first phantom; volume i uses seed + i")
    spacing_mm: float | None = Field(None, gt=0, description="voxel spacing; default covers the whole chest")
    workers: int = Field(2, ge=1)
    dense_bone: bool = Field(False, description="cortical bone 1200-1900 HU (real CT) instead of 700-1000 HU")


class DataConfig(Section):
    dataset: Literal["phantom", "lidc", "rad", "folder"] = "phantom"
    root: str = Field("data/phantom", description="folder of volumes, or a list file (one path a line)")
    train_list: str | None = Field(None, description="list file of training volumes (default: ROOT/train.txt if present)")
    val_list: str | None = Field(None, description="list file of validation volumes (default: ROOT/val.txt if present)")
    image_size: int = Field(128, ge=8, description="edge of the cubic training volume after pooling")
    intensity: Literal["hu", "paper"] = Field(
        "hu", description="hu: fixed HU window -> [-1, 1]; paper: the official per-volume min-max (before pooling)"
    )
    hu_window: tuple[float, float] = Field(
        DEFAULT_HU_WINDOW, description="hu: the HU that map to -1 and 1 (default keeps cortical bone up to 2000 HU)"
    )
    paper_percentile: float = Field(99.9, gt=50, le=100, description="paper: upper clip (LIDC-IDRI 99.9, RAD-ChestCT 99.5)")
    paper_scale: Literal["signed", "unit"] = Field(
        "signed", description="paper: signed = 2x - 1 (official LIDC loader, the paper's text); unit = [0, 1] (official RAD loader)"
    )
    pool: int = Field(1, ge=1, description="integer average-pool factor applied when loading (256^3 -> 128^3: 2)")
    labels: str | None = Field(None, description="folder of label maps named like the volumes (default: ROOT/labels), for conditional models")
    flip_axes: list[int] = Field(default_factory=list, description="array axes (0=z, 1=y, 2=x) randomly flipped in training")
    cache: bool = Field(True, description="keep loaded volumes in memory")
    num_workers: int = Field(0, ge=0)
    phantom: PhantomConfig = Field(default_factory=PhantomConfig)

    @field_validator("hu_window")
    @classmethod
    def _window_increasing(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not value[1] > value[0]:
            raise ValueError(f"needs low < high, got {list(value)}")
        return value

    @field_validator("flip_axes")
    @classmethod
    def _valid_axes(cls, value: list[int]) -> list[int]:
        if any(axis not in (0, 1, 2) for axis in value):
            raise ValueError(f"axes must be 0, 1 or 2, got {value}")
        return value


class ConditionConfig(Section):
    """What a conditional model sees besides the noisy volume (docs/conditional.md); empty lists: unconditional."""

    labels: list[str] = Field(default_factory=list, description="label names (of the data's labels.json), one-hot channels in every token")
    attributes: list[str] = Field(
        default_factory=list, description="scalar attributes embedded into adaLN (prdit.data.conditions.ATTRIBUTES), e.g. body_diameter_mm"
    )
    dropout: float = Field(0.1, ge=0, lt=1, description="probability of dropping the condition (and each part) in training")

    @field_validator("labels", "attributes")
    @classmethod
    def _distinct(cls, names: list[str]) -> list[str]:
        if len(set(names)) != len(names):
            raise ValueError(f"names must be distinct, got {names}")
        return names

    @property
    def enabled(self) -> bool:
        return bool(self.labels or self.attributes)


class ModelConfig(Section):
    name: str = Field("PRDiT-B/12/0", description="PRDiT-{T,XS,S,B,L,XL}/{patch}/{depth}; depth 0 is stage 1")
    stride: int | None = Field(None, ge=1, description="output block edge S (default 8; required for small patches)")
    in_channels: int = Field(1, ge=1)
    pretrained_path: str | None = Field(None, description="stage-1 (or lower-resolution) checkpoint to start from")
    pretrained_weights: Literal["ema", "model"] = Field(
        "ema", description="which stage-1 weights stage 2 loads: ema (smoothed) or model (raw, the paper's code)"
    )
    init_gain: float = Field(0.1, gt=0, description="xavier gain of the global DiT's linear layers (paper: 0.1)")
    freeze_local: bool = Field(
        True, description="stage 2 freezes the loaded local denoiser; false fine-tunes it too (e.g. a conditional model's local path)"
    )
    condition: ConditionConfig = Field(default_factory=ConditionConfig)

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        try:
            parse_model_name(name)
        except ConfigError as error:
            raise ValueError(str(error)) from None
        return name


class DiffusionConfig(Section):
    """Checked by the process it names (prdit.diffusion), which owns its settings and its samplers."""

    process: str = Field("ian", description="ian (the paper's image-and-noise process) or flow (rectified flow)")
    timesteps: int = Field(1000, description="ian: number of training timesteps T")
    noise_std: float = Field(0.5, description="ian: sigma of the noise")
    timestep_sampling: str = Field("uniform", description="uniform or stratified")
    sampler: str | None = Field(None, description="default sampler for previews and sampling (None: the process's default)")
    sample_steps: int | None = Field(None, description="default number of sampling steps (None: the sampler's default)")

    @model_validator(mode="after")
    def _process_accepts(self) -> DiffusionConfig:
        try:
            create_diffusion(self)
        except ConfigError as error:
            raise ValueError(str(error)) from None
        return self


class TrainingConfig(Section):
    global_batch_size: int = Field(64, ge=1)
    micro_batch_size: int | None = Field(None, ge=1, description="per-process batch per forward; the rest is accumulation")
    lr: float = Field(1e-4, gt=0)
    fine_tune_lr: float | None = Field(None, gt=0, description="LR of loaded trainable weights in stage 2 (default: lr)")
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(0, ge=0)
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="after warm-up: constant, or cosine decay to lr * final_lr_fraction at total_steps"
    )
    final_lr_fraction: float = Field(0.0, ge=0, le=1, description="cosine schedule: the last step's LR as a fraction of lr")
    grad_clip: float = Field(1.0, ge=0)
    ema_decay: float = Field(0.9999, ge=0, lt=1)
    ema_warmup: bool = Field(False, description="EMA decay min(decay, (1+n)/(10+n)): for short runs")
    seed: int = 42
    total_steps: int = Field(104000, ge=1)
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on GPUs and on CPUs with native bf16 (AMX, AVX-512 bf16), else fp32"
    )
    activation_checkpointing: bool = Field(
        False, description="recompute each DiT block's (and the local denoiser's) activations in the backward pass: "
        "much less memory, more time (docs/training.md)"
    )
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp", description="under torchrun: ddp (every rank holds the whole model) or fsdp (parameters, gradients and "
        "optimiser state sharded per DiT block)"
    )
    compile: bool = False
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    max_bad_steps: int = Field(20, ge=1, description="consecutive non-finite/exploding steps before aborting")
    spike_factor: float = Field(0.0, ge=0, description="skip steps whose loss exceeds this times the running mean (0: off)")
    max_loss: float | None = Field(1e5, gt=0, description="skip steps whose loss exceeds this (the paper's code: 1e5; null: off)")


class OutputConfig(Section):
    results_dir: str = "results"
    run_name: str | None = Field(None, description="default: the model name")
    keep_last: int = Field(3, ge=1, description="checkpoints kept besides latest and best")


class LoggingConfig(Section):
    log_every: int = Field(400, ge=1)
    ckpt_every: int = Field(1000, ge=1)
    eval_every: int = Field(1000, ge=1)
    tensorboard: bool = True
    num_preview_samples: int = Field(2, ge=0)
    eval_noise_level: float = Field(
        0.5, ge=0, le=1, description="validation: MSE of x0_hat at this noise level (0 clean .. 1 pure noise)"
    )
    eval_timestep: float | None = Field(
        None, ge=0, description="validate at this network timestep instead of eval_noise_level (the paper's code: 100)"
    )


class Config(Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @model_validator(mode="after")
    def _batch_divides(self) -> "Config":
        micro = self.training.micro_batch_size
        if micro is not None and self.training.global_batch_size % micro:
            raise ValueError(
                f"training.global_batch_size={self.training.global_batch_size} is not a multiple of "
                f"training.micro_batch_size={micro}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def with_pretrained(self, path: str | os.PathLike) -> "Config":
        """This config initialised from ``path`` (a stage-1 run folder, checkpoint or run pattern)."""
        return self.model_copy(update={"model": self.model.model_copy(update={"pretrained_path": str(path)})})


# ----------------------------------------------------------------------------------------------------------
# Key checking with suggestions
# ----------------------------------------------------------------------------------------------------------


def _valid_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(_valid_keys(annotation, prefix + name + "."))
    return keys


def _suggest(key: str, valid: list[str]) -> str:
    leaf_matches = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    if not leaf_matches:
        leaf = key.rsplit(".", 1)[-1]
        leaf_matches = [v for v in valid if difflib.get_close_matches(leaf, [v.rsplit(".", 1)[-1]], cutoff=0.7)][:3]
    if leaf_matches:
        return "did you mean " + " or ".join(repr(m) for m in leaf_matches) + "?"
    section = key.rsplit(".", 1)[0] + "." if "." in key else ""
    siblings = [v for v in valid if v.startswith(section) and v.count(".") == key.count(".")]
    return "valid keys here: " + ", ".join(siblings or valid)


def _check_keys(values: dict, model: type[BaseModel], prefix: str, source: str) -> None:
    valid = _valid_keys(Config)
    for key, value in values.items():
        dotted = prefix + str(key)
        field = model.model_fields.get(str(key))
        if field is None:
            raise ConfigError(f"{source}: unknown config key '{dotted}'; {_suggest(dotted, valid)}")
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{source}: '{dotted}' is a section and needs keys under it, got {value!r}")
            _check_keys(value or {}, annotation, dotted + ".", source)


def _validation_message(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    if not first["loc"]:
        return f"{source}: {message}"
    key = ".".join(str(part) for part in first["loc"])
    got = "" if isinstance(first.get("input"), dict) else f" (got {first.get('input')!r})"  # a whole section: the message names the key
    return f"{source}: invalid value for '{key}': {message}{got}"


# Keys that moved: configs (and saved runs) that use the old name still load, with a note when it matters.
MOVED_KEYS = {("model", "grad_checkpoint"): ("training", "activation_checkpointing")}


def migrate_moved_keys(values: dict, source: str = "config", announce: bool = False) -> dict:
    """A copy of a config dict with every key of :data:`MOVED_KEYS` under its new name (old runs' saved configs
    included); ``announce`` prints a note for an old key that is set to anything but its default."""
    values = {key: dict(section) if isinstance(section, dict) else section for key, section in values.items()}
    for (old_section, old_key), (new_section, new_key) in MOVED_KEYS.items():
        section = values.get(old_section)
        if not isinstance(section, dict) or old_key not in section:
            continue
        value = section.pop(old_key)
        target = values.setdefault(new_section, {})
        if not isinstance(target, dict):
            continue  # the section-shape error is reported by the key check
        if new_key in target and target[new_key] != value:
            raise ConfigError(f"{source}: '{old_section}.{old_key}' (old name of '{new_section}.{new_key}') is "
                              f"{value!r} but '{new_section}.{new_key}' is {target[new_key]!r}; keep only the new key")
        target[new_key] = value
        if announce and value:
            print(f"note: {source}: '{old_section}.{old_key}' is now '{new_section}.{new_key}' (read as such; "
                  "rename it to silence this note)", file=sys.stderr)
    return values


def config_from_dict(values: dict, source: str = "config") -> Config:
    """Validate a nested dict into a :class:`Config`; errors name the key."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: a config must be a mapping of sections, got {type(values).__name__}")
    values = migrate_moved_keys(values, source, announce=True)
    _check_keys(values, Config, "", source)
    try:
        return Config.model_validate(values)
    except ValidationError as error:
        raise ConfigError(_validation_message(error, source)) from None


def with_defaults(values: dict) -> dict:
    """A saved config dict completed by today's defaults (moved keys renamed): a run saved before a key existed
    compares equal to a config that leaves that key at its default."""
    def merge(base: dict, top: dict) -> dict:
        return {**base, **{k: merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
                           for k, v in top.items()}}
    return merge(Config().to_dict(), migrate_moved_keys(values))


def config_differences(old: dict, new: dict, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """``{"section.key": (old value, new value)}`` for every key whose value differs between two config dicts."""
    differences: dict[str, tuple[Any, Any]] = {}
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differences.update(config_differences(a, b, f"{prefix}{key}."))
        elif a != b:
            differences[f"{prefix}{key}"] = (a, b)
    return differences


def parse_override(text: str) -> tuple[list[str], Any]:
    """``training.lr=3e-4`` -> (["training", "lr"], 3e-4). Values are read as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value, e.g. training.lr=1e-4")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"override '{text}' must name a section and a key, e.g. training.lr=1e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
        try:
            value = float(value)
        except ValueError:
            pass
    return parts, value


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    for text in overrides:
        parts, value = parse_override(text)
        node = values
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{text}': '{part}' is a value, not a section")
            node = child
        node[parts[-1]] = value
    return values


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found (configs live in configs/, e.g. configs/phantom/local.yaml)")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(error, 'problem', error)}") from None
    return values or {}


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply ``section.key=value`` overrides."""
    values = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "defaults"
    if overrides:
        _check_keys(migrate_moved_keys(values, source), Config, "", source)
        values = apply_overrides(values, overrides)
        source += " + overrides"
    return config_from_dict(values, source)


def save_config(config: Config, path: str | os.PathLike) -> Path:
    atomic_write_text(path, config.to_yaml())
    return Path(path)
