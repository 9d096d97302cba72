"""Ensembles: the mean of standardised member maps, assembled from trained members only.

Unit tests pin the arithmetic on stand-in detectors; one module-scoped tiny run (two
SDC-AE members, ~20 s on one core) drives ``reconad`` through the ensemble's stages as
``dvc repro`` would and checks the files, the maps and ``predict``.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline_fixtures import (
    TINY_CATEGORY,
    CliResult,
    in_project,
    run_cli,
    tiny_params,
    write_yaml,
)
from reconad.config import load_params
from reconad.ensemble import MAP_NAME, EnsembleDetector, Member
from reconad.errors import ReconadError
from reconad.score import load_trained, score_images

MEMBERS = ("sdc_restore", "sdc_contrast")
ENSEMBLE = "sdc_ensemble"
ENSEMBLE_DIR = Path("ensembles") / ENSEMBLE / TINY_CATEGORY
GOOD_DIR = Path("data/prepared") / TINY_CATEGORY / "test" / "good"


class ScaledDetector:
    """Stand-in detector: its one map is the image's first channel times ``scale``."""

    map_names = ("residual",)

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def anomaly_maps(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return {"residual": images[..., 0] * self.scale}

    def image_scores(self, maps: np.ndarray) -> np.ndarray:
        return maps.reshape(len(maps), -1).max(axis=1)


def test_ensemble_map_is_the_mean_of_standardised_member_maps() -> None:
    images = np.random.default_rng(0).random((3, 8, 8, 1)).astype(np.float32)
    members = [
        Member(ScaledDetector(1.0), "residual", mean=0.5, std=0.25),
        Member(ScaledDetector(100.0), "residual", mean=50.0, std=25.0),
    ]
    maps = EnsembleDetector(members).anomaly_maps(images)
    expected = (images[..., 0] - 0.5) / 0.25
    np.testing.assert_allclose(maps[MAP_NAME], expected, rtol=1e-5, atol=1e-6)


def test_louder_member_does_not_dominate() -> None:
    """Standardising puts a 1000x louder but equally informative member on the same scale."""
    images = np.random.default_rng(1).random((2, 8, 8, 1)).astype(np.float32)
    quiet = Member(ScaledDetector(1.0), "residual", mean=0.0, std=1.0)
    loud = Member(ScaledDetector(1000.0), "residual", mean=0.0, std=1000.0)
    maps = EnsembleDetector([quiet, loud]).anomaly_maps(images)[MAP_NAME]
    np.testing.assert_allclose(maps, images[..., 0], rtol=1e-5, atol=1e-6)


def test_image_scores_follow_the_first_member() -> None:
    maps = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    members = [Member(ScaledDetector(1.0), "residual", 0.0, 1.0)] * 2
    np.testing.assert_array_equal(EnsembleDetector(members).image_scores(maps), [15.0, 31.0])


def test_one_member_is_refused() -> None:
    with pytest.raises(ReconadError, match="at least 2 members"):
        EnsembleDetector([Member(ScaledDetector(1.0), "residual", 0.0, 1.0)])


@dataclass(frozen=True)
class EnsembleRun:
    workdir: Path
    results: dict[str, CliResult]
    no_run_left_open: bool

    def json(self, relative: Path | str) -> dict:
        return json.loads((self.workdir / relative).read_text(encoding="utf-8"))


def ensemble_params() -> dict:
    params = tiny_params()
    params["run"]["sdc_ae"] = list(MEMBERS)
    params["run"]["ensemble"] = [ENSEMBLE]
    return params


def selection(variant: str) -> tuple[str, ...]:
    return ("--variant", variant, "--category", TINY_CATEGORY)


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnsembleRun]:
    """fetch, prepare, train and calibrate both members, then the ensemble's stages;
    plus two mistakes: calibrating before a member is calibrated, training an ensemble."""
    workdir = tmp_path_factory.mktemp("ensemble")
    write_yaml(workdir / "params.yaml", ensemble_params())
    steps: dict[str, tuple[str, ...]] = {"fetch": ("fetch",), "prepare": ("prepare",)}
    for member in MEMBERS:
        steps[f"train {member}"] = ("train", *selection(member))
    steps["early calibrate"] = ("calibrate", *selection(ENSEMBLE))
    for member in MEMBERS:
        steps[f"calibrate {member}"] = ("calibrate", *selection(member))
    steps["calibrate"] = ("calibrate", *selection(ENSEMBLE))
    steps["evaluate"] = ("evaluate", *selection(ENSEMBLE))
    steps["train"] = ("train", *selection(ENSEMBLE))
    steps["predict"] = (
        "predict",
        "--model",
        str(ENSEMBLE_DIR),
        "--input",
        str(GOOD_DIR),
        "--output",
        "predictions",
    )
    results: dict[str, CliResult] = {}
    import mlflow

    with in_project(workdir, f"sqlite:///{workdir / 'mlflow.db'}"):
        for name, argv in steps.items():
            results[name] = run_cli(argv)
        left_open = mlflow.active_run()
        mlflow.end_run()
    yield EnsembleRun(workdir, results, left_open is None)


