"""The whole pipeline as a user runs it: every ``reconad`` stage, in order, on a tiny dataset.

One module-scoped run (fetch -> prepare -> train -> calibrate -> evaluate -> report ->
metrics -> predict, about 30 s on one core) in a temporary project folder, with MLflow
tracking into a SQLite file outside it; each test then checks one promise of one stage
against the files, the printed output and the MLflow store.
"""

from __future__ import annotations

import base64
import csv
import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pipeline_fixtures import (
    TINY_CATEGORY,
    TINY_EPOCHS,
    TINY_VARIANT,
    CliResult,
    in_project,
    run_cli,
    tiny_params,
    venv_executable,
    write_yaml,
)

CATEGORY_DIR = Path("data/prepared") / TINY_CATEGORY
MODEL_DIR = Path("models") / TINY_VARIANT / TINY_CATEGORY
EVAL_DIR = Path("reports/eval") / TINY_VARIANT / TINY_CATEGORY
PREDICTIONS_DIR = Path("predictions")
PRIMARY_MAP = "residual"
TEST_IMAGES = 16  # textures test_good 6 + test_defect 10
TEST_DEFECTS = 10
REPORT_METRICS = (
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "tpr",
    "tnr",
    "tpr_tnr_mean",
    "image_f1",
    "pixel_f1",
    "training_minutes",
    "ms_per_image",
)
SELECTION = ("--variant", TINY_VARIANT, "--category", TINY_CATEGORY)
STAGES: tuple[tuple[str, ...], ...] = (
    ("fetch",),
    ("prepare",),
    ("train", *SELECTION),
    ("calibrate", *SELECTION),
    ("evaluate", *SELECTION),
    ("report",),
    ("metrics",),
    (
        "predict",
        "--model",
        str(MODEL_DIR),
        "--input",
        str(CATEGORY_DIR / "test"),
        "--output",
        str(PREDICTIONS_DIR),
    ),
)


@dataclass(frozen=True)
class PipelineRun:
    workdir: Path
    tracking_dir: Path
    results: dict[str, CliResult]
    seconds: dict[str, float]

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.tracking_dir / 'mlflow.db'}"

    def path(self, relative: Path | str) -> Path:
        return self.workdir / relative

    def json(self, relative: Path | str) -> dict:
        return json.loads(self.path(relative).read_text(encoding="utf-8"))


def run_stages(workdir: Path, tracking_dir: Path) -> PipelineRun:
    """Run every stage in ``workdir``, stopping at the first one that fails."""
    results: dict[str, CliResult] = {}
    seconds: dict[str, float] = {}
    with in_project(workdir, f"sqlite:///{tracking_dir / 'mlflow.db'}"):
        for argv in STAGES:
            start = time.perf_counter()
            results[argv[0]] = run_cli(argv)
            seconds[argv[0]] = time.perf_counter() - start
            if results[argv[0]].code != 0:
                break
    return PipelineRun(workdir, tracking_dir, results, seconds)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineRun]:
    root = tmp_path_factory.mktemp("pipeline")
    workdir, tracking_dir = root / "project", root / "tracking"
    workdir.mkdir()
    tracking_dir.mkdir()
    write_yaml(workdir / "params.yaml", tiny_params())
    run = run_stages(workdir, tracking_dir)
    timings = ", ".join(f"{name} {s:.1f}" for name, s in run.seconds.items())
    print(f"\npipeline stages (s): {timings}; total {sum(run.seconds.values()):.1f}")
    yield run


def failures(run: PipelineRun) -> str:
    return "\n".join(
        f"{name}: exit {r.code}: {r.stderr.strip()[-500:]}"
        for name, r in run.results.items()
        if r.code != 0
    )


def test_every_stage_exits_zero(pipeline: PipelineRun) -> None:
    codes = {name: result.code for name, result in pipeline.results.items()}
    assert codes == {argv[0]: 0 for argv in STAGES}, failures(pipeline)


