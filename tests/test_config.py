"""params.yaml validation: every mistake is one line naming the key as the user writes it.

Also pins the profile layer (a null takes the active profile's value, an explicit value
wins) and that defaults come from one source only: no schema has a default, and the
repository's params.yaml resolves and validates under every profile.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml
from pydantic import ValidationError

from reconad import config as config_module
from reconad.config import (
    REFERENCE_SIZE,
    Section,
    dotted_leaves,
    load_params,
    params_from_dict,
    scaled,
)
from reconad.errors import ConfigError
from reconad.models import FAMILIES, family_config

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
PROFILES = ("quick", "cpu", "paper")

Mutation = Callable[[dict[str, Any]], None]


def repo_raw() -> dict[str, Any]:
    return yaml.safe_load(REPO_PARAMS.read_text(encoding="utf-8"))


def changed(**changes: object) -> dict[str, Any]:
    """The repository's params with keys changed (``__`` separates the levels)."""
    raw = repo_raw()
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split("__")
        for part in parents:
            node = node[part]
        node[last] = value
    return raw


def write_params(tmp_path: Path, raw: dict[str, Any]) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def one_line_error(action: Callable[[], object]) -> str:
    with pytest.raises(ConfigError) as error:
        action()
    message = str(error.value)
    assert "\n" not in message, message
    return message


# --- the repository's params -------------------------------------------------------------


def test_repository_params_are_valid() -> None:
    params = load_params(REPO_PARAMS)
    assert params.dataset.name == "textures"
    assert params.profile == "quick"
    assert params.family("sdc_ae").loss.lambda_ == pytest.approx(0.5)
    for family, names in params.run.items():
        for name in names:
            assert params.variant(name).method == family


@pytest.mark.parametrize("profile", PROFILES)
def test_repository_params_resolve_under_every_profile(profile: str) -> None:
    """params.yaml and the code agree: every null is filled, every family block of every
    variant validates, and every family accepts its variants' image sizes and crops."""
    from reconad.train import make_method

    raw = changed(profile=profile)
    assert set(raw["profiles"]) == set(PROFILES)
    for variant in [None, *raw["variants"]]:
        params = params_from_dict(raw, variant, REPO_PARAMS)
        assert params.profile == profile
        for family in FAMILIES:
            assert isinstance(params.family(family), family_config(family)), (variant, family)
        if variant is not None:
            method = make_method(params, variant, prepared_channels=3)
            has_input = "input" in family_config(method.family).model_fields
            expected = (
                params.family(method.family).input.size_for(params.dataset.image_size)
                if has_input
                else params.dataset.image_size
            )
            assert method.image_size == expected


@pytest.mark.parametrize("profile", PROFILES)
def test_every_value_a_repository_profile_sets_is_the_one_used(profile: str) -> None:
    """A profile only fills nulls, so a key the repository's params.yaml also sets outside
    the profile makes the profile's line dead: the cpu profile's AESc batch of 4 was for a
    day, and its runs trained at the base's batch of 8."""
    used = dotted_leaves(params_from_dict(changed(profile=profile)).raw())
    for key, value in dotted_leaves(repo_raw()["profiles"][profile] or {}).items():
        assert used[key] == value, f"profiles.{profile}.{key} is set outside the profile too"


# --- defaults come from params.yaml only --------------------------------------------------

OPTIONAL_BY_DESIGN = {("VariantConfig", "set"), ("VariantConfig", "members")}
"""Parts of a variant's definition that a variant may leave out (``patch_ae`` has no
``set``, only an ensemble has ``members``): structure, not settings with a value."""


def _nested_sections(annotation: Any) -> Iterator[type[Section]]:
    """The Section classes inside ``X``, ``X | None``, ``list[X]``, ``dict[str, X]``."""
    if isinstance(annotation, type) and issubclass(annotation, Section):
        yield annotation
        return
    for arg in getattr(annotation, "__args__", ()):
        yield from _nested_sections(arg)


def _schema_tree(*roots: type[Section]) -> set[type[Section]]:
    seen: set[type[Section]] = set()
    todo = list(roots)
    while todo:
        schema = todo.pop()
        if schema in seen:
            continue
        seen.add(schema)
        for field in schema.model_fields.values():
            todo.extend(_nested_sections(field.annotation))
    return seen


