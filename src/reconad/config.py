"""``params.yaml`` read into a typed, validated, immutable configuration.

The file has one section per concern (dataset, train, one per method family, loss,
corruption, score, calibrate, evaluate, tracking). Two mechanisms layer values on top
of it, in this order:

1. ``profiles.<profile>``: dotted overrides that switch the whole run between the quick
   CPU profile and the paper-scale profile (``dvc exp run -S profile=paper``);
2. ``variants.<name>.set``: dotted overrides that make a *variant* (e.g. ``sdc_contrast``
   is the SDC-AE family with ``loss.objective: contrast``).

Validation happens after both layers are applied, so an override cannot smuggle in a
bad value. Any error is reported as one line naming the key and the allowed values.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from reconad.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")

MethodName = Literal["sdc_ae", "aesc", "patch_ae", "ensemble"]
METHOD_FAMILIES: tuple[str, ...] = ("sdc_ae", "aesc", "patch_ae", "ensemble")

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Positive = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]


class Section(BaseModel):
    """Base for every section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TexturesConfig(Section):
    """Sizes of the embedded dataset, per category."""

    train: Positive = 200
    val: Positive = 40
    test_good: Positive = 60
    test_defect: Positive = 60


class DatasetConfig(Section):
    name: Literal["textures", "mvtec_ad", "folder"] = "textures"
    root: str | None = None
    archive: str | None = None
    url: str = ""
    sha256: str = ""
    categories: list[str] = Field(min_length=1)
    image_size: Annotated[int, Field(ge=32, le=2048)] = 128
    color: Literal["auto", "grey", "rgb"] = "auto"
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.15
    textures: TexturesConfig = TexturesConfig()

    @model_validator(mode="after")
    def _root_for_folder(self) -> DatasetConfig:
        if self.name == "folder" and not self.root:
            raise ValueError("dataset.root: required when dataset.name is 'folder'")
        if self.image_size % 8:
            raise ValueError(f"dataset.image_size: must be a multiple of 8 (got {self.image_size})")
        return self


class VariantConfig(Section):
    """A named variant: a method family plus dotted overrides of other params."""

    method: MethodName
    set: dict[str, Any] = Field(default_factory=dict)
    members: list[str] = Field(default_factory=list)


class AugmentConfig(Section):
    rot90: bool = True
    hflip: bool = True
    vflip: bool = True


class TrainConfig(Section):
    batch_size: Positive = 8
    learning_rate: PositiveFloat = 1e-4
    epochs: Positive = 20
    steps_per_epoch: Positive = 40
    patience: Positive | None = None
    augment: dict[str, AugmentConfig] = Field(default_factory=lambda: {"default": AugmentConfig()})
    distribute: Literal["none", "mirrored", "multi_worker"] = "none"
    mixed_precision: bool = False
    jit_compile: bool = False

    def augment_for(self, category: str) -> AugmentConfig:
        """Augmentations of ``category``: its own entry or ``default``."""
        return self.augment.get(category, self.augment.get("default", AugmentConfig()))


class Phase(Section):
    """One phase of progressive training: random crops of ``crop`` pixels."""

    crop: Positive
    epochs: Positive


class SdcAeConfig(Section):
    architecture: Literal["model1", "model2"] = "model1"
    width: Annotated[float, Field(gt=0.0, le=4.0)] = 0.25
    encoder_filters: list[Positive] = Field(default_factory=lambda: [64, 128, 256])
    sdc_filters: Positive = 64
    dilations: list[Positive] = Field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    sdc_blocks: Annotated[int, Field(ge=0)] = 4
    sdc_kernel: Positive = 5
    schedule: list[Phase] = Field(default_factory=lambda: [Phase(crop=64, epochs=10)])