@pytest.mark.parametrize(
    "relative",
    [
        "data/raw/manifest.json",
        CATEGORY_DIR / "split.json",
        MODEL_DIR / "model/model.keras",
        MODEL_DIR / "model/config.json",
        MODEL_DIR / "threshold.json",
        EVAL_DIR / "metrics.json",
        EVAL_DIR / "curves.json",
        EVAL_DIR / "scores.csv",
        EVAL_DIR / "defect_types.json",
        "reports/metrics.json",
        "reports/report.md",
        "reports/report.html",
        "reports/figures/roc.png",
        "reports/figures/pro.png",
        PREDICTIONS_DIR / "predictions.jsonl",
    ],
    ids=str,
)
def test_stage_output_exists(pipeline: PipelineRun, relative: Path | str) -> None:
    path = pipeline.path(relative)
    assert path.is_file() and path.stat().st_size > 0, f"{relative}: missing or empty"


def test_model_config_describes_the_trained_model(pipeline: PipelineRun) -> None:
    config = pipeline.json(MODEL_DIR / "model/config.json")
    assert (config["variant"], config["method"], config["category"]) == (
        TINY_VARIANT,
        "sdc_ae",
        TINY_CATEGORY,
    )
    assert (config["image_size"], config["channels"]) == (32, 1)  # gravel textures are grey
    assert (config["prepared_size"], config["color"]) == (32, "grey")
    assert config["training_seconds"] > 0 and config["mlflow_run_id"]
    stored = config["params"]
    assert stored["sdc_ae"]["network"]["width"] == 0.125
    assert stored["sdc_ae"]["train"]["phases"] == [{"crop": 32, "epochs": TINY_EPOCHS}]
    assert stored["loss"] == {"objective": "restore", "lambda": 0.5}
    # stored after the profile filled the nulls: the model can be loaded without a profile
    assert stored["sdc_ae"]["network"]["dilations"] == [1, 2]
    assert stored["sdc_ae"]["score"]["sigma_px"] == 4.0


def test_calibration_stores_both_rules(pipeline: PipelineRun) -> None:
    calibration = pipeline.json(MODEL_DIR / "threshold.json")
    assert calibration["rule"] == "components"
    assert calibration["primary"] == PRIMARY_MAP
    assert calibration["validation_images"] == 6
    # calibrate.min_defect_area_px.default 64 at 256 px is 1 pixel at 32 px
    assert calibration["min_area"] == 1
    assert (calibration["target_fpr"], calibration["percentile"]) == (0.05, 99.5)
    assert calibration["params"] == pipeline.json(MODEL_DIR / "model/config.json")["params"]
    thresholds = calibration["maps"][PRIMARY_MAP]
    assert set(thresholds) == {"components", "fpr", "percentile", "stats"}
    stats = thresholds["stats"]
    for rule in ("components", "fpr", "percentile"):
        assert math.isfinite(thresholds[rule])
        assert stats["min"] <= thresholds[rule] <= stats["max"], rule


def test_evaluation_metrics_are_finite_probabilities(pipeline: PipelineRun) -> None:
    summary = pipeline.json(EVAL_DIR / "metrics.json")
    assert (summary["variant"], summary["category"], summary["primary"]) == (
        TINY_VARIANT,
        TINY_CATEGORY,
        PRIMARY_MAP,
    )
    metrics = summary[PRIMARY_MAP]
    for name in REPORT_METRICS[:-2]:
        assert math.isfinite(metrics[name]) and 0.0 <= metrics[name] <= 1.0, name
    assert summary["rule"] == "components"
    description = pipeline.json(MODEL_DIR / "model" / "config.json")
    assert metrics["training_minutes"] == round(description["training_seconds"] / 60, 2)
    assert metrics["ms_per_image"] > 0
    assert metrics["tpr_tnr_mean"] == pytest.approx((metrics["tpr"] + metrics["tnr"]) / 2)
    calibration = pipeline.json(MODEL_DIR / "threshold.json")
    assert metrics["threshold"] == calibration["maps"][PRIMARY_MAP]["components"]
    assert metrics["min_area"] == calibration["min_area"]