def all_schemas() -> set[type[Section]]:
    """Every section of reconad.config and every family's ``Config`` tree."""
    in_config = [
        value
        for value in vars(config_module).values()
        if isinstance(value, type) and issubclass(value, Section) and value is not Section
    ]
    families = [family_config(name) for name in FAMILIES]
    return _schema_tree(config_module.Params, *in_config, *families)


def test_the_schema_walk_reaches_every_family_and_building_block() -> None:
    names = {f"{schema.__module__}.{schema.__qualname__}" for schema in all_schemas()}
    for expected in (
        "reconad.config.Params",
        "reconad.config.DatasetConfig",
        "reconad.config.FitConfig",
        "reconad.config.Phase",
        "reconad.config.InputConfig",
        "reconad.models.sdc_ae.Config",
        "reconad.models.sdc_ae.LossConfig",
        "reconad.models.aesc.CorruptionConfig",
        "reconad.models.patch_ae.NetworkConfig",
        "reconad.models.ensemble.Config",
        "reconad.memory_bank.BankConfig",
        "reconad.memory_bank.KnnScoreConfig",
        "reconad.corrupt.elastic.ElasticConfig",
        "reconad.corrupt.cutpaste.CutPasteConfig",
    ):
        assert expected in names


def test_no_schema_field_has_a_default() -> None:
    with_default = [
        f"{schema.__module__}.{schema.__qualname__}.{name}"
        for schema in all_schemas()
        for name, field in schema.model_fields.items()
        if not field.is_required() and (schema.__name__, name) not in OPTIONAL_BY_DESIGN
    ]
    assert with_default == []


def test_a_missing_key_is_an_error_not_a_default() -> None:
    raw = repo_raw()
    del raw["sdc_ae"]["network"]["sdc_kernel"]
    params = params_from_dict(raw)
    message = one_line_error(lambda: params.family("sdc_ae"))
    assert message == "params.yaml: sdc_ae.network.sdc_kernel: required key is missing"
    raw = repo_raw()
    del raw["evaluate"]["examples"]
    assert one_line_error(lambda: params_from_dict(raw)).endswith(
        "evaluate.examples: required key is missing"
    )


# --- shared sections: refused on loading ---------------------------------------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"dataset__image_size": "big"}, "dataset.image_size: Input should be a valid integer"),
        ({"dataset__image_size": 100}, "dataset.image_size: Input should be a multiple of 8"),
        (
            {"dataset__name": "imagenet"},
            "dataset.name: Input should be 'textures', 'mvtec_ad' or 'folder'",
        ),
        (
            {"dataset__augment": {"brick": {"rot90": True, "hflip": True, "vflip": True}}},
            "dataset.augment: needs a 'default' entry",
        ),
        (
            {"train__batch_size": 4},
            "train.batch_size: unknown key (allowed: distribute, jit_compile, max_minutes, "
            "mixed_precision)",
        ),
        (
            {"train__max_minutes": -1},
            "train.max_minutes: Input should be greater than or equal to 0",
        ),
        (
            {"train__mixed_precision": True},
            "train.mixed_precision: Input should be 'none', 'float16' or 'bfloat16'",
        ),
        (
            {"calibrate__rule": "top"},
            "calibrate.rule: Input should be 'components', 'percentile' or 'fpr'",
        ),
        (
            {"calibrate__min_defect_area_px": {"brick": 16}},
            "calibrate.min_defect_area_px: needs a 'default' entry",
        ),
        ({"run__sdc_ae": ["sdc_nope"]}, "run.sdc_ae: unknown variant 'sdc_nope'"),
        ({"run__vae": []}, "run.vae: unknown method family (allowed: sdc_ae, aesc"),
        (
            {"variants__sdc_model2__method": "vae"},
            "variants.sdc_model2.method: unknown method family 'vae' (allowed: sdc_ae, aesc",
        ),
        (
            {"run__ensemble": ["sdc_ensemble"]},
            "run.ensemble: 'sdc_ensemble' needs its member 'sdc_contrast' in run.sdc_ae",
        ),
        (
            {"variants__sdc_ensemble__members": ["sdc_restore"]},
            "variants.sdc_ensemble.members: an ensemble needs at least 2 variants",
        ),
        (
            {"variants__sdc_ensemble__members": ["sdc_restore", "sdc_nope"]},
            "variants.sdc_ensemble.members: unknown variant 'sdc_nope'",
        ),
        (
            {"variants__sdc_ensemble__members": ["sdc_restore", "sdc_ensemble"]},
            "variants.sdc_ensemble.members: 'sdc_ensemble' is itself an ensemble",
        ),
        (
            {"variants__sdc_restore__members": ["sdc_contrast"]},
            "variants.sdc_restore.members: only an 'ensemble' variant has members",
        ),
    ],
)
def test_invalid_values_name_the_key(tmp_path: Path, change: dict, expected: str) -> None:
    path = write_params(tmp_path, changed(**change))
    message = one_line_error(lambda: load_params(path))
    assert message.startswith(f"{path}: "), message
    assert expected in message