EXPECTED_FAILURES = ("early calibrate", "train")


def test_every_stage_of_a_correct_order_exits_zero(ensemble_run: EnsembleRun) -> None:
    failed = {
        name: r.stderr[-300:]
        for name, r in ensemble_run.results.items()
        if r.code != 0 and name not in EXPECTED_FAILURES
    }
    assert not failed


def test_uncalibrated_member_is_one_line_naming_its_threshold_file(
    ensemble_run: EnsembleRun,
) -> None:
    result = ensemble_run.results["early calibrate"]
    assert result.code == 1
    message = result.stderr.strip()
    assert "\n" not in message
    assert f"models/sdc_restore/{TINY_CATEGORY}/threshold.json" in message
    assert "not trained and calibrated" in message


def test_training_an_ensemble_is_refused(ensemble_run: EnsembleRun) -> None:
    result = ensemble_run.results["train"]
    assert result.code == 1
    assert "an ensemble is not trained" in result.stderr


def test_ensemble_file_keeps_relative_member_paths_and_validation_scales(
    ensemble_run: EnsembleRun,
) -> None:
    description = ensemble_run.json(ENSEMBLE_DIR / "ensemble.json")
    assert [m["variant"] for m in description["members"]] == list(MEMBERS)
    for member in description["members"]:
        assert not Path(member["directory"]).is_absolute()
        model_dir = Path("models") / member["variant"] / TINY_CATEGORY
        calibration = ensemble_run.json(model_dir / "threshold.json")
        stats = calibration["maps"][calibration["primary"]]["stats"]
        assert (member["mean"], member["std"]) == (stats["mean"], stats["std"])
        assert member["map"] == calibration["primary"]


def test_ensemble_scores_equal_the_members_combined(ensemble_run: EnsembleRun) -> None:
    params = load_params(ensemble_run.workdir / "params.yaml", variant=ENSEMBLE)
    ensemble = load_trained(ensemble_run.workdir / ENSEMBLE_DIR, params.score)
    images = np.random.default_rng(2).random((2, 32, 32, 1)).astype(np.float32)
    combined = np.zeros((2, 32, 32), np.float32)
    for member in ensemble.description["members"]:
        trained = load_trained(ensemble_run.workdir / "models" / member["variant"] / TINY_CATEGORY)
        raw = score_images(trained.detector, images).maps[member["map"]]
        combined += (raw - member["mean"]) / member["std"] / len(MEMBERS)
    maps = score_images(ensemble.detector, images).maps
    np.testing.assert_allclose(maps[MAP_NAME], combined, rtol=1e-4, atol=1e-5)