def test_every_rule_is_measured_and_the_calibrated_one_is_the_reported(
    pipeline: PipelineRun,
) -> None:
    rules = pipeline.json(EVAL_DIR / "rules.json")[PRIMARY_MAP]
    calibration = pipeline.json(MODEL_DIR / "threshold.json")
    assert set(rules) == {"components", "fpr", "percentile"}
    for rule, values in rules.items():
        assert values["threshold"] == calibration["maps"][PRIMARY_MAP][rule]
    assert rules["percentile"]["min_area"] == 1
    reported = pipeline.json(EVAL_DIR / "metrics.json")[PRIMARY_MAP]
    decided = rules[calibration["rule"]]
    assert {k: reported[k] for k in decided} == decided
    report = pipeline.path("reports/report.md").read_text(encoding="utf-8")
    assert f"| {TINY_VARIANT} | {calibration['rule']} (decided) |" in report


def test_evaluation_scores_every_test_image(pipeline: PipelineRun) -> None:
    rows = read_scores(pipeline)
    assert len(rows) == TEST_IMAGES
    assert sum(int(row["label"]) for row in rows.values()) == TEST_DEFECTS
    assert all((row["defect"] == "good") == (row["label"] == "0") for row in rows.values())
    on_disk = {f"test/{p.as_posix()}" for p in prepared_test_images(pipeline).values()}
    assert set(rows) == on_disk


def test_evaluation_curves_and_examples(pipeline: PipelineRun) -> None:
    curves = pipeline.json(EVAL_DIR / "curves.json")[PRIMARY_MAP]
    assert curves["roc"]["fpr"][0] == 0.0 and curves["roc"]["tpr"][-1] == 1.0
    assert max(curves["pro"]["fpr"]) == pytest.approx(0.3)  # evaluate.max_fpr
    examples = sorted(pipeline.path(EVAL_DIR / "examples").glob("*.png"))
    # evaluate.examples = 1: the best and the worst image of each class.
    assert [p.name.split("_test_")[0] for p in examples] == [
        "best_defect",
        "best_good",
        "worst_defect",
        "worst_good",
    ]
    assert all(cv2.imread(str(p)) is not None for p in examples)


def test_defect_types_agree_with_the_scores_table(pipeline: PipelineRun) -> None:
    per_type = pipeline.json(EVAL_DIR / "defect_types.json")[PRIMARY_MAP]
    rows = list(read_scores(pipeline).values())
    good = [float(row["score"]) for row in rows if row["label"] == "0"]
    assert set(per_type) == {row["defect"] for row in rows if row["label"] == "1"}
    for defect, values in per_type.items():
        of_type = [row for row in rows if row["defect"] == defect]
        scores = good + [float(row["score"]) for row in of_type]
        expected = roc_auc_score([0] * len(good) + [1] * len(of_type), scores)
        assert values["images"] == len(of_type)
        assert values["image_auroc"] == pytest.approx(expected, abs=1e-5)
        assert values["detected"] == pytest.approx(
            np.mean([row["anomalous"] == "1" for row in of_type])
        )
    report = pipeline.path("reports/report.md").read_text(encoding="utf-8")
    assert "## By defect type" in report
    for defect in per_type:
        assert f"| {TINY_VARIANT} | {TINY_CATEGORY} | {defect} |" in report


def test_metrics_tree_rounds_the_evaluation(pipeline: PipelineRun) -> None:
    evaluation = pipeline.json(EVAL_DIR / "metrics.json")[PRIMARY_MAP]
    expected = {name: round(evaluation[name], 4) for name in REPORT_METRICS}
    tree = pipeline.json("reports/metrics.json")
    assert tree == {TINY_VARIANT: {TINY_CATEGORY: expected, "mean": expected}}