def test_an_unknown_top_level_key_lists_the_sections_and_family_blocks(tmp_path: Path) -> None:
    path = write_params(tmp_path, changed(trian={"epochs": 1}))
    message = one_line_error(lambda: load_params(path))
    sections = ["calibrate", "dataset", "evaluate", "profile", "profiles", "run", "score"]
    sections += ["seed", "tracking", "train", "variants"]
    blocks = [block for entry in FAMILIES.values() for block in entry.blocks]
    assert "patchcore" in blocks and "loss" in blocks
    allowed = ", ".join(sorted({*sections, *blocks}))
    assert message == f"{path}: trian: unknown key (allowed: {allowed})"


# --- family blocks: validated by the family's schema, errors name the key as written -----

FAMILY_ERRORS: list[tuple[str, Mutation, str, str]] = [
    (
        "sdc_ae",
        lambda raw: raw["sdc_ae"]["network"].update(width=9),
        "sdc_ae.network.width: Input should be less than or equal to 4 (got 9)",
        "sdc_ae.network.width",
    ),
    (
        "sdc_ae",
        lambda raw: raw["sdc_ae"]["network"].update(architecture="model3"),
        "sdc_ae.network.architecture: Input should be 'model1' or 'model2'",
        "sdc_ae.network.architecture",
    ),
    (
        "sdc_ae",
        lambda raw: raw["sdc_ae"]["train"].update(batchsize=4),
        "sdc_ae.train.batchsize: unknown key (allowed: augment, batch_size, learning_rate, "
        "lr_schedule, monitor, patience, phases, precise_bn, steps_per_epoch, "
        "synthetic_defects)",
        "sdc_ae.train.batchsize",
    ),
    (
        "sdc_ae",
        lambda raw: raw["sdc_ae"]["train"].update(phases=[{"crop": 32, "epochs": 0}]),
        "Input should be greater than 0 (got 0)",
        "sdc_ae.train.phases[0].epochs",
    ),
    (
        "sdc_ae",
        lambda raw: raw["sdc_ae"]["train"].update(lr_schedule="step"),
        "sdc_ae.train.lr_schedule: Input should be 'constant' or 'cosine'",
        "sdc_ae.train.lr_schedule",
    ),
    (
        "sdc_ae",
        lambda raw: raw["sdc_ae"]["corruption"].update(size_min_px=100),
        "sdc_ae.corruption.size_min_px: must be <= size_max_px",
        "sdc_ae.corruption.size_min_px",
    ),
    (
        "sdc_ae",
        lambda raw: raw["loss"].update({"lambda": 1.5}),
        "loss.lambda: Input should be less than or equal to 1 (got 1.5)",
        "loss.lambda",
    ),
    (
        "sdc_ae",
        lambda raw: raw["loss"].update(objective="rebuild"),
        "loss.objective: Input should be 'restore' or 'contrast'",
        "loss.objective",
    ),
    (
        "sdc_ae",
        lambda raw: raw["sdc_ae"].update(loss={"objective": "restore", "lambda": 0.5}),
        "sdc_ae.loss: set it in the top-level 'loss' block",
        "sdc_ae.loss",
    ),
    (
        "sdc_ae",
        lambda raw: raw.pop("loss"),
        "loss: the block is missing (method family 'sdc_ae' reads it)",
        "loss",
    ),
    (
        "aesc",
        lambda raw: raw["aesc"]["network"].update(dropout=[0.1]),
        "aesc.network.dropout: needs one rate per depth (6), got 1",
        "aesc.network.dropout",
    ),
    (
        "aesc",
        lambda raw: raw["aesc"]["corruption"].update(model="paint"),
        "aesc.corruption.model: Input should be",
        "aesc.corruption.model",
    ),
    (
        "patch_ae",
        lambda raw: raw["patch_ae"]["loss"].update(alpha=2),
        "patch_ae.loss.alpha: Input should be less than or equal to 1 (got 2)",
        "patch_ae.loss.alpha",
    ),
    (
        "patch_ae",
        lambda raw: raw["patch_ae"]["bank"].update(coreset_fraction=0),
        "patch_ae.bank.coreset_fraction: Input should be greater than 0",
        "patch_ae.bank.coreset_fraction",
    ),
    (
        "ensemble",
        lambda raw: raw["ensemble"].update(image_score="mean"),
        "ensemble.image_score: Input should be 'max' or 'top_q_mean' (got 'mean')",
        "ensemble.image_score",
    ),
]


