"""The embedded ``textures`` dataset and its defect generator."""

from __future__ import annotations

import ast
import hashlib
import itertools
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from reconad.config import TexturesConfig
from reconad.data import defects, textures
from reconad.data.defects import (
    DEFECT_KINDS,
    Defect,
    is_visible,
    make_defect,
    mean_change,
    texture_contrast,
)
from reconad.data.textures import Crop, Rect, build_textures, load_source, render_crop
from reconad.errors import ConfigError

SIZE = 64
COUNTS = TexturesConfig(train=8, val=4, test_good=4, test_defect=5)
SEED = 7
CATEGORIES = ["brick", "grass", "gravel"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("textures")
    return root, build_textures(root, CATEGORIES, SIZE, COUNTS, SEED)


def _read(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def _mask_path(category_dir: Path, name: str) -> Path:
    _, kind, file = name.split("/")
    return category_dir / "ground_truth" / kind / file.replace(".png", "_mask.png")


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _clean_crop(category: str, split: dict, name: str) -> np.ndarray:
    return render_crop(load_source(category), Crop(**split["crops"][name]), SIZE)


def test_sources_are_shipped_grey_512_photos() -> None:
    for category in CATEGORIES:
        source = load_source(category)
        assert source.shape == (512, 512) and source.dtype == np.uint8
        assert source.std() > 10


def test_layout_counts_and_split_file(built: tuple[Path, dict]) -> None:
    root, result = built
    assert sorted(p.name for p in root.iterdir()) == CATEGORIES
    for category in CATEGORIES:
        cat_dir = root / category
        split = result[category]
        assert json.loads((cat_dir / "split.json").read_text()) == split
        assert len(split["train"]) == COUNTS.train
        assert len(split["val"]) == COUNTS.val
        assert len(split["test"]) == COUNTS.test_good + COUNTS.test_defect
        on_disk = sorted(str(p.relative_to(cat_dir)) for p in cat_dir.glob("t*/*/*.png"))
        assert on_disk == sorted(split["train"] + split["val"] + split["test"])
        assert all(name.startswith("train/good/") for name in split["train"] + split["val"])
        assert not set(split["train"]) & set(split["val"])
        for name in split["train"] + split["val"] + split["test"]:
            image = _read(cat_dir / name)
            assert image.shape == (SIZE, SIZE) and image.dtype == np.uint8


def test_defects_spread_evenly_over_kinds(built: tuple[Path, dict]) -> None:
    _, result = built
    kinds = [name.split("/")[1] for name in result["brick"]["test"]]
    assert kinds.count("good") == COUNTS.test_good
    assert {kind: kinds.count(kind) for kind in DEFECT_KINDS} == dict.fromkeys(DEFECT_KINDS, 1)
    assert textures.defects_per_kind(12) == {
        "scratch": 3,
        "crack": 3,
        "contamination": 2,
        "hole": 2,
        "discoloration": 2,
    }


def test_split_tiles_and_crops_never_overlap(built: tuple[Path, dict]) -> None:
    _, result = built
    for split in result.values():
        tiles = {name: [Rect(*tile) for tile in rects] for name, rects in split["regions"].items()}
        every_tile = [tile for rects in tiles.values() for tile in rects]
        for a, b in itertools.combinations(every_tile, 2):
            assert not a.intersects(b)
        owner = {name: part for part in ("train", "val", "test") for name in split[part]}
        assert set(owner) == set(split["crops"])
        crops = [(owner[name], Crop(**crop).rect) for name, crop in split["crops"].items()]
        for part, rect in crops:
            assert any(tile.contains(rect) for tile in tiles[part])
        for (part_a, a), (part_b, b) in itertools.combinations(crops, 2):
            if part_a != part_b:
                assert not a.intersects(b), (part_a, a, part_b, b)


def test_split_tiles_cover_the_photo_and_interleave() -> None:
    regions = textures.split_regions(512, 512)
    assert sum(tile.width * tile.height for tiles in regions.values() for tile in tiles) == 512**2
    assert {split: len(tiles) for split, tiles in regions.items()} == {
        "train": 5,
        "test": 2,
        "val": 2,
    }
    for split in ("val", "test"):
        centres = [(tile.x + tile.width / 2, tile.y + tile.height / 2) for tile in regions[split]]
        assert np.allclose(np.mean(centres, axis=0), 256, atol=1)


def test_crops_come_from_every_tile_of_their_split() -> None:
    regions = textures.split_regions(512, 512)
    rng = np.random.default_rng(0)
    for tiles in regions.values():
        crops = [textures.draw_crop(tiles, (96, 160), rng).rect for _ in range(200)]
        owners = [[tile.contains(crop) for tile in tiles] for crop in crops]
        assert all(sum(inside) == 1 for inside in owners)
        assert np.all(np.sum(owners, axis=0) > 200 / len(tiles) / 2)


def test_rect_intersection_is_half_open() -> None:
    a = Rect(0, 0, 10, 10)
    assert a.intersects(Rect(9, 9, 5, 5))
    assert not a.intersects(Rect(10, 0, 5, 5))
    assert a.contains(Rect(2, 2, 8, 8)) and not a.contains(Rect(2, 2, 9, 8))


def test_normal_images_are_their_recorded_crops(built: tuple[Path, dict]) -> None:
    root, result = built
    for category, split in result.items():
        normals = split["train"] + split["val"] + split["test"][: COUNTS.test_good]
        for name in normals:
            expected = _clean_crop(category, split, name)
            np.testing.assert_array_equal(_read(root / category / name), expected)


def test_masks_are_binary_and_mark_exactly_the_changed_pixels(
    built: tuple[Path, dict],
) -> None:
    root, result = built
    for category, split in result.items():
        for name in split["test"][COUNTS.test_good :]:
            image = _read(root / category / name)
            mask = _read(_mask_path(root / category, name))
            assert mask.shape == image.shape and mask.dtype == np.uint8
            assert set(np.unique(mask)) == {0, 255}
            inside = mask == 255
            assert inside.sum() >= defects.MIN_MASK_PIXELS
            clean = _clean_crop(category, split, name)
            np.testing.assert_array_equal(image[~inside], clean[~inside])
            change = np.abs(image.astype(float) - clean.astype(float))[inside].mean() / 255
            assert change >= defects.MIN_MEAN_CHANGE, (name, change)
            written = Defect((image / 255.0).astype(np.float32), inside)
            contrast = texture_contrast((clean / 255.0).astype(np.float32), written)
            assert contrast >= defects.MIN_TEXTURE_CONTRAST, (name, contrast)


def test_build_is_byte_identical_and_seeded(tmp_path: Path, built: tuple[Path, dict]) -> None:
    root, _ = built
    build_textures(tmp_path / "again", CATEGORIES, SIZE, COUNTS, SEED)
    assert _tree_digest(tmp_path / "again") == _tree_digest(root)
    build_textures(tmp_path / "other", ["gravel"], SIZE, COUNTS, SEED + 1)
    assert _tree_digest(tmp_path / "other/gravel") != _tree_digest(root / "gravel")


def test_categories_do_not_depend_on_each_other(tmp_path: Path, built: tuple[Path, dict]) -> None:
    root, _ = built
    build_textures(tmp_path, ["grass"], SIZE, COUNTS, SEED)
    assert _tree_digest(tmp_path / "grass") == _tree_digest(root / "grass")
    crops = [result["crops"] for result in built[1].values()]
    assert all(a != b for a, b in itertools.combinations(crops, 2))


def test_unknown_category_names_the_allowed_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'marble'.*brick, grass, gravel"):
        build_textures(tmp_path / "out", ["brick", "marble"], SIZE, COUNTS, SEED)
    assert not (tmp_path / "out").exists()


def test_interrupted_build_keeps_the_previous_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_textures(tmp_path, ["brick"], SIZE, COUNTS, SEED)
    before = _tree_digest(tmp_path)

    def fail(*args: object) -> Defect:
        raise KeyboardInterrupt

    monkeypatch.setattr(textures, "make_defect", fail)
    with pytest.raises(KeyboardInterrupt):
        build_textures(tmp_path, ["brick"], SIZE, COUNTS, SEED + 1)
    assert [p.name for p in tmp_path.iterdir()] == ["brick"]
    assert _tree_digest(tmp_path) == before


def test_crops_are_resized_then_rotated_and_flipped() -> None:
    source = load_source("brick")
    upright = render_crop(source, Crop(10, 20, 80, 0, False), SIZE)
    window = source[20:100, 10:90]
    np.testing.assert_array_equal(
        upright, cv2.resize(window, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    )
    turned = render_crop(source, Crop(10, 20, 80, 3, True), SIZE)
    np.testing.assert_array_equal(turned, np.fliplr(np.rot90(upright, 3)))


def test_larger_images_upsample_a_capped_window() -> None:
    regions = textures.split_regions(512, 512)
    assert textures.window_sides(regions, 128) == (96, 160)
    assert textures.window_sides(regions, 256) == (102, 170)


@pytest.mark.parametrize("kind", list(DEFECT_KINDS))
def test_each_kind_is_visible_local_and_varied(kind: str) -> None:
    clean = render_crop(load_source("gravel"), Crop(300, 400, 80, 0, False), SIZE) / 255.0
    clean = clean.astype(np.float32)
    rng = np.random.default_rng(3)
    changes, areas, contrasts = [], [], []
    for _ in range(20):
        defect = make_defect(clean, kind, rng)
        assert defect.image.dtype == np.float32 and defect.mask.dtype == bool
        assert defect.image.shape == defect.mask.shape == clean.shape
        np.testing.assert_array_equal(defect.image[~defect.mask], clean[~defect.mask])
        np.testing.assert_allclose(defect.image * 255, np.round(defect.image * 255), atol=1e-3)
        changes.append(mean_change(clean, defect))
        areas.append(int(defect.mask.sum()))
        contrasts.append(texture_contrast(clean, defect))
    assert min(changes) >= defects.MIN_MEAN_CHANGE
    assert min(contrasts) >= defects.MIN_TEXTURE_CONTRAST
    assert min(areas) >= defects.MIN_MASK_PIXELS
    assert max(changes) > 1.5 * min(changes)
    assert max(areas) > 2 * min(areas)


def test_texture_contrast_measures_change_against_local_variation() -> None:
    rows = np.arange(SIZE)[:, None] % 2
    stripes = np.broadcast_to(0.3 + 0.4 * rows, (SIZE, SIZE)).astype(np.float32)
    mask = np.zeros((SIZE, SIZE), bool)
    mask[20:40, 20:40] = True
    shifted = Defect(np.where(mask, stripes + 0.1, stripes).astype(np.float32), mask)
    stripe_std = float(defects.local_std(stripes, SIZE * defects.TEXTURE_SCALE)[mask].mean())
    assert stripe_std == pytest.approx(0.2, abs=0.01)
    assert texture_contrast(stripes, shifted) == pytest.approx(0.1 / stripe_std, rel=1e-4)
    assert not is_visible(stripes, shifted)
    flat = np.full((SIZE, SIZE), 0.5, np.float32)
    on_flat = Defect(np.where(mask, 0.6, 0.5).astype(np.float32), mask)
    assert texture_contrast(flat, on_flat) > 1000 and is_visible(flat, on_flat)
    assert texture_contrast(flat, Defect(flat, np.zeros_like(mask))) == 0.0


def test_defects_follow_the_generator() -> None:
    clean = np.full((SIZE, SIZE), 0.5, np.float32)
    first = make_defect(clean, "crack", np.random.default_rng(5))
    second = make_defect(clean, "crack", np.random.default_rng(5))
    other = make_defect(clean, "crack", np.random.default_rng(6))
    np.testing.assert_array_equal(first.image, second.image)
    assert not np.array_equal(first.mask, other.mask)


def test_make_defect_rejects_bad_input() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown defect kind 'dent'"):
        make_defect(np.zeros((8, 8), np.float32), "dent", rng)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        make_defect(np.zeros((8, 8, 3), np.float32), "hole", rng)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        make_defect(np.full((8, 8), 2.0, np.float32), "hole", rng)


def test_defects_share_no_code_with_training_corruptions() -> None:
    for module in (defects, textures):
        tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
        imported = [
            name
            for node in ast.walk(tree)
            for name in (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
        ]
        assert imported and not any("corrupt" in name for name in imported)
    probe = (
        "import sys, reconad.data.textures; "
        "print(sorted(m for m in sys.modules if m.startswith('reconad.corrupt')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"