def test_ensemble_is_calibrated_and_evaluated_like_a_model(ensemble_run: EnsembleRun) -> None:
    calibration = ensemble_run.json(ENSEMBLE_DIR / "threshold.json")
    assert calibration["primary"] == MAP_NAME
    metrics = ensemble_run.json(Path("reports/eval") / ENSEMBLE / TINY_CATEGORY / "metrics.json")
    assert metrics["primary"] == MAP_NAME
    assert 0.0 <= metrics[MAP_NAME]["image_auroc"] <= 1.0


def test_test_metrics_go_to_a_run_of_the_ensemble_and_no_run_stays_open(
    ensemble_run: EnsembleRun,
) -> None:
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{ensemble_run.workdir / 'mlflow.db'}")
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.variant = '{ENSEMBLE}'",
    )
    assert len(runs) == 1
    assert runs[0].data.tags["method"] == "ensemble"
    assert f"test_{MAP_NAME}_image_auroc" in runs[0].data.metrics
    assert ensemble_run.no_run_left_open


def test_predict_scores_like_evaluate(ensemble_run: EnsembleRun) -> None:
    """Predict on the test normals reproduces the scores evaluate wrote for them."""
    scores_csv = Path("reports/eval") / ENSEMBLE / TINY_CATEGORY / "scores.csv"
    rows = {
        row["image"]: float(row["score"])
        for row in csv.DictReader((ensemble_run.workdir / scores_csv).open(encoding="utf-8"))
    }
    records = [json.loads(line) for line in ensemble_run.results["predict"].stdout.splitlines()]
    assert len(records) == len(list((ensemble_run.workdir / GOOD_DIR).glob("*.png")))
    for record in records:
        name = Path(record["image"]).relative_to(GOOD_DIR.parent.parent).as_posix()
        assert record["map"] == MAP_NAME
        assert record["score"] == pytest.approx(rows[name], rel=1e-4), name


def test_ensemble_directory_still_loads_after_the_project_moves(
    ensemble_run: EnsembleRun, tmp_path: Path
) -> None:
    moved = tmp_path / "moved"
    for folder in ("models", "ensembles"):
        shutil.copytree(ensemble_run.workdir / folder, moved / folder)
    trained = load_trained(moved / ENSEMBLE_DIR)
    assert trained.detector.map_names == (MAP_NAME,)
    assert trained.image_size == 32


def fake_member(root: Path, name: str, image_size: int, std: float) -> None:
    """The two files ``assemble`` reads from a member: its description and calibration."""
    model_dir = root / name / TINY_CATEGORY
    (model_dir / "model").mkdir(parents=True)
    description = {"method": "sdc_ae", "image_size": image_size, "channels": 1}
    (model_dir / "model" / "config.json").write_text(json.dumps(description))
    stats = {"mean": 0.1, "std": std}
    calibration = {"primary": "residual", "maps": {"residual": {"stats": stats}}}
    (model_dir / "threshold.json").write_text(json.dumps(calibration))


@pytest.mark.parametrize(
    ("sizes", "stds", "message"),
    [
        ((32, 64), (0.1, 0.1), "trained for different image sizes or channels"),
        ((32, 32), (0.1, 0.0), "is constant on validation images"),
    ],
)
def test_assemble_refuses_members_it_cannot_combine(
    tmp_path: Path, sizes: tuple[int, int], stds: tuple[float, float], message: str
) -> None:
    from reconad.ensemble import assemble

    for name, size, std in zip(MEMBERS, sizes, stds, strict=True):
        fake_member(tmp_path / "models", name, size, std)
    params = load_params(write_yaml(tmp_path / "params.yaml", ensemble_params()))
    out_dir = tmp_path / "ensemble"
    with pytest.raises(ReconadError, match=message):
        assemble(params, ENSEMBLE, TINY_CATEGORY, tmp_path / "models", out_dir)
    assert not (out_dir / "ensemble.json").exists()