@pytest.mark.parametrize(("curve", "header"), [("roc", ["fpr", "tpr"]), ("pro", ["fpr", "pro"])])
def test_plot_data_for_dvc_plots(pipeline: PipelineRun, curve: str, header: list[str]) -> None:
    files = sorted(pipeline.path(f"reports/plots/{curve}").glob("*.csv"))
    assert [p.name for p in files] == [f"{TINY_VARIANT}__{TINY_CATEGORY}.csv"]
    with files[0].open(encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == header
    values = np.array(rows[1:], dtype=float)
    assert len(values) >= 2 and np.all((values >= 0.0) & (values <= 1.0))
    assert np.all(np.diff(values[:, 0]) >= 0.0), "fpr must not decrease"


def test_markdown_report_links_existing_images(pipeline: PipelineRun) -> None:
    text = pipeline.path("reports/report.md").read_text(encoding="utf-8")
    assert f"## {TINY_VARIANT}" in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == 2 + 4  # ROC and PRO figures, four examples
    for link in links:
        assert (pipeline.path("reports") / link).is_file(), link


def test_html_report_is_self_contained(pipeline: PipelineRun) -> None:
    text = pipeline.path("reports/report.html").read_text(encoding="utf-8")
    sources = re.findall(r'src="([^"]*)"', text)
    assert len(sources) == 2 + 4
    for source in sources:
        assert source.startswith("data:image/png;base64,"), source[:80]
        png = base64.b64decode(source.removeprefix("data:image/png;base64,"), validate=True)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert "href=" not in text
    assert f"<h2>{TINY_VARIANT}</h2>" in text


def test_metrics_command_prints_a_table(pipeline: PipelineRun) -> None:
    """The means side by side first (one variant: each is the best, marked), then each
    category."""
    lines = pipeline.results["metrics"].stdout.strip().splitlines()
    assert lines[0].split()[:5] == ["variant", "category", "image_auroc", "pixel_auroc", "aupro"]
    assert lines[0].split()[-2:] == ["training_minutes", "ms_per_image"]
    image_auroc = pipeline.json("reports/metrics.json")[TINY_VARIANT][TINY_CATEGORY]["image_auroc"]
    assert lines[1].split()[:4] == [TINY_VARIANT, "mean", f"{image_auroc:.3f}", "*"]
    assert lines[2].split()[:3] == [TINY_VARIANT, TINY_CATEGORY, f"{image_auroc:.3f}"]
    assert "*" not in lines[2]
    assert len(lines) == 3


def test_predict_writes_three_pngs_per_image(pipeline: PipelineRun) -> None:
    inputs = prepared_test_images(pipeline)
    written = {p.name for p in pipeline.path(PREDICTIONS_DIR).glob("*.png")}
    expected = {f"{stem}_{kind}.png" for stem in inputs for kind in ("heatmap", "overlay", "mask")}
    assert written == expected
    for name in expected:
        image = cv2.imread(str(pipeline.path(PREDICTIONS_DIR) / name), cv2.IMREAD_UNCHANGED)
        assert image is not None and image.shape[:2] == (32, 32), name


def test_predict_prints_one_json_line_per_image(pipeline: PipelineRun) -> None:
    lines = pipeline.results["predict"].stdout.strip().splitlines()
    records = [json.loads(line) for line in lines]
    assert {Path(r["image"]).as_posix() for r in records} == {
        (CATEGORY_DIR / "test" / p).as_posix() for p in prepared_test_images(pipeline).values()
    }
    threshold = pipeline.json(MODEL_DIR / "threshold.json")["maps"][PRIMARY_MAP]["components"]
    for record in records:
        assert {"image", "score", "threshold", "anomalous"} <= set(record)
        assert isinstance(record["anomalous"], bool) and math.isfinite(record["score"])
        assert record["threshold"] == threshold
    jsonl = pipeline.path(PREDICTIONS_DIR / "predictions.jsonl").read_text(encoding="utf-8")
    assert jsonl.strip().splitlines() == lines


def test_predict_agrees_with_evaluate(pipeline: PipelineRun) -> None:
    """Same model, same images: predict must reproduce evaluate's scores and verdicts,
    and flag exactly the images whose predicted mask is not empty."""
    rows = read_scores(pipeline)
    lines = pipeline.results["predict"].stdout.strip().splitlines()
    for record in map(json.loads, lines):
        name = Path(record["image"]).relative_to(CATEGORY_DIR).as_posix()
        assert record["score"] == pytest.approx(float(rows[name]["score"]), rel=1e-4), name
        assert record["anomalous"] == bool(int(rows[name]["anomalous"])), name
        mask = cv2.imread(str(pipeline.path(record["mask"])), cv2.IMREAD_GRAYSCALE)
        assert bool(mask.any()) == record["anomalous"], name


def test_mlflow_run_tracks_params_history_metrics_and_model(pipeline: PipelineRun) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=pipeline.tracking_uri)
    experiment = client.get_experiment_by_name("reconad")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_id == pipeline.json(MODEL_DIR / "model/config.json")["mlflow_run_id"]
    assert (run.data.tags["variant"], run.data.tags["category"]) == (TINY_VARIANT, TINY_CATEGORY)
    params = run.data.params
    assert (
        params["loss.objective"],
        params["loss.lambda"],
        params["sdc_ae.network.width"],
        params["sdc_ae.train.steps_per_epoch"],
        params["dataset.image_size"],
    ) == ("restore", "0.5", "0.125", "3", "32")
    untracked = ("aesc.", "patch_ae.", "ensemble.", "score.", "calibrate.", "evaluate.")
    assert not [k for k in params if k.startswith(untracked)]
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(TINY_EPOCHS))
    evaluation = pipeline.json(EVAL_DIR / "metrics.json")[PRIMARY_MAP]
    for name in REPORT_METRICS:
        tracked = run.data.metrics[f"test_{PRIMARY_MAP}_{name}"]
        assert tracked == pytest.approx(evaluation[name]), name
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert artifacts == {"model/model.keras", "model/config.json"}


