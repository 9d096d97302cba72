"""MVTec-layout scanning, the prepare stage, and loading a prepared category."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from faults_support import DEFECT_SEEDS, disk_mask, make_raw_category, texture, write_png
from pipeline_fixtures import repo_params
from reconad.config import Params, params_from_dict
from reconad.data.layout import list_categories, load_split, scan_category
from reconad.data.prepare import draw_validation, prepare_category, prepare_dataset
from reconad.errors import ConfigError, DataError

BOTTLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mvtec_bottle"


def make_category(root: Path, category: str = "widget", **options: Any) -> Path:
    """A category of these tests' usual shape: six 16 px RGB training images, two good and
    two cracked test images; ``options`` as for ``make_raw_category``."""
    return make_raw_category(
        root, category, **{"train": 6, "sizes": (16,), "channels": 3, **options}
    )


def _prepare(src: Path, out: Path, **overrides: object):
    options = {
        "category": "widget",
        "image_size": 8,
        "color": "auto",
        "val_fraction": 0.34,
        "seed": 7,
        "split": None,
    }
    options.update(overrides)
    return prepare_category(src, out_root=out, **options)


# --- layout -----------------------------------------------------------------------------


def test_scan_finds_images_and_masks(tmp_path: Path) -> None:
    category = make_category(tmp_path, defects={"crack": 2, "hole": 1})
    (category / "train" / "good" / ".DS_Store").write_bytes(b"\x00junk")
    files = scan_category(tmp_path, "widget")
    assert [p.name for p in files.train] == [f"{i:03d}.png" for i in range(6)]
    assert [(item.defect, item.image.name) for item in files.test] == [
        ("crack", "000.png"),
        ("crack", "001.png"),
        ("good", "000.png"),
        ("good", "001.png"),
        ("hole", "000.png"),
    ]
    masks = {item.image.relative_to(category).as_posix(): item.mask for item in files.test}
    assert masks["test/good/000.png"] is None
    assert masks["test/hole/000.png"] == category / "ground_truth" / "hole" / "000_mask.png"
    assert list_categories(tmp_path) == ["widget"]


def test_missing_category_lists_the_available_ones(tmp_path: Path) -> None:
    make_category(tmp_path, "screw")
    make_category(tmp_path, "tile")
    with pytest.raises(DataError, match=r"carpet: category folder not found .*screw, tile"):
        scan_category(tmp_path, "carpet")


def test_empty_train_good_is_an_error(tmp_path: Path) -> None:
    make_category(tmp_path, train=0)
    (tmp_path / "widget" / "train" / "good").mkdir(parents=True)
    with pytest.raises(DataError, match=r"train/good: no training images"):
        scan_category(tmp_path, "widget")


def test_non_image_file_in_an_image_folder_is_named(tmp_path: Path) -> None:
    make_category(tmp_path)
    (tmp_path / "widget" / "train" / "good" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"notes\.txt: not an image file"):
        scan_category(tmp_path, "widget")


def test_defective_image_without_mask_is_an_error(tmp_path: Path) -> None:
    category = make_category(tmp_path)
    (category / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(DataError, match=r"crack/001\.png: defective test image without a mask"):
        scan_category(tmp_path, "widget")


def test_mask_without_image_is_an_error(tmp_path: Path) -> None:
    category = make_category(tmp_path)
    write_png(category / "ground_truth" / "crack" / "007_mask.png", disk_mask(16))
    with pytest.raises(DataError, match=r"007_mask\.png: mask without a test image"):
        scan_category(tmp_path, "widget")


# --- prepare ----------------------------------------------------------------------------


def test_prepare_writes_layout_split_and_loads_back(tmp_path: Path) -> None:
    category = make_category(tmp_path / "raw")
    square = np.zeros((16, 16), np.uint8)
    square[4:8, 4:8] = 255
    write_png(category / "ground_truth" / "crack" / "000_mask.png", square)
    report = _prepare(tmp_path / "raw", tmp_path / "out")
    out = tmp_path / "out" / "widget"
    split = json.loads((out / "split.json").read_text())
    assert list(split) == ["train", "val", "test", "color", "image_size", "source"]
    assert (split["color"], split["image_size"]) == ("rgb", 8)
    assert split["source"] == str(tmp_path / "raw")
    assert len(split["val"]) == 2 and len(split["train"]) == 4
    assert sorted(split["train"] + split["val"]) == [f"train/good/{i:03d}.png" for i in range(6)]
    assert (report.train, report.val, report.test, report.defective) == (4, 2, 4, 2)
    assert os.listdir(tmp_path / "out") == ["widget"]

    data = load_split(out)
    assert data.train.shape == (4, 8, 8, 3) and data.val.shape == (2, 8, 8, 3)
    assert data.test.shape == (4, 8, 8, 3) and data.test.dtype == np.float32
    assert data.test_names == [
        "test/crack/000.png",
        "test/crack/001.png",
        "test/good/000.png",
        "test/good/001.png",
    ]
    np.testing.assert_array_equal(data.test_labels, [1, 1, 0, 0])
    assert data.test_defects == ["crack", "crack", "good", "good"]
    assert data.test_masks.dtype == bool and not data.test_masks[2:].any()
    expected_mask = np.zeros((8, 8), bool)
    expected_mask[2:4, 2:4] = True
    np.testing.assert_array_equal(data.test_masks[0], expected_mask)
    defect = texture(DEFECT_SEEDS, 16, channels=3)
    source = cv2.cvtColor(defect, cv2.COLOR_BGR2RGB) / np.float32(255)
    reference = cv2.resize(source, (8, 8), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(data.test[0], reference, atol=0.5 / 255 + 1e-6)


def test_same_seed_same_split_and_the_split_depends_on_the_seed(tmp_path: Path) -> None:
    make_category(tmp_path / "raw", train=20)
    _prepare(tmp_path / "raw", tmp_path / "a", seed=3)
    _prepare(tmp_path / "raw", tmp_path / "b", seed=3)
    first = (tmp_path / "a" / "widget" / "split.json").read_text()
    assert first == (tmp_path / "b" / "widget" / "split.json").read_text()
    names = [f"n{i}" for i in range(20)]
    draws = {tuple(draw_validation(names, 0.25, seed, "widget")) for seed in range(10)}
    assert len(draws) > 1
    assert all(len(draw) == 5 for draw in draws)
    assert draw_validation(names, 0.25, 3, "widget") != draw_validation(names, 0.25, 3, "other")


def test_validation_needs_two_training_images(tmp_path: Path) -> None:
    make_category(tmp_path / "raw", train=1)
    with pytest.raises(DataError, match="at least 2"):
        _prepare(tmp_path / "raw", tmp_path / "out")
    assert draw_validation(["a", "b"], 0.01, 0, "c") in (["a"], ["b"])
    assert len(draw_validation(["a", "b", "c"], 0.99, 0, "c")) == 2


def test_mask_size_mismatch_names_both_files_and_writes_nothing(tmp_path: Path) -> None:
    category = make_category(tmp_path / "raw")
    write_png(category / "ground_truth" / "crack" / "001_mask.png", disk_mask(12))
    with pytest.raises(DataError, match=r"001_mask\.png: mask is 12x12 but its image .*001\.png"):
        _prepare(tmp_path / "raw", tmp_path / "out")
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


def test_corrupt_image_fails_before_anything_is_written(tmp_path: Path) -> None:
    category = make_category(tmp_path / "raw")
    broken = category / "test" / "good" / "001.png"
    broken.write_bytes(broken.read_bytes()[:-20])
    with pytest.raises(DataError, match=r"good/001\.png: not a readable image"):
        _prepare(tmp_path / "raw", tmp_path / "out")
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


def test_non_binary_mask_is_binarised_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    category = make_category(tmp_path / "raw", sizes=(8,))
    soft = np.zeros((8, 8), np.uint8)
    soft[0, :4] = [60, 127, 128, 250]
    write_png(category / "ground_truth" / "crack" / "000_mask.png", soft)
    with caplog.at_level(logging.WARNING, logger="reconad"):
        report = _prepare(tmp_path / "raw", tmp_path / "out")
    assert any("not binary, binarised at 50%" in w for w in report.warnings)
    assert any("binarised" in record.getMessage() for record in caplog.records)
    written = cv2.imread(str(tmp_path / "out/widget/ground_truth/crack/000_mask.png"), -1)
    assert set(np.unique(written)) == {0, 255}
    np.testing.assert_array_equal(written[0, :4], [0, 0, 255, 255])


def test_mixed_grey_and_rgb_become_rgb_with_a_warning(tmp_path: Path) -> None:
    category = make_category(tmp_path / "raw", channels=3)
    grey = texture(42, 16)
    write_png(category / "train" / "good" / "000.png", grey)
    report = _prepare(tmp_path / "raw", tmp_path / "out", image_size=16)
    assert report.color == "rgb"
    assert any("1 of 10 images converted to rgb" in w for w in report.warnings)
    data = load_split(tmp_path / "out" / "widget")
    names = data.train_names + data.val_names
    image = np.concatenate([data.train, data.val])[names.index("train/good/000.png")]
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], grey / np.float32(255))


def test_all_grey_becomes_one_channel_and_color_can_be_forced(tmp_path: Path) -> None:
    make_category(tmp_path / "raw", channels=1)
    report = _prepare(tmp_path / "raw", tmp_path / "out")
    assert report.color == "grey" and report.warnings == [
        "widget: images resized from 16x16 to 8x8 (dataset.image_size)"
    ]
    assert load_split(tmp_path / "out" / "widget").train.shape[-1] == 1
    forced = _prepare(tmp_path / "raw", tmp_path / "out", color="rgb")
    assert forced.color == "rgb" and any("converted to rgb" in w for w in forced.warnings)
    assert load_split(tmp_path / "out" / "widget").train.shape[-1] == 3


def test_images_of_different_sizes_are_resized_with_a_warning(tmp_path: Path) -> None:
    category = make_category(tmp_path / "raw")
    write_png(category / "train" / "good" / "003.png", texture(3, 24, channels=3))
    report = _prepare(tmp_path / "raw", tmp_path / "out", image_size=16)
    assert any("different sizes" in w and "24x24" in w for w in report.warnings)
    data = load_split(tmp_path / "out" / "widget")
    assert data.train.shape[1:] == (16, 16, 3) and data.val.shape[1:] == (16, 16, 3)


def test_a_given_split_is_kept_and_checked(tmp_path: Path) -> None:
    make_category(tmp_path / "raw", train=4)
    split = {
        "train": ["train/good/000.png", "train/good/002.png"],
        "val": ["train/good/001.png", "train/good/003.png"],
        "test": [
            "test/crack/000.png",
            "test/crack/001.png",
            "test/good/000.png",
            "test/good/001.png",
        ],
    }
    _prepare(tmp_path / "raw", tmp_path / "out", split=split)
    written = json.loads((tmp_path / "out" / "widget" / "split.json").read_text())
    assert {key: written[key] for key in ("train", "val", "test")} == split
    broken = {**split, "val": ["train/good/001.png"]}
    with pytest.raises(DataError, match=r"train/good/003\.png is in train/good but not in"):
        _prepare(tmp_path / "raw", tmp_path / "other", split=broken)


def test_prepare_replaces_an_older_output(tmp_path: Path) -> None:
    make_category(tmp_path / "raw")
    _prepare(tmp_path / "raw", tmp_path / "out", image_size=16)
    (tmp_path / "out" / "widget" / "stale.txt").write_text("old")
    _prepare(tmp_path / "raw", tmp_path / "out", image_size=8)
    assert not (tmp_path / "out" / "widget" / "stale.txt").exists()
    assert load_split(tmp_path / "out" / "widget").image_size == 8
    assert os.listdir(tmp_path / "out") == ["widget"]


def test_load_split_reports_a_missing_split(tmp_path: Path) -> None:
    make_category(tmp_path)
    with pytest.raises(DataError, match=r"split\.json: missing"):
        load_split(tmp_path / "widget")


def _params(seed: int, **dataset: object) -> Params:
    """The repository's params with ``seed`` and ``dataset`` keys replaced."""
    raw = repo_params()
    raw["seed"] = seed
    raw["dataset"].update(dataset)
    return params_from_dict(raw)


