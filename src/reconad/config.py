"""``params.yaml`` read into a typed, validated, immutable configuration.

The file has shared sections (``dataset``, ``train``, ``score``, ``calibrate``,
``evaluate``, ``tracking``) and one block per method family (``sdc_ae``, ``aesc``, ...)
holding everything that family reads: its input, network, training schedule,
corruption, loss weights and scoring. A family's block is validated by the family's own
schema (``Config`` in its module under ``reconad.models``), on first use, so that this
module stays free of TensorFlow and a new family needs no edit here.

Three layers make the values a stage sees, in this order:

1. the file itself (``dvc exp run -S key=value`` edits it);
2. ``variants.<name>.set``: dotted overrides that make a *variant* (``sdc_contrast`` is
   the SDC-AE family with ``loss.objective: contrast``);
3. ``profiles.<profile>``: the sizes and schedules of a profile (``quick``, ``cpu``,
   ``paper``). A profile only fills the values left ``null`` by the two layers above, so
   a value a user sets always wins over the profile (and the log says so).

Validation happens after all three, so an override cannot smuggle in a bad value. Any
error is reported as one line naming the key and the allowed values.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from reconad.errors import ConfigError

log = logging.getLogger("reconad")

DEFAULT_PARAMS = Path("params.yaml")

REFERENCE_SIZE = 256
"""Settings named ``*_px`` are pixels of a 256 x 256 image: they scale with the image side
(areas with its square), so changing an image size keeps a method the same."""

ENSEMBLE = "ensemble"
"""The family whose variants combine trained variants (``members``) instead of training."""

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Positive = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]
NonNegative = Annotated[int, Field(ge=0)]
NonNegativeFloat = Annotated[float, Field(ge=0.0)]
ImageSize = Annotated[int, Field(ge=32, le=2048, multiple_of=8)]


class Section(BaseModel):
    """Base for every section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TexturesConfig(Section):
    """Sizes of the embedded dataset, per category."""

    train: Positive
    val: Positive
    test_good: Positive
    test_defect: Positive


class AugmentConfig(Section):
    rot90: bool
    hflip: bool
    vflip: bool


class DatasetConfig(Section):
    name: Literal["textures", "mvtec_ad", "folder"]
    root: str | None
    archive: str | None
    url: str
    sha256: str
    categories: list[str] = Field(min_length=1)
    image_size: ImageSize
    color: Literal["auto", "grey", "rgb"]
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)]
    augment: dict[str, AugmentConfig]
    textures: TexturesConfig

    @model_validator(mode="after")
    def _root_for_folder(self) -> DatasetConfig:
        if self.name == "folder" and not self.root:
            raise ValueError("dataset.root: required when dataset.name is 'folder'")
        if "default" not in self.augment:
            raise ValueError("dataset.augment: needs a 'default' entry")
        return self


class VariantConfig(Section):
    """A named variant: a method family plus dotted overrides of other params."""

    method: str
    set: dict[str, Any] = Field(default_factory=dict)
    members: list[str] = Field(default_factory=list)


class TrainConfig(Section):
    """The shared training loop: how it runs, not what it learns."""

    distribute: Literal["none", "mirrored", "multi_worker"]
    mixed_precision: Literal["none", "float16", "bfloat16"]
    jit_compile: bool
    max_minutes: NonNegativeFloat | None
    """Wall-clock cap on one variant x category's training (``reconad.budget``); None:
    none. A user's 0 reads as None: null in params.yaml already means "the profile's"."""

    @field_validator("max_minutes")
    @classmethod
    def _zero_is_no_cap(cls, minutes: float | None) -> float | None:
        return None if minutes == 0 else minutes


class ScoreConfig(Section):
    """Scoring shared by every family (each family's block has its own ``score``)."""

    batch_size: Positive


class CalibrateConfig(Section):
    rule: Literal["components", "percentile", "fpr"]
    min_defect_area_px: dict[str, Positive]
    percentile: Annotated[float, Field(gt=0.0, lt=100.0)]
    target_fpr: Annotated[float, Field(ge=0.0, lt=1.0)]

    @model_validator(mode="after")
    def _default_area(self) -> CalibrateConfig:
        if "default" not in self.min_defect_area_px:
            raise ValueError("calibrate.min_defect_area_px: needs a 'default' entry")
        return self

    def min_area_for(self, category: str, image_size: int) -> int:
        """Minimal defect area of ``category`` in pixels of an ``image_size`` image."""
        area = self.min_defect_area_px.get(category, self.min_defect_area_px["default"])
        return max(1, round(area * (image_size / REFERENCE_SIZE) ** 2))


