"""Issue 7, item 7: ``reconad predict`` on images unlike the training ones, and on
inputs or models it cannot use. The session's model was trained on 32 x 32 grey images."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from faults_support import (
    CATEGORY,
    VARIANT,
    assert_one_error,
    copy_project,
    run_cli,
    texture,
    trained_project,
    write_png,
)
from reconad.errors import ReconadError
from reconad.predict import predict

MODEL = Path("models") / VARIANT / CATEGORY


@pytest.fixture
def workdir(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """The session's trained project as the working directory (only read here)."""
    project = trained_project(tmp_path_factory)
    monkeypatch.chdir(project)
    return tmp_path


def _predict(capsys: pytest.CaptureFixture[str], model: Path, source: Path, out: Path, *extra: str):
    return run_cli(
        capsys,
        "predict",
        "--model",
        str(model),
        "--input",
        str(source),
        "--output",
        str(out),
        *extra,
    )


def test_an_rgb_image_of_another_size_is_converted_and_resized_with_warnings(
    workdir: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    colour = cv2.resize(texture(7, channels=3), (48, 40), interpolation=cv2.INTER_LINEAR)
    image = write_png(workdir / "inputs" / "part.png", colour)
    out = workdir / "out"
    with caplog.at_level(logging.WARNING, logger="reconad"):
        code, stdout, err = _predict(capsys, MODEL, image.parent, out)
    assert code == 0, err
    messages = " ".join(caplog.messages)
    assert f"{image}: converted to grey to match the model" in messages
    assert f"{image}: resized from 48x40 to the model's 32 px" in messages
    record = json.loads(stdout.strip())
    assert record["image"] == str(image)
    assert set(record) >= {"score", "threshold", "anomalous", "heatmap", "overlay", "mask"}
    for kind in ("heatmap", "overlay", "mask"):
        written = cv2.imread(record[kind], cv2.IMREAD_UNCHANGED)
        assert written.shape[:2] == (40, 48), kind
    assert (out / "predictions.jsonl").read_text().strip() == stdout.strip()


def test_a_corrupt_input_is_named_before_any_output_is_written(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = workdir / "inputs"
    write_png(inputs / "a_good.png", texture(1))
    broken = write_png(inputs / "b_broken.png", texture(2))
    broken.write_bytes(broken.read_bytes()[:60])
    out = workdir / "out"
    code, stdout, err = _predict(capsys, MODEL, inputs, out)
    assert_one_error(code, err, f"{broken}: not a readable image (truncated or corrupt)")
    assert stdout == ""
    assert not out.exists()


def test_a_folder_without_images_is_a_clear_error(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = workdir / "inputs"
    empty.mkdir()
    (empty / "readme.txt").write_text("no pictures here\n")
    code, _, err = _predict(capsys, MODEL, empty, workdir / "out")
    assert_one_error(code, err, f"{empty}: no images (.bmp, .jpeg, .jpg, .png, .tif, .tiff) in")
    assert not (workdir / "out").exists()


def test_a_missing_input_is_a_clear_error(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _predict(capsys, MODEL, workdir / "nowhere.png", workdir / "out")
    assert_one_error(code, err, f"{workdir / 'nowhere.png'}: no such image or folder")


def test_an_uncalibrated_model_names_the_command_to_run(
    workdir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    uncalibrated = tmp_path / "uncalibrated"
    (uncalibrated / "model").mkdir(parents=True)
    for file in (MODEL / "model").iterdir():
        (uncalibrated / "model" / file.name).write_bytes(file.read_bytes())
    image = write_png(workdir / "inputs" / "part.png", texture(3))
    code, _, err = _predict(capsys, uncalibrated, image, workdir / "out")
    missing = uncalibrated / "threshold.json"
    assert_one_error(code, err, f"{missing}: no calibrated threshold", "reconad calibrate")
    assert not (workdir / "out").exists()


def test_a_folder_that_is_not_a_model_says_what_to_point_at(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = write_png(workdir / "inputs" / "part.png", texture(3))
    code, _, err = _predict(capsys, Path("models") / VARIANT, image, workdir / "out")
    assert_one_error(code, err, "not a trained model directory", "models/<variant>/<category>")


def test_float_maps_are_written_at_the_image_size_in_tiff_and_npy(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = write_png(
        workdir / "inputs" / "part.png",
        cv2.resize(texture(5), (48, 40), interpolation=cv2.INTER_LINEAR),
    )
    maps = {}
    for maps_format in ("tiff", "npy"):
        out = workdir / f"out-{maps_format}"
        code, stdout, err = _predict(capsys, MODEL, image, out, "--maps-format", maps_format)
        assert code == 0, err
        record = json.loads(stdout.strip())
        assert record["image"] == str(image)
        # The record's "map" holds the map's name (as with png), not the file: the file
        # is found by its name.
        written = out / f"part_map.{maps_format}"
        if maps_format == "npy":
            maps[maps_format] = np.load(written, allow_pickle=False)
        else:
            maps[maps_format] = cv2.imread(str(written), cv2.IMREAD_UNCHANGED)
        assert maps[maps_format].dtype == np.float32
        assert maps[maps_format].shape == (40, 48)
    np.testing.assert_array_equal(maps["tiff"], maps["npy"])
    assert np.isfinite(maps["npy"]).all() and maps["npy"].max() > 0.0


def test_an_unknown_maps_format_is_named_before_anything_is_read(workdir: Path) -> None:
    message = r"^--maps-format: unknown format 'jpg' \(allowed: png, tiff, npy\)$"
    with pytest.raises(ReconadError, match=message):
        next(predict(MODEL, workdir / "nowhere", workdir / "out", "jpg"))
    assert not (workdir / "out").exists()


def test_predict_scores_with_the_calibrated_params_not_a_later_params_file(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A params.yaml edited after calibration (another smoothing) does not change what
    predict scores: the test normals get the scores evaluate wrote for them."""
    project = copy_project(trained_project(tmp_path_factory), tmp_path / "project")
    monkeypatch.chdir(project)
    raw = yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8"))
    raw["sdc_ae"]["score"].update(smoothing="none")
    raw["calibrate"]["rule"] = "percentile"
    Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    good = Path("data/prepared") / CATEGORY / "test" / "good"
    code, stdout, err = _predict(capsys, MODEL, good, tmp_path / "out")
    assert code == 0, err
    scores_csv = Path("reports/eval") / VARIANT / CATEGORY / "scores.csv"
    with scores_csv.open(encoding="utf-8") as rows:
        expected = {row["image"]: float(row["score"]) for row in csv.DictReader(rows)}
    records = [json.loads(line) for line in stdout.splitlines()]
    assert len(records) == len(list(good.glob("*.png"))) > 0
    calibration = json.loads((MODEL / "threshold.json").read_text(encoding="utf-8"))
    for record in records:
        name = Path(record["image"]).relative_to(good.parent.parent).as_posix()
        assert record["score"] == pytest.approx(expected[name], rel=1e-4), name
        assert record["threshold"] == calibration["maps"]["residual"][calibration["rule"]]
        assert record["min_area"] == calibration["min_area"]