def test_mlflow_artifacts_live_beside_the_database(pipeline: PipelineRun) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=pipeline.tracking_uri)
    experiment = client.get_experiment_by_name("reconad")
    artifacts = pipeline.tracking_dir / "mlartifacts"
    assert experiment.artifact_location == artifacts.as_uri()
    assert list(artifacts.glob("*/artifacts/model/model.keras"))
    assert not pipeline.path("mlruns").exists()
    assert not pipeline.path("mlartifacts").exists()


def test_training_leaves_no_checkpoints(pipeline: PipelineRun) -> None:
    leftovers = [p for p in pipeline.path(".reconad").rglob("*") if p.is_file()]
    assert leftovers == []


def test_calibrate_follows_the_score_params_of_params_yaml(
    pipeline: PipelineRun, tmp_path: Path
) -> None:
    workdir = tmp_path / "project"
    for relative in ("params.yaml", CATEGORY_DIR, MODEL_DIR):
        copy(pipeline.path(relative), workdir / relative)
    params = tiny_params()
    params["sdc_ae"]["score"]["smoothing"] = "none"
    write_yaml(workdir / "params.yaml", params)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        result = run_cli(("calibrate", *SELECTION))
    assert result.code == 0, result.stderr
    before = pipeline.json(MODEL_DIR / "threshold.json")["maps"][PRIMARY_MAP]
    after = json.loads((workdir / MODEL_DIR / "threshold.json").read_text())["maps"][PRIMARY_MAP]
    # Without the Gaussian smoothing the maps keep single-pixel peaks: the top grows.
    assert after["stats"]["max"] > before["stats"]["max"]