class EvaluateConfig(Section):
    max_fpr: Annotated[float, Field(gt=0.0, le=1.0)]
    examples: NonNegative


class TrackingConfig(Section):
    uri: str
    experiment: str


# Building blocks of the family schemas (``Config`` in each ``reconad.models`` module).


class InputConfig(Section):
    """What a family's network sees: the prepared images resized and converted.

    ``size`` null: the prepared size (``dataset.image_size``). ``color`` ``auto``: as
    prepared; ``grey`` or ``rgb`` convert (AESc is a greyscale method).
    """

    size: ImageSize | None
    color: Literal["auto", "grey", "rgb"]

    def size_for(self, prepared_size: int) -> int:
        return self.size or prepared_size


class Phase(Section):
    """One phase of training: random crops of ``crop`` pixels (0: the whole image)."""

    crop: NonNegative
    epochs: Positive


class FitConfig(Section):
    """How a trained family learns: batch, learning rate, phases, early stopping."""

    batch_size: Positive
    learning_rate: PositiveFloat
    lr_schedule: Literal["constant", "cosine"]
    steps_per_epoch: Positive
    phases: list[Phase] = Field(min_length=1)
    patience: NonNegative
    """Early stopping after this many epochs without a better ``monitor``; 0: off. The
    weights of the best epoch are kept."""
    monitor: Literal["val_loss", "synthetic"]
    """What early stopping watches: the loss on corrupted validation normals, or how well
    the maps localise synthetic defects pasted into them (``reconad.synthetic``)."""
    synthetic_defects: Literal["training", "stain", "scratch", "drops", "mix1"]
    """The defects ``synthetic`` pastes: the family's own training corruption, or one of
    AESc's corruption models, which an SDC-AE or Patch AE never trains on. A held-out kind
    keeps the score from rewarding a model for amplifying its own corruption (the
    ``contrast`` objective does exactly that: docs/methods.md)."""
    augment: bool
    """Random rot90/flips, as ``dataset.augment`` allows for the category."""
    precise_bn: bool
    """After the last phase, set BatchNorm statistics to their mean over the full-size
    training images (statistics of small crops do not fit whole images)."""

    def total_steps(self) -> int:
        return sum(phase.epochs for phase in self.phases) * self.steps_per_epoch


def scaled(value_px: float, size: int) -> float:
    """A ``*_px`` setting (pixels at 256 px) in pixels of a ``size`` image."""
    return value_px * size / REFERENCE_SIZE