class AescConfig(Section):
    skips: bool = True
    width: Annotated[float, Field(gt=0.0, le=4.0)] = 0.5
    filters: list[Positive] = Field(default_factory=lambda: [16, 32, 64, 128, 256, 512])
    kernel_size: Positive = 5
    dropout: list[Annotated[float, Field(ge=0.0, lt=1.0)]] = Field(
        default_factory=lambda: [0.0, 0.0, 0.1, 0.2, 0.3, 0.4]
    )

    @model_validator(mode="after")
    def _one_rate_per_depth(self) -> AescConfig:
        if len(self.dropout) != len(self.filters):
            raise ValueError(
                f"aesc.dropout: needs one rate per depth ({len(self.filters)}), "
                f"got {len(self.dropout)}"
            )
        return self


class PatchAeConfig(Section):
    backbone: Literal["hed_vgg16", "resnet50", "resnet101", "file", "random"] = "hed_vgg16"
    weights: str | None = None
    freeze_backbone: bool = True
    compressed_channels: Positive = 64
    decoder_channels: Positive = 256
    loss_alpha: Fraction = 0.5
    coreset_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    coreset_projection: Annotated[int, Field(ge=0)] = 128


class LossConfig(Section):
    objective: Literal["restore", "contrast"] = "restore"
    # ``lambda`` is a Python keyword; the YAML key stays ``lambda``.
    lambda_: Fraction = Field(0.5, alias="lambda")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ElasticConfig(Section):
    """SDC-AE patch corruption (methods.md §1)."""

    patches_min: Positive = 1
    patches_max: Positive = 4
    size_min: Annotated[float, Field(gt=0.0, le=1.0)] = 0.05
    size_max: Annotated[float, Field(gt=0.0, le=1.0)] = 0.25
    modes: list[Literal["elastic", "zeros", "swap"]] = Field(
        default_factory=lambda: ["elastic"], min_length=1
    )
    sigma: PositiveFloat = 4.0
    alpha: PositiveFloat = 50.0
    mask_sigma: PositiveFloat = 4.0
    mask_alpha: PositiveFloat = 20.0
    brightness: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0

    @model_validator(mode="after")
    def _ordered_ranges(self) -> ElasticConfig:
        if self.patches_min > self.patches_max:
            raise ValueError("corruption.elastic.patches_min: must be <= patches_max")
        if self.size_min > self.size_max:
            raise ValueError("corruption.elastic.size_min: must be <= size_max")
        return self


class CutPasteConfig(Section):
    probability: Fraction = 0.5
    scar_probability: Fraction = 0.5
    area_min: Annotated[float, Field(gt=0.0, le=1.0)] = 0.02
    area_max: Annotated[float, Field(gt=0.0, le=1.0)] = 0.15
    jitter: Fraction = 0.1


class CorruptionConfig(Section):
    elastic: ElasticConfig = ElasticConfig()
    model: Literal["stain", "scratch", "drops", "gaussian", "mix1", "mix2", "none"] = "stain"
    cutpaste: CutPasteConfig = CutPasteConfig()


class SdcScoreConfig(Section):
    smoothing: Literal["gaussian", "anomap", "none"] = "gaussian"
    sigma: PositiveFloat = 2.0
    box_size: Positive = 5
    box_passes: Positive = 3
    image_score: Literal["max", "top_q_mean"] = "max"
    top_q: Annotated[float, Field(gt=0.0, le=1.0)] = 0.01


class AescScoreConfig(Section):
    map: Literal["residual", "uncertainty"] = "residual"
    p: PositiveFloat = 2.0
    mc_passes: Positive = 30


class PatchScoreConfig(Section):
    sigma: PositiveFloat = 4.0
    chunk_size: Positive = 4096


class ScoreConfig(Section):
    batch_size: Positive = 16
    sdc_ae: SdcScoreConfig = SdcScoreConfig()
    aesc: AescScoreConfig = AescScoreConfig()
    patch_ae: PatchScoreConfig = PatchScoreConfig()