def test_prepare_dataset_folder(tmp_path: Path) -> None:
    make_category(tmp_path / "mine", "alpha")
    make_category(tmp_path / "mine", "beta", channels=1)
    params = _params(
        1, name="folder", root=str(tmp_path / "mine"), categories=["alpha", "beta"], image_size=32
    )
    reports = prepare_dataset(params, tmp_path / "raw", tmp_path / "prepared")
    assert [(r.category, r.color, r.image_size) for r in reports] == [
        ("alpha", "rgb", 32),
        ("beta", "grey", 32),
    ]
    assert sorted(os.listdir(tmp_path / "prepared")) == ["alpha", "beta"]


def test_prepare_dataset_can_prepare_one_category(tmp_path: Path) -> None:
    """The pipeline runs one ``prepare@<category>`` stage per category."""
    make_category(tmp_path / "mine", "alpha")
    make_category(tmp_path / "mine", "beta")
    params = _params(
        1, name="folder", root=str(tmp_path / "mine"), categories=["alpha", "beta"], image_size=32
    )
    (report,) = prepare_dataset(params, tmp_path / "raw", tmp_path / "prepared", ["beta"])
    assert report.category == "beta"
    assert os.listdir(tmp_path / "prepared") == ["beta"]


def test_prepare_dataset_refuses_a_category_the_params_do_not_list(tmp_path: Path) -> None:
    make_category(tmp_path / "mine", "alpha")
    params = _params(1, name="folder", root=str(tmp_path / "mine"), categories=["alpha"])
    refused = r"^dataset\.categories: 'beta' is not one of \['alpha'\]$"
    with pytest.raises(ConfigError, match=refused):
        prepare_dataset(params, tmp_path / "raw", tmp_path / "prepared", ["beta"])
    assert not (tmp_path / "prepared").exists()