@pytest.mark.parametrize(
    ("family", "mutate", "expected", "key"),
    FAMILY_ERRORS,
    ids=[case[3] for case in FAMILY_ERRORS],
)
def test_family_blocks_are_validated_by_their_schema(
    family: str, mutate: Mutation, expected: str, key: str
) -> None:
    raw = repo_raw()
    mutate(raw)
    params = params_from_dict(raw)  # family blocks are validated on first use
    message = one_line_error(lambda: params.family(family)).removeprefix("params.yaml: ")
    assert message.startswith(f"{key}:") or message.startswith(f"{key}."), message
    assert expected in message


def test_family_configs_are_the_family_schemas_and_cached() -> None:
    params = load_params(REPO_PARAMS)
    for family in FAMILIES:
        config = params.family(family)
        assert type(config) is family_config(family)
        assert params.family(family) is config
    sdc = params.family("sdc_ae")
    assert (sdc.loss.objective, sdc.network.architecture) == ("restore", "model1")
    assert params.family("aesc").corruption.model == "stain"
    assert params.family("patch_ae").loss.alpha == pytest.approx(0.5)
    assert params.family("ensemble").image_score == "max"


# --- variants ------------------------------------------------------------------------------


def test_variant_overrides_apply(tmp_path: Path) -> None:
    raw = changed(
        variants={"v": {"method": "sdc_ae", "set": {"loss.objective": "contrast"}}},
        run={"sdc_ae": ["v"]},
    )
    path = write_params(tmp_path, raw)
    assert load_params(path).family("sdc_ae").loss.objective == "restore"
    assert load_params(path, variant="v").family("sdc_ae").loss.objective == "contrast"


def test_repository_variants_set_their_own_keys() -> None:
    contrast = load_params(REPO_PARAMS, variant="sdc_contrast").family("sdc_ae")
    assert (contrast.loss.objective, contrast.loss.lambda_) == ("contrast", pytest.approx(0.99))
    assert contrast.train.patience == 6
    assert (contrast.train.monitor, contrast.train.synthetic_defects) == ("synthetic", "mix1")
    assert load_params(REPO_PARAMS, variant="sdc_model2").family("sdc_ae").network.architecture == (
        "model2"
    )
    ae = load_params(REPO_PARAMS, variant="ae_stain").family("aesc")
    assert (ae.network.skips, ae.corruption.model) == (False, "stain")


def test_for_variant_applies_a_members_overrides() -> None:
    params = load_params(REPO_PARAMS, variant="sdc_ensemble")
    member = params.for_variant("sdc_contrast").family("sdc_ae")
    assert member.loss.lambda_ == pytest.approx(0.99)
    assert params.family("sdc_ae").loss.lambda_ == pytest.approx(0.5)
    assert member.network.width == params.family("sdc_ae").network.width == 0.25


def test_variant_override_of_unknown_key_fails(tmp_path: Path) -> None:
    raw = changed(
        variants={"v": {"method": "sdc_ae", "set": {"loss.lamda": 0.1}}},
        run={"sdc_ae": ["v"]},
    )
    path = write_params(tmp_path, raw)
    message = one_line_error(lambda: load_params(path, variant="v"))
    assert "variants.v.set: unknown key 'loss.lamda'" in message
    assert "lambda" in message


def test_unknown_variant_names_the_defined_ones() -> None:
    message = one_line_error(lambda: load_params(REPO_PARAMS, variant="nope"))
    assert "unknown variant 'nope'" in message and "sdc_restore" in message


# --- profiles ------------------------------------------------------------------------------