class CalibrateConfig(Section):
    rule: Literal["components", "percentile"] = "components"
    min_defect_area: dict[str, Positive] = Field(default_factory=lambda: {"default": 16})
    percentile: Annotated[float, Field(gt=0.0, lt=100.0)] = 99.5

    def min_area_for(self, category: str) -> int:
        """Minimal defect area (pixels) of ``category``: its own entry or ``default``."""
        return self.min_defect_area.get(category, self.min_defect_area.get("default", 16))


class EvaluateConfig(Section):
    max_fpr: Annotated[float, Field(gt=0.0, le=1.0)] = 0.3
    examples: Annotated[int, Field(ge=0)] = 3


class TrackingConfig(Section):
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "reconad"


class Params(Section):
    """The whole of ``params.yaml`` after profile and variant overrides."""

    seed: Annotated[int, Field(ge=0)] = 0
    profile: str = "quick"
    dataset: DatasetConfig
    run: dict[str, list[str]] = Field(default_factory=dict)
    variants: dict[str, VariantConfig] = Field(default_factory=dict)
    train: TrainConfig = TrainConfig()
    sdc_ae: SdcAeConfig = SdcAeConfig()
    aesc: AescConfig = AescConfig()
    patch_ae: PatchAeConfig = PatchAeConfig()
    loss: LossConfig = LossConfig()
    corruption: CorruptionConfig = CorruptionConfig()
    score: ScoreConfig = ScoreConfig()
    calibrate: CalibrateConfig = CalibrateConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    tracking: TrackingConfig = TrackingConfig()
    profiles: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"quick": {}})

    @model_validator(mode="after")
    def _variants_consistent(self) -> Params:
        for family, names in self.run.items():
            if family not in METHOD_FAMILIES:
                raise ValueError(
                    f"run.{family}: unknown method family (allowed: {', '.join(METHOD_FAMILIES)})"
                )
            for name in names:
                if name not in self.variants:
                    raise ValueError(
                        f"run.{family}: unknown variant '{name}' "
                        f"(defined: {', '.join(sorted(self.variants))})"
                    )
                if self.variants[name].method != family:
                    raise ValueError(
                        f"run.{family}: variant '{name}' is a "
                        f"'{self.variants[name].method}' variant"
                    )
        for name, variant in self.variants.items():
            _check_members(name, variant, self.variants)
        running = {name for names in self.run.values() for name in names}
        for name in self.run.get("ensemble", []):
            for member in self.variants[name].members:
                if member not in running:
                    family = self.variants[member].method
                    raise ValueError(
                        f"run.ensemble: '{name}' needs its member '{member}' in run.{family}"
                    )
        return self

    def variant(self, name: str) -> VariantConfig:
        """The definition of variant ``name``; a ConfigError names the known ones."""
        if name not in self.variants:
            raise ConfigError(
                f"unknown variant '{name}' (defined in params.yaml variants: "
                f"{', '.join(sorted(self.variants))})"
            )
        return self.variants[name]


def _check_members(name: str, variant: VariantConfig, variants: dict[str, VariantConfig]) -> None:
    """An ensemble combines at least two trained (non-ensemble) variants; nothing else has
    members."""
    if variant.method != "ensemble":
        if variant.members:
            raise ValueError(f"variants.{name}.members: only an 'ensemble' variant has members")
        return
    if len(variant.members) < 2:
        raise ValueError(f"variants.{name}.members: an ensemble needs at least 2 variants")
    for member in variant.members:
        if member not in variants:
            raise ValueError(
                f"variants.{name}.members: unknown variant '{member}' "
                f"(defined: {', '.join(sorted(variants))})"
            )
        if variants[member].method == "ensemble":
            raise ValueError(f"variants.{name}.members: '{member}' is itself an ensemble")