def test_prepare_dataset_textures_keeps_the_shipped_split(tmp_path: Path) -> None:
    pytest.importorskip("reconad.data.textures")
    from reconad.data.fetch import fetch_dataset

    params = _params(
        5,
        name="textures",
        categories=["brick"],
        image_size=32,
        textures={"train": 4, "val": 2, "test_good": 2, "test_defect": 2},
    )
    raw = fetch_dataset(params, tmp_path / "raw")
    shipped = json.loads((raw / "brick" / "split.json").read_text())
    (report,) = prepare_dataset(params, tmp_path / "raw", tmp_path / "prepared")
    written = json.loads((tmp_path / "prepared" / "brick" / "split.json").read_text())
    assert all(written[key] == shipped[key] for key in ("train", "val", "test"))
    assert (report.color, report.train, report.val, report.test) == ("grey", 4, 2, 4)
    assert report.warnings == []


@pytest.mark.skipif(not BOTTLE.is_dir(), reason=f"real MVTec AD bottle not found at {BOTTLE}")
def test_real_mvtec_bottle(tmp_path: Path) -> None:
    files = scan_category(BOTTLE, "bottle")
    assert len(files.train) == 209 and len(files.test) == 83
    assert sum(item.mask is not None for item in files.test) == 63
    report = prepare_category(BOTTLE, "bottle", tmp_path, 64, "auto", 0.15, 0, None)
    assert (report.color, report.train + report.val, report.val) == ("rgb", 209, 31)
    data = load_split(tmp_path / "bottle")
    assert data.test.shape == (83, 64, 64, 3) and int(data.test_labels.sum()) == 63
    defective = data.test_labels == 1
    assert data.test_masks[defective].any(axis=(1, 2)).all()
    assert not data.test_masks[~defective].any()