class Params(Section):
    """The whole of ``params.yaml`` after variant and profile overrides.

    Family blocks are extra keys, checked against the family registry here and
    validated by the family's schema in :meth:`family`.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    seed: NonNegative
    profile: str
    dataset: DatasetConfig
    run: dict[str, list[str]]
    variants: dict[str, VariantConfig]
    train: TrainConfig
    score: ScoreConfig
    calibrate: CalibrateConfig
    evaluate: EvaluateConfig
    tracking: TrackingConfig
    profiles: dict[str, dict[str, Any]]
    _families: dict[str, Section] = PrivateAttr(default_factory=dict)
    _source: str = PrivateAttr(default="")
    """The params file, named in the errors of family blocks."""

    @model_validator(mode="after")
    def _consistent(self) -> Params:
        from reconad.models import FAMILIES, block_owner

        for key in self.model_extra or {}:
            if block_owner(key) is None:
                allowed = sorted({*type(self).model_fields, *_family_blocks()})
                raise ValueError(f"{key}: unknown key (allowed: {', '.join(allowed)})")
        for family, names in self.run.items():
            if family not in FAMILIES:
                raise ValueError(
                    f"run.{family}: unknown method family (allowed: {', '.join(FAMILIES)})"
                )
            for name in names:
                _check_run_entry(family, name, self.variants)
        for name, variant in self.variants.items():
            _check_variant(name, variant, self.variants)
        running = {name for names in self.run.values() for name in names}
        for name in self.run.get(ENSEMBLE, []):
            for member in self.variants[name].members:
                if member not in running:
                    family = self.variants[member].method
                    raise ValueError(
                        f"run.{ENSEMBLE}: '{name}' needs its member '{member}' in run.{family}"
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

    def family(self, name: str) -> Any:
        """The validated block of family ``name`` (its module's ``Config``).

        Raises:
            ConfigError: the block is missing or invalid; names the key.
        """
        if name not in self._families:
            try:
                self._families[name] = _validate_family(name, self.model_extra or {})
            except ConfigError as exc:
                raise ConfigError(f"{self._source}: {exc}" if self._source else str(exc)) from exc
        return self._families[name]

    def raw(self) -> dict[str, Any]:
        """The params as the file holds them (family blocks at the top level)."""
        return self.model_dump(mode="json", by_alias=True)

    def for_variant(self, name: str) -> Params:
        """These params with variant ``name``'s overrides applied (e.g. an ensemble member)."""
        overrides = self.variant(name).set
        return _validate(apply_overrides(self.raw(), overrides, f"variants.{name}.set", None))


@functools.cache
def _family_blocks() -> frozenset[str]:
    from reconad.models import FAMILIES

    return frozenset(block for entry in FAMILIES.values() for block in entry.blocks)


def _check_run_entry(family: str, name: str, variants: dict[str, VariantConfig]) -> None:
    if name not in variants:
        raise ValueError(
            f"run.{family}: unknown variant '{name}' (defined: {', '.join(sorted(variants))})"
        )
    if variants[name].method != family:
        raise ValueError(f"run.{family}: variant '{name}' is a '{variants[name].method}' variant")


def _check_variant(name: str, variant: VariantConfig, variants: dict[str, VariantConfig]) -> None:
    """The family exists; an ensemble combines at least two trained (non-ensemble)
    variants; nothing else has members."""
    from reconad.models import FAMILIES

    if variant.method not in FAMILIES:
        raise ValueError(
            f"variants.{name}.method: unknown method family '{variant.method}' "
            f"(allowed: {', '.join(FAMILIES)})"
        )
    if variant.method != ENSEMBLE:
        if variant.members:
            raise ValueError(f"variants.{name}.members: only an '{ENSEMBLE}' variant has members")
        return
    if len(variant.members) < 2:
        raise ValueError(f"variants.{name}.members: an ensemble needs at least 2 variants")
    for member in variant.members:
        if member not in variants:
            raise ValueError(
                f"variants.{name}.members: unknown variant '{member}' "
                f"(defined: {', '.join(sorted(variants))})"
            )
        if variants[member].method == ENSEMBLE:
            raise ValueError(f"variants.{name}.members: '{member}' is itself an ensemble")


def _validate_family(name: str, blocks: dict[str, Any]) -> Section:
    """Validate family ``name``'s own block plus the extra top-level blocks it owns.

    An extra block (SDC-AE's ``loss``) becomes a field of the same name, and errors
    name it without the family prefix, as the user wrote it.
    """
    from reconad.models import FAMILIES, family_config

    entry = FAMILIES[name]
    own, *extra = entry.blocks
    if own not in blocks:
        raise ConfigError(f"{own}: the block of method family '{name}' is missing")
    content = dict(blocks[own] or {})
    for block in extra:
        if block in content:
            raise ConfigError(f"{own}.{block}: set it in the top-level '{block}' block")
        if block not in blocks:
            raise ConfigError(f"{block}: the block is missing (method family '{name}' reads it)")
        content[block] = blocks[block]
    try:
        return family_config(name).model_validate(content)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(error["loc"])
        prefix = () if loc and loc[0] in extra else (own,)
        raise ConfigError(_describe(exc, prefix, family_config(name))) from exc


def load_params(path: Path | str = DEFAULT_PARAMS, variant: str | None = None) -> Params:
    """Read ``path``, apply ``variant``'s overrides and the active profile, validate.

    Raises:
        ConfigError: the file is missing, not YAML, or any key is unknown or invalid.
    """
    path = Path(path)
    return params_from_dict(_read_yaml(path), variant, path)


def raw_params(path: Path | str, settings: Sequence[str] = ()) -> dict[str, Any]:
    """The content of ``path`` with ``KEY=VALUE`` settings applied as ``dvc exp run -S``
    applies them (values are YAML), for commands that preview a run without DVC."""
    path = Path(path)
    overrides: dict[str, Any] = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"-S {setting}: expected KEY=VALUE")
        overrides[key.strip()] = yaml.safe_load(value)
    return apply_overrides(_read_yaml(path), overrides, "-S", path)


def params_from_dict(
    raw: dict[str, Any], variant: str | None = None, path: Path | str = DEFAULT_PARAMS
) -> Params:
    """:func:`load_params` for the content of a params file; ``path`` names it in errors."""
    path = Path(path)
    family = None
    if variant is not None:
        raw = _apply_variant(raw, variant, path)
        family = (raw["variants"][variant] or {}).get("method")
    return _validate(_apply_profile(raw, path, family), path)


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