@pytest.fixture(scope="module")
def unknown_variant(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess:
    """``reconad train`` with a variant params.yaml does not define, as a user types it."""
    workdir = tmp_path_factory.mktemp("unknown_variant")
    write_yaml(workdir / "params.yaml", tiny_params())
    return subprocess.run(
        [
            str(venv_executable("reconad")),
            "train",
            "--variant",
            "no_such_variant",
            "--category",
            TINY_CATEGORY,
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_unknown_variant_exits_1_naming_it(unknown_variant: subprocess.CompletedProcess) -> None:
    assert unknown_variant.returncode == 1
    assert unknown_variant.stdout == ""
    last = unknown_variant.stderr.strip().splitlines()[-1]
    assert last.startswith("reconad: error:")
    assert "'no_such_variant'" in last and TINY_VARIANT in last  # and names the known ones


def test_unknown_variant_prints_only_the_error_line(
    unknown_variant: subprocess.CompletedProcess,
) -> None:
    assert len(unknown_variant.stderr.strip().splitlines()) == 1, unknown_variant.stderr


def read_scores(run: PipelineRun) -> dict[str, dict[str, str]]:
    with run.path(EVAL_DIR / "scores.csv").open(encoding="utf-8") as handle:
        return {row["image"]: row for row in csv.DictReader(handle)}


def prepared_test_images(run: PipelineRun) -> dict[str, Path]:
    """``{output stem: path relative to the test folder}``, as predict names its files."""
    test_dir = run.path(CATEGORY_DIR / "test")
    relative = [p.relative_to(test_dir) for p in test_dir.rglob("*.png")]
    return {p.with_suffix("").as_posix().replace("/", "__"): p for p in relative}


def copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy2(source, target)


@pytest.fixture(scope="module")
def tiff_predictions(pipeline: PipelineRun) -> Path:
    """``reconad predict --maps-format tiff`` on the prepared test images."""
    out = Path("predictions_tiff")
    argv = ["predict", "--model", str(MODEL_DIR), "--input", str(CATEGORY_DIR / "test")]
    with in_project(pipeline.workdir, pipeline.tracking_uri):
        result = run_cli([*argv, "--output", str(out), "--maps-format", "tiff"])
    assert result.code == 0, result.stderr
    return pipeline.path(out)


def mvtec_style_evaluation(predictions: Path, category: Path) -> tuple[float, float]:
    """An independent evaluation as the MVTec AD script does it: read each float map
    (TIFF, named after the image), take its maximum as the image score, compare with
    the ground truth folders; pixel AUROC over every test pixel. scikit-learn and
    tifffile only: no reconad code."""
    import tifffile

    scores, labels, pixels, truths = [], [], [], []
    for image in sorted((category / "test").rglob("*.png")):
        defect = image.parent.name
        stem = image.relative_to(category / "test").with_suffix("").as_posix().replace("/", "__")
        anomaly_map = tifffile.imread(predictions / f"{stem}_map.tiff")
        assert (
            anomaly_map.dtype == np.float32
            and anomaly_map.shape == cv2.imread(str(image), cv2.IMREAD_UNCHANGED).shape[:2]
        )
        scores.append(float(anomaly_map.max()))
        labels.append(int(defect != "good"))
        mask_file = category / "ground_truth" / defect / f"{image.stem}_mask.png"
        truth = (
            cv2.imread(str(mask_file), cv2.IMREAD_GRAYSCALE) > 0
            if defect != "good"
            else np.zeros(anomaly_map.shape, bool)
        )
        pixels.append(anomaly_map.ravel())
        truths.append(truth.ravel())
    return (
        roc_auc_score(labels, scores),
        roc_auc_score(np.concatenate(truths), np.concatenate(pixels)),
    )


def test_tiff_maps_evaluate_independently_to_the_reported_aurocs(
    pipeline: PipelineRun, tiff_predictions: Path
) -> None:
    """SDC-AE's image score is the map's maximum, as the MVTec AD script takes it, so an
    independent evaluation of the TIFF maps must give evaluate's image and pixel AUROC."""
    image, pixel = mvtec_style_evaluation(tiff_predictions, pipeline.path(CATEGORY_DIR))
    reported = pipeline.json("reports/metrics.json")[TINY_VARIANT][TINY_CATEGORY]
    assert image == pytest.approx(reported["image_auroc"], abs=1e-4)
    assert pixel == pytest.approx(reported["pixel_auroc"], abs=1e-4)


def test_each_json_line_names_its_float_map(tiff_predictions: Path) -> None:
    lines = (tiff_predictions / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    for record in map(json.loads, lines):
        assert record["map_file"].endswith("_map.tiff")
        assert Path(record["map_file"]).name in {p.name for p in tiff_predictions.iterdir()}