def test_a_null_takes_the_active_profiles_value() -> None:
    raw = repo_raw()
    assert raw["dataset"]["image_size"] is None
    assert raw["sdc_ae"]["network"]["width"] is None
    assert raw["sdc_ae"]["train"]["phases"] is None
    params = params_from_dict(raw)
    assert params.dataset.image_size == 128
    sdc = params.family("sdc_ae")
    assert sdc.network.width == 0.25
    assert sdc.network.dilations == [1, 2, 4, 8]
    assert [(phase.crop, phase.epochs) for phase in sdc.train.phases] == [(64, 10), (128, 4)]
    assert params.family("aesc").train.phases[0].crop == 0
    assert params.family("patch_ae").bank.coreset_fraction == pytest.approx(0.1)
    assert params.raw()["sdc_ae"]["network"]["width"] == 0.25


@pytest.mark.parametrize(
    ("profile", "size", "width", "crops"),
    [
        ("quick", 128, 0.25, [64, 128]),
        ("cpu", 256, 0.25, [64, 128, 256]),
        ("paper", 512, 1.0, [128, 256, 512]),
    ],
)
def test_switching_profile_changes_the_filled_values(
    tmp_path: Path, profile: str, size: int, width: float, crops: list[int]
) -> None:
    params = load_params(write_params(tmp_path, changed(profile=profile)))
    assert params.dataset.image_size == size
    sdc = params.family("sdc_ae")
    assert sdc.network.width == width
    assert [phase.crop for phase in sdc.train.phases] == crops


@pytest.mark.parametrize("profile", PROFILES)
def test_an_explicit_value_in_the_file_wins_over_the_profile(profile: str) -> None:
    raw = changed(profile=profile, dataset__image_size=64)
    raw["sdc_ae"]["network"]["width"] = 0.75
    raw["sdc_ae"]["train"]["phases"] = [{"crop": 32, "epochs": 1}]
    params = params_from_dict(raw)
    assert params.dataset.image_size == 64
    sdc = params.family("sdc_ae")
    assert sdc.network.width == 0.75
    assert [(phase.crop, phase.epochs) for phase in sdc.train.phases] == [(32, 1)]
    # the keys left null are still filled by that profile
    assert sdc.network.dilations == raw["profiles"][profile]["sdc_ae"]["network"]["dilations"]


def test_a_value_that_wins_over_the_profile_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A profile line that never applies is said, not silent (the cpu profile's AESc batch
    of 4 went unused for a day); the repository's own params shadow nothing."""
    with caplog.at_level(logging.INFO, logger="reconad"):
        params_from_dict(changed(profile="cpu"), "aesc_stain")
        assert "wins over" not in caplog.text
        params = params_from_dict(changed(profile="cpu", aesc__train__batch_size=16), "aesc_stain")
    assert params.family("aesc").train.batch_size == 16
    assert "aesc.train.batch_size: 16 wins over profiles.cpu's 4" in caplog.text