def load_params(path: Path | str = DEFAULT_PARAMS, variant: str | None = None) -> Params:
    """Read ``path``, apply the active profile and ``variant``'s overrides, validate.

    Raises:
        ConfigError: the file is missing, not YAML, or any key is unknown or invalid.
    """
    path = Path(path)
    raw = _read_yaml(path)
    raw = _apply_profile(raw, path)
    if variant is not None:
        raw = _apply_variant(raw, variant, path)
    return _validate(raw, path)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read params file ({exc.strerror})") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({_first_line(exc)})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return raw


def _apply_profile(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    profile = raw.get("profile", "quick")
    profiles = raw.get("profiles") or {"quick": {}}
    if not isinstance(profiles, dict) or profile not in profiles:
        known = ", ".join(sorted(profiles)) if isinstance(profiles, dict) else "none"
        raise ConfigError(f"{path}: profile: unknown profile '{profile}' (allowed: {known})")
    return apply_overrides(raw, profiles[profile] or {}, f"profiles.{profile}", path)


def _apply_variant(raw: dict[str, Any], variant: str, path: Path) -> dict[str, Any]:
    variants = raw.get("variants") or {}
    if variant not in variants:
        raise ConfigError(
            f"{path}: unknown variant '{variant}' (defined in variants: "
            f"{', '.join(sorted(variants)) or 'none'})"
        )
    overrides = (variants[variant] or {}).get("set") or {}
    return apply_overrides(raw, overrides, f"variants.{variant}.set", path)


def apply_overrides(
    raw: dict[str, Any], overrides: dict[str, Any], origin: str, path: Path
) -> dict[str, Any]:
    """Return a copy of ``raw`` with dotted keys (``loss.lambda``) set to new values.

    Only keys that already exist may be overridden, so a typo fails loudly instead of
    silently adding an unused setting.
    """
    result = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        node = result
        parts = str(dotted).split(".")
        for depth, part in enumerate(parts):
            is_last = depth == len(parts) - 1
            known = _known_keys(node, parts[:depth])
            if part not in known:
                raise ConfigError(
                    f"{path}: {origin}: unknown key '{dotted}' "
                    f"(allowed at '{'.'.join(parts[:depth]) or 'top level'}': "
                    f"{', '.join(sorted(known))})"
                )
            if is_last:
                node[part] = copy.deepcopy(value)
            else:
                node = node.setdefault(part, {})
    return result


def _known_keys(node: dict[str, Any], prefix: list[str]) -> set[str]:
    """Keys allowed at ``prefix``: those in the file plus those of the schema."""
    keys = set(node)
    model: Any = Params
    for part in prefix:
        field = model.model_fields.get(part) if _is_model(model) else None
        if field is None:
            return keys
        model = field.annotation
    if _is_model(model):
        keys |= {field.alias or name for name, field in model.model_fields.items()}
    return keys


def _is_model(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseModel)


def _validate(raw: dict[str, Any], path: Path) -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc)}") from exc


def _describe(exc: ValidationError) -> str:
    """The first validation error as ``key.path: what is wrong``."""
    error = exc.errors()[0]
    key = ".".join(str(part) for part in error["loc"] if part != "__root__")
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        allowed = _allowed_here(error["loc"][:-1])
        return f"{key}: unknown key (allowed: {', '.join(allowed)})"
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    if not key or message.startswith(f"{key}:") or message.startswith(f"{key}."):
        return message
    got = error.get("input")
    shown = f" (got {got!r})" if not isinstance(got, dict | list) else ""
    return f"{key}: {message}{shown}"


def _allowed_here(loc: tuple[Any, ...]) -> list[str]:
    model: Any = Params
    for part in loc:
        if isinstance(part, int) or not _is_model(model):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            break
        model = _section_type(field.annotation)
    if not _is_model(model):
        return []
    return sorted(field.alias or name for name, field in model.model_fields.items())


def _section_type(annotation: Any) -> Any:
    """The Section class inside ``list[X]`` / ``dict[str, X]`` / ``X``."""
    if _is_model(annotation):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if _is_model(arg):
            return arg
    return annotation


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
