"""Issue 7, item 1: faults in the user's images, driven through ``reconad fetch|prepare``.

Each broken dataset must stop the stage with one line naming the file and what to do, no
traceback (``--debug`` shows it), and leave no prepared category behind; fixable
oddities (mixed colour modes, sizes, soft masks) are converted with a warning.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from faults_support import (
    TRACEBACK,
    assert_one_error,
    disk_mask,
    leftovers,
    make_raw_category,
    run_cli,
    run_process,
    snapshot,
    texture,
    unprivileged_prefix,
    write_params,
    write_png,
)
from reconad.cli import main
from reconad.errors import DataError

CATEGORY = "widget"
RAW = Path("raw") / CATEGORY
PREPARED = Path("data/prepared") / CATEGORY


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder dataset with one valid category, as the working directory."""
    write_params(
        tmp_path,
        dataset__name="folder",
        dataset__root="raw",
        dataset__categories=[CATEGORY],
        dataset__val_fraction=0.25,
    )
    make_raw_category(tmp_path / "raw", CATEGORY)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def truncated_png(root: Path) -> tuple[Path, str]:
    target = RAW / "train/good/001.png"
    _truncate(root / target)
    return target, "not a readable image (truncated or corrupt); remove or replace it"


def truncated_jpeg(root: Path) -> tuple[Path, str]:
    target = RAW / "test/good/002.jpg"
    write_png(root / target, texture(5))
    _truncate(root / target)
    return target, "not a readable image (truncated or corrupt)"


def random_bytes_named_png(root: Path) -> tuple[Path, str]:
    target = RAW / "train/good/003.png"
    (root / target).write_bytes(np.random.default_rng(0).bytes(500))
    return target, "not a readable image"


def text_file_among_images(root: Path) -> tuple[Path, str]:
    target = RAW / "train/good/notes.txt"
    (root / target).write_text("taken on Monday\n")
    return target, "not an image file (expected .bmp, .jpeg, .jpg, .png, .tif, .tiff); move it"


def empty_category(root: Path) -> tuple[Path, str]:
    for path in sorted((root / RAW).rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    return RAW / "train/good", "folder missing (expected the MVTec AD layout)"


def empty_train_good(root: Path) -> tuple[Path, str]:
    for path in (root / RAW / "train/good").iterdir():
        path.unlink()
    return RAW / "train/good", "no training images"


def defect_without_mask(root: Path) -> tuple[Path, str]:
    (root / RAW / "ground_truth/crack/001_mask.png").unlink()
    return RAW / "test/crack/001.png", "defective test image without a mask (expected"


def mask_of_another_size(root: Path) -> tuple[Path, str]:
    target = RAW / "ground_truth/crack/000_mask.png"
    write_png(root / target, disk_mask(16))
    return target, "mask is 16x16 but its image"


def mask_without_image(root: Path) -> tuple[Path, str]:
    target = RAW / "ground_truth/crack/007_mask.png"
    write_png(root / target, disk_mask())
    return target, "mask without a test image (expected test/crack/007.png)"


FAULTS: list[Callable[[Path], tuple[Path, str]]] = [
    truncated_png,
    truncated_jpeg,
    random_bytes_named_png,
    text_file_among_images,
    empty_category,
    empty_train_good,
    defect_without_mask,
    mask_of_another_size,
    mask_without_image,
]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda fault: fault.__name__)
def test_a_broken_dataset_stops_prepare_with_one_line_and_writes_nothing(
    project: Path, capsys: pytest.CaptureFixture[str], fault: Callable[[Path], tuple[Path, str]]
) -> None:
    named, advice = fault(project)
    code, _, err = run_cli(capsys, "prepare")
    assert_one_error(code, err, str(named), advice)
    assert not PREPARED.exists()
    assert leftovers(project / "data") == []