@pytest.mark.parametrize("variant", [None, "sdc_restore", "patch_ae"])
def test_a_value_that_wins_over_the_profile_is_logged_only_where_it_is_read(
    variant: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    """fetch, prepare and the other families' stages do not repeat AESc's line."""
    raw = changed(profile="cpu", aesc__train__batch_size=16, train__max_minutes=10)
    with caplog.at_level(logging.INFO, logger="reconad"):
        params_from_dict(raw, variant)
    assert "aesc.train.batch_size" not in caplog.text
    assert "train.max_minutes: 10 wins over profiles.cpu's 25" in caplog.text


def test_a_value_set_by_a_variant_wins_over_the_profile() -> None:
    raw = repo_raw()
    raw["variants"]["wide"] = {
        "method": "sdc_ae",
        "set": {"sdc_ae.network.width": 0.75, "sdc_ae.train.learning_rate": 0.01},
    }
    sdc = params_from_dict(raw, "wide").family("sdc_ae")
    assert (sdc.network.width, sdc.train.learning_rate) == (0.75, 0.01)
    assert params_from_dict(raw).family("sdc_ae").network.width == 0.25


def test_an_unknown_profile_is_one_line_naming_it(tmp_path: Path) -> None:
    path = write_params(tmp_path, changed(profile="huge"))
    message = one_line_error(lambda: load_params(path))
    assert message == f"{path}: profile: unknown profile 'huge' (allowed: cpu, paper, quick)"


def test_a_profile_key_missing_from_the_file_is_one_line_naming_it(tmp_path: Path) -> None:
    raw = repo_raw()
    raw["profiles"]["quick"]["sdc_ae"]["network"]["widht"] = 0.5
    path = write_params(tmp_path, raw)
    message = one_line_error(lambda: load_params(path))
    assert message == f"{path}: profiles.quick: unknown key 'sdc_ae.network.widht'"


def test_a_profile_may_nest_its_keys_or_write_them_dotted() -> None:
    nested = repo_raw()
    nested["profiles"]["quick"]["sdc_ae"]["network"]["width"] = 0.5
    dotted = repo_raw()
    del dotted["profiles"]["quick"]["sdc_ae"]["network"]["width"]
    dotted["profiles"]["quick"]["sdc_ae.network.width"] = 0.5
    for raw in (nested, dotted):
        assert params_from_dict(raw).family("sdc_ae").network.width == 0.5


def test_a_null_no_profile_fills_is_one_line_naming_the_key(tmp_path: Path) -> None:
    raw = repo_raw()
    del raw["profiles"]["quick"]["sdc_ae"]["network"]["width"]
    params = params_from_dict(raw)
    message = one_line_error(lambda: params.family("sdc_ae"))
    assert message.startswith("params.yaml: sdc_ae.network.width: null"), message
    raw = repo_raw()
    del raw["profiles"]["quick"]["dataset"]["image_size"]
    path = write_params(tmp_path, raw)
    message = one_line_error(lambda: load_params(path))
    assert message.startswith(f"{path}: dataset.image_size: null"), message


def test_a_bad_profile_value_is_refused_like_any_other(tmp_path: Path) -> None:
    raw = repo_raw()
    raw["profiles"]["quick"]["sdc_ae"]["network"]["width"] = 9
    message = one_line_error(lambda: params_from_dict(raw).family("sdc_ae"))
    assert message.startswith(
        "params.yaml: sdc_ae.network.width: Input should be less than or equal to 4"
    )
    raw["profiles"]["quick"]["dataset"]["image_size"] = 100
    path = write_params(tmp_path, raw)
    message = one_line_error(lambda: load_params(path))
    assert message.startswith(f"{path}: dataset.image_size: Input should be a multiple of 8")


# --- pixel settings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "area"), [(256, 64), (128, 16), (512, 256), (64, 4), (32, 1), (96, 9)]
)
def test_min_area_scales_with_the_square_of_the_side(size: int, area: int) -> None:
    calibrate = load_params(REPO_PARAMS).calibrate
    assert calibrate.min_defect_area_px == {"default": 64}
    assert calibrate.min_area_for("brick", size) == area


def test_min_area_has_per_category_entries_and_at_least_one_pixel() -> None:
    raw = changed(calibrate__min_defect_area_px={"default": 64, "grass": 1000})
    calibrate = params_from_dict(raw).calibrate
    assert calibrate.min_area_for("grass", 128) == 250
    assert calibrate.min_area_for("brick", 128) == 16
    raw = changed(calibrate__min_defect_area_px={"default": 1})
    assert params_from_dict(raw).calibrate.min_area_for("brick", 32) == 1


def test_scaled_is_pixels_at_the_reference_size() -> None:
    assert REFERENCE_SIZE == 256
    assert scaled(4.0, 256) == pytest.approx(4.0)
    assert scaled(4.0, 128) == pytest.approx(2.0)
    assert scaled(8.0, 512) == pytest.approx(16.0)
    assert scaled(20, 32) == pytest.approx(2.5)


# --- files and immutability ----------------------------------------------------------------


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    message = one_line_error(lambda: load_params(tmp_path / "absent.yaml"))
    assert "cannot read params file" in message


def test_params_are_immutable() -> None:
    params = load_params(REPO_PARAMS)
    with pytest.raises(ValidationError, match="frozen"):
        params.dataset.image_size = 64  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        params.family("sdc_ae").loss.objective = "contrast"  # type: ignore[misc]


def test_params_from_dict_does_not_change_its_input() -> None:
    raw = repo_raw()
    before = copy.deepcopy(raw)
    params_from_dict(raw, "sdc_contrast")
    assert raw == before


def test_schemas_are_pydantic_sections() -> None:
    # guards the schema walk above: a family Config that is not a Section would be skipped
    for name in FAMILIES:
        schema = family_config(name)
        assert issubclass(schema, Section) and issubclass(schema, pydantic.BaseModel)