def _apply_profile(raw: dict[str, Any], path: Path, family: str | None) -> dict[str, Any]:
    """Fill every null the active profile has a value for; log the values that win over
    the profile's where the stage reads them: the shared sections, and ``family``'s
    block (a stage of another family, or of none, does not repeat them)."""
    profile = raw.get("profile")
    profiles = raw.get("profiles")
    if not isinstance(profiles, dict) or profile not in profiles:
        known = ", ".join(sorted(profiles)) if isinstance(profiles, dict) else "none"
        raise ConfigError(f"{path}: profile: unknown profile '{profile}' (allowed: {known})")
    values = dotted_leaves(profiles[profile] or {})
    origin = f"profiles.{profile}"
    current = {key: _lookup(raw, key, origin, path) for key in values}
    for key, value in values.items():
        if current[key] not in (None, value) and _read_by(key, family):
            log.info("%s: %r wins over %s's %r", key, current[key], origin, value)
    unset = {key: value for key, value in values.items() if current[key] is None}
    return apply_overrides(raw, unset, origin, path)


def _read_by(key: str, family: str | None) -> bool:
    """Whether a stage of ``family`` (None: of no family) reads dotted ``key``."""
    from reconad.models import block_owner

    return block_owner(key.split(".")[0]) in (None, family)


def dotted_leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A profile's values by dotted key: ``{sdc_ae: {network: {width: 1}}}`` and
    ``{sdc_ae.network.width: 1}`` both give ``{"sdc_ae.network.width": 1}``.

    Profiles nest by section so that DVC stages can depend on one family's part
    (``profiles.cpu.aesc``); lists, such as phases, are values, not branches.
    """
    leaves: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            leaves.update(dotted_leaves(value, dotted))
        else:
            leaves[dotted] = value
    return leaves


def _lookup(raw: dict[str, Any], dotted: str, origin: str, path: Path) -> Any:
    node: Any = raw
    for part in str(dotted).split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"{path}: {origin}: unknown key '{dotted}'")
        node = node[part]
    return node


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
    raw: dict[str, Any], overrides: dict[str, Any], origin: str, path: Path | None
) -> dict[str, Any]:
    """Return a copy of ``raw`` with dotted keys (``loss.lambda``) set to new values.

    Only keys that already exist may be overridden, so a typo fails loudly instead of
    silently adding an unused setting.
    """
    result = copy.deepcopy(raw)
    where = f"{path}: " if path is not None else ""
    for dotted, value in overrides.items():
        node = result
        parts = str(dotted).split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                known = sorted(node) if isinstance(node, dict) else []
                raise ConfigError(
                    f"{where}{origin}: unknown key '{dotted}' "
                    f"(allowed at '{'.'.join(parts[:depth]) or 'top level'}': "
                    f"{', '.join(known)})"
                )
            if depth == len(parts) - 1:
                node[part] = copy.deepcopy(value)
            else:
                node = node[part]
    return result


def _validate(raw: dict[str, Any], path: Path | None = None) -> Params:
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        message = _describe(exc, (), Params)
        raise ConfigError(f"{path}: {message}" if path is not None else message) from exc
    params._source = str(path) if path is not None else ""
    return params


def _describe(exc: ValidationError, prefix: tuple[str, ...], root: type[BaseModel]) -> str:
    """The first validation error as ``key.path: what is wrong``."""
    error = exc.errors()[0]
    key = _dotted((*prefix, *(part for part in error["loc"] if part != "__root__")))
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        allowed = _allowed_here(root, tuple(error["loc"][:-1]))
        return f"{key}: unknown key (allowed: {', '.join(allowed)})"
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    if error.get("input", 0) is None:
        return f"{key}: null, and profile gives it no value; set it"
    if not key or message.startswith(f"{key}:") or message.startswith(f"{key}."):
        return message
    got = error.get("input")
    shown = f" (got {got!r})" if not isinstance(got, dict | list) else ""
    return f"{key}: {message}{shown}"


def _dotted(loc: tuple[Any, ...]) -> str:
    """``("sdc_ae", "train", "phases", 0, "crop")`` as ``sdc_ae.train.phases[0].crop``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def _allowed_here(root: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    model: Any = root
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


def _is_model(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseModel)


def _section_type(annotation: Any) -> Any:
    """The Section class inside ``list[X]`` / ``dict[str, X]`` / ``X | None`` / ``X``."""
    if _is_model(annotation):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if _is_model(arg):
            return arg
    return annotation


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