@pytest.mark.parametrize(
    "fault", [text_file_among_images, defect_without_mask, mask_without_image, empty_train_good]
)
def test_fetch_refuses_a_badly_laid_out_folder_before_writing_the_manifest(
    project: Path, capsys: pytest.CaptureFixture[str], fault: Callable[[Path], tuple[Path, str]]
) -> None:
    named, advice = fault(project)
    code, _, err = run_cli(capsys, "fetch")
    assert_one_error(code, err, str(named), advice)
    assert not Path("data/raw/manifest.json").exists()


def test_a_failed_prepare_keeps_the_previous_prepared_category(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(capsys, "prepare")[0] == 0
    before = snapshot(PREPARED)
    named, advice = mask_of_another_size(project)
    code, _, err = run_cli(capsys, "prepare")
    assert_one_error(code, err, str(named), advice)
    assert snapshot(PREPARED) == before
    assert leftovers(project / "data") == []


@pytest.mark.parametrize("argv", [["prepare", "--debug"], ["--debug", "prepare"]])
def test_debug_raises_instead_of_printing_one_line(project: Path, argv: list[str]) -> None:
    truncated_png(project)
    with pytest.raises(DataError, match=r"001\.png: not a readable image"):
        main(argv)


@pytest.mark.slow
def test_a_real_process_prints_one_line_and_debug_the_traceback(project: Path) -> None:
    named, _ = truncated_png(project)
    plain = run_process(["prepare"], project)
    assert_one_error(plain.returncode, plain.stderr, str(named))
    debug = run_process(["prepare", "--debug"], project)
    assert debug.returncode != 0
    assert TRACEBACK in debug.stderr and "DataError" in debug.stderr
    assert not (project / PREPARED).exists()


@pytest.mark.slow
def test_an_unreadable_image_is_named_with_the_permission_problem(project: Path) -> None:
    target = RAW / "train/good/002.png"
    os.chmod(project / target, 0)
    result = run_process(["prepare"], project, prefix=unprivileged_prefix())
    assert_one_error(
        result.returncode, result.stderr, str(target), "cannot read the file (Permission denied)"
    )
    assert not (project / PREPARED).exists()


def test_grey_and_rgb_images_are_converted_to_rgb_with_a_warning(
    project: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    write_png(project / RAW / "train/good/001.png", texture(1, channels=3))
    with caplog.at_level(logging.WARNING, logger="reconad"):
        assert run_cli(capsys, "prepare")[0] == 0
    assert any("converted to rgb" in message for message in caplog.messages), caplog.messages
    for name in ("train/good/000.png", "test/crack/001.png"):
        image = cv2.imread(str(PREPARED / name), cv2.IMREAD_UNCHANGED)
        assert image.shape == (32, 32, 3)


def test_images_of_different_sizes_are_resized_with_a_warning(
    project: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    big = cv2.resize(texture(2), (48, 40), interpolation=cv2.INTER_LINEAR)
    write_png(project / RAW / "train/good/002.png", big)
    with caplog.at_level(logging.WARNING, logger="reconad"):
        assert run_cli(capsys, "prepare")[0] == 0
    assert any("different sizes" in m and "48x40" in m for m in caplog.messages), caplog.messages
    sizes = {cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape for path in PREPARED.rglob("*.png")}
    assert sizes == {(32, 32)}


def test_a_soft_mask_is_binarised_with_a_warning(
    project: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    soft = cv2.GaussianBlur(disk_mask(), (7, 7), 2.0)
    assert len(np.unique(soft)) > 2
    write_png(project / RAW / "ground_truth/crack/000_mask.png", soft)
    with caplog.at_level(logging.WARNING, logger="reconad"):
        assert run_cli(capsys, "prepare")[0] == 0
    assert any("not binary, binarised" in message for message in caplog.messages)
    prepared = cv2.imread(str(PREPARED / "ground_truth/crack/000_mask.png"), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(prepared)) == {0, 255}
    np.testing.assert_array_equal(prepared > 0, soft >= 128)
