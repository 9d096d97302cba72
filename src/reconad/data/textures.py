"""The embedded default dataset ``textures``: built offline, deterministically, in MVTec AD layout.

Source photos: ``skimage.data.brick()``, ``grass()`` and ``gravel()``, 512 x 512 uint8
grey images shipped inside the scikit-image wheel (``skimage/data/*.png``), so building
needs no network. scikit-image's own code is BSD-3-Clause, but these three images keep
the licence of their origin, stated in their docstrings: brick and gravel
(CC0Textures "Bricks25", "Gravel04") and grass (DeviantArt user linolafett, "Grass-01")
are under Creative Commons CC0 1.0, a public-domain dedication. The data directory's
README.txt says nothing about licences.

Each photo is cut into a 3 x 3 grid of tiles (``SPLIT_GRID``); every tile belongs to one
split, train (corners and centre), validation (middle row, left and right) or test
(middle column, top and bottom). Interleaving matters: photos are not stationary (the
grass photo has more clover at the bottom right), and a split made of one block per
split gave test normals that a kNN on pretrained features told apart from validation
normals with AUROC 0.76. Every crop lies inside one tile of its split, so no test or
validation image shares a single source pixel with a training image. Variety inside a
split comes from a random tile, a random position, a random window size
(``SCALE_RANGE`` times a base window) resized to ``image_size``, and one of the 8
rotations/flips, which leave a texture a normal texture. The base window is
``SOURCE_PIXELS_PER_OUTPUT_PIXEL * image_size`` source pixels (160 for 128-pixel
images: about four bricks across), capped by the smallest tile side (170); at larger
sizes the cap applies and crops are upsampled instead. The cap is shared by all splits so
that train and test images have the same distribution of texture scale.

Test images with a defect come from the test region too and get one synthetic defect
from :mod:`reconad.data.defects`, which shares no code with the training corruptions.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypedDict

import cv2
import numpy as np
import skimage.data

from reconad.config import TexturesConfig
from reconad.data.defects import DEFECT_KINDS, make_defect
from reconad.errors import ConfigError, DataError
from reconad.io import atomic_dir
from reconad.paths import SPLIT_FILE

SOURCES: dict[str, Callable[[], np.ndarray]] = {
    "brick": skimage.data.brick,
    "grass": skimage.data.grass,
    "gravel": skimage.data.gravel,
}

SPLIT_GRID: tuple[tuple[str, ...], ...] = (
    ("train", "test", "train"),
    ("val", "train", "val"),
    ("train", "test", "train"),
)
"""Which split owns each tile of the photo, row by row from the top left."""

SOURCE_PIXELS_PER_OUTPUT_PIXEL = 1.25
SCALE_RANGE = (0.6, 1.0)
"""Crop window side = base window times a factor drawn from this range."""

_STREAMS = ("train", "val", "test_good", "test_defect")


@dataclass(frozen=True)
class Rect:
    """An axis-aligned half-open rectangle [x, x + width) x [y, y + height) of a photo."""

    x: int
    y: int
    width: int
    height: int

    def intersects(self, other: Rect) -> bool:
        return (
            self.x < other.x + other.width
            and other.x < self.x + self.width
            and self.y < other.y + other.height
            and other.y < self.y + self.height
        )

    def contains(self, other: Rect) -> bool:
        return (
            self.x <= other.x
            and self.y <= other.y
            and other.x + other.width <= self.x + self.width
            and other.y + other.height <= self.y + self.height
        )


@dataclass(frozen=True)
class Crop:
    """Where an image comes from: a square window of the photo, then rot90 and flip."""

    x: int
    y: int
    side: int
    rot90: int
    flip: bool

    @property
    def rect(self) -> Rect:
        return Rect(self.x, self.y, self.side, self.side)


class CategorySplit(TypedDict):
    """Content of ``<category>/split.json``; paths are relative to the category folder."""

    train: list[str]
    val: list[str]
    test: list[str]
    regions: dict[str, list[list[int]]]
    crops: dict[str, dict[str, int | bool]]


def load_source(category: str) -> np.ndarray:
    """The source photo of ``category``: uint8 (H, W), read from the scikit-image wheel.

    Raises:
        ConfigError: ``category`` is not one of ``SOURCES``.
    """
    if category not in SOURCES:
        raise ConfigError(
            f"dataset.categories: unknown textures category '{category}' "
            f"(allowed: {', '.join(SOURCES)})"
        )
    return np.ascontiguousarray(SOURCES[category](), dtype=np.uint8)


def split_regions(height: int, width: int) -> dict[str, list[Rect]]:
    """The tiles of each split: a ``height`` x ``width`` photo cut by ``SPLIT_GRID``."""
    rows, columns = len(SPLIT_GRID), len(SPLIT_GRID[0])
    ys = [round(row * height / rows) for row in range(rows + 1)]
    xs = [round(column * width / columns) for column in range(columns + 1)]
    regions: dict[str, list[Rect]] = {}
    for row, owners in enumerate(SPLIT_GRID):
        for column, split in enumerate(owners):
            tile = Rect(xs[column], ys[row], xs[column + 1] - xs[column], ys[row + 1] - ys[row])
            regions.setdefault(split, []).append(tile)
    return regions


def window_sides(regions: dict[str, list[Rect]], image_size: int) -> tuple[int, int]:
    """Smallest and largest crop window side, in source pixels, for ``image_size`` images."""
    cap = min(min(tile.width, tile.height) for tiles in regions.values() for tile in tiles)
    base = min(round(SOURCE_PIXELS_PER_OUTPUT_PIXEL * image_size), cap)
    return max(1, round(SCALE_RANGE[0] * base)), round(SCALE_RANGE[1] * base)


def draw_crop(tiles: list[Rect], sides: tuple[int, int], rng: np.random.Generator) -> Crop:
    """A random window inside one of ``tiles`` with a random size in ``sides`` and orientation.

    Tiles are drawn in proportion to the positions they offer a window, so every allowed
    window of a split is about equally likely.
    """
    side = int(rng.integers(sides[0], sides[1] + 1))
    positions = np.array([(t.width - side + 1) * (t.height - side + 1) for t in tiles], float)
    tile = tiles[int(rng.choice(len(tiles), p=positions / positions.sum()))]
    x = int(rng.integers(tile.x, tile.x + tile.width - side + 1))
    y = int(rng.integers(tile.y, tile.y + tile.height - side + 1))
    return Crop(x, y, side, int(rng.integers(0, 4)), bool(rng.integers(0, 2)))


def render_crop(source: np.ndarray, crop: Crop, image_size: int) -> np.ndarray:
    """Cut ``crop`` out of ``source`` (H, W) and resize it to (image_size, image_size)."""
    window = source[crop.y : crop.y + crop.side, crop.x : crop.x + crop.side]
    interpolation = cv2.INTER_AREA if crop.side > image_size else cv2.INTER_LINEAR
    image = cv2.resize(window, (image_size, image_size), interpolation=interpolation)
    image = np.rot90(image, crop.rot90)
    if crop.flip:
        image = np.fliplr(image)
    return np.ascontiguousarray(image)


def defects_per_kind(count: int) -> dict[str, int]:
    """Spread ``count`` defective images evenly over ``DEFECT_KINDS`` (first kinds get extras)."""
    share, extra = divmod(count, len(DEFECT_KINDS))
    return {kind: share + (index < extra) for index, kind in enumerate(DEFECT_KINDS)}


def category_seed(seed: int, category: str) -> np.random.SeedSequence:
    """Seed of one category: independent of the other categories in the list."""
    return np.random.SeedSequence([seed, zlib.crc32(category.encode("utf-8"))])


def build_textures(
    out_dir: Path,
    categories: list[str],
    image_size: int,
    counts: TexturesConfig,
    seed: int,
) -> dict[str, CategorySplit]:
    """Write the ``textures`` dataset for ``categories`` under ``out_dir``.

    Per category: ``train/good/NNN.png`` (train), ``train/good/val_NNN.png`` (validation
    normals), ``test/good/NNN.png``, ``test/<kind>/NNN.png`` with
    ``ground_truth/<kind>/NNN_mask.png`` (0/255), all 8-bit grey, and ``split.json``.
    Each category is written to a temporary folder and renamed into place when complete,
    replacing an older copy, so an interruption never leaves a half-written category.

    Args:
        out_dir: root of the prepared dataset (created if missing).
        categories: names from ``SOURCES``.
        image_size: side of the square output images, in pixels.
        counts: images per split and category.
        seed: the same seed and arguments give byte-identical files.

    Returns:
        ``{category: split}`` with the content of each ``split.json``.

    Raises:
        ConfigError: an unknown category (checked before anything is written).
        ValueError: ``image_size`` below 8.
        DataError: the files cannot be written.
    """
    if image_size < 8:
        raise ValueError(f"image_size: must be at least 8 (got {image_size})")
    sources = {category: load_source(category) for category in categories}
    return {
        category: _build_category(Path(out_dir), category, source, image_size, counts, seed)
        for category, source in sources.items()
    }


def _build_category(
    out_dir: Path,
    category: str,
    source: np.ndarray,
    image_size: int,
    counts: TexturesConfig,
    seed: int,
) -> CategorySplit:
    with atomic_dir(out_dir / category) as staging:
        return _write_category(staging, category, source, image_size, counts, seed)


def _write_category(
    root: Path,
    category: str,
    source: np.ndarray,
    image_size: int,
    counts: TexturesConfig,
    seed: int,
) -> CategorySplit:
    """Render and write every image of one category under ``root``."""
    regions = split_regions(*source.shape)
    sides = window_sides(regions, image_size)
    streams = category_seed(seed, category).spawn(len(_STREAMS))
    rngs = {name: np.random.default_rng(s) for name, s in zip(_STREAMS, streams, strict=True)}
    crops: dict[str, Crop] = {}

    def take_crop(name: str, region: str, stream: str) -> np.ndarray:
        crops[name] = draw_crop(regions[region], sides, rngs[stream])
        return render_crop(source, crops[name], image_size)

    train = [f"train/good/{_stem(i, counts.train)}.png" for i in range(counts.train)]
    val = [f"train/good/val_{_stem(i, counts.val)}.png" for i in range(counts.val)]
    test = [f"test/good/{_stem(i, counts.test_good)}.png" for i in range(counts.test_good)]
    for names, region, stream in (
        (train, "train", "train"),
        (val, "val", "val"),
        (test, "test", "test_good"),
    ):
        for name in names:
            _write_png(root / name, take_crop(name, region, stream))
    for kind, count in defects_per_kind(counts.test_defect).items():
        for index in range(count):
            stem = _stem(index, count)
            name = f"test/{kind}/{stem}.png"
            clean = take_crop(name, "test", "test_defect")
            defect = make_defect(clean.astype(np.float32) / 255.0, kind, rngs["test_defect"])
            _write_png(root / name, np.round(defect.image * 255.0).astype(np.uint8))
            _write_png(root / f"ground_truth/{kind}/{stem}_mask.png", _mask_png(defect.mask))
            test.append(name)
    split: CategorySplit = {
        "train": train,
        "val": val,
        "test": test,
        "regions": {
            name: [list(asdict(tile).values()) for tile in tiles] for name, tiles in regions.items()
        },
        "crops": {name: asdict(crop) for name, crop in crops.items()},
    }
    (root / SPLIT_FILE).write_text(json.dumps(split, indent=1) + "\n", encoding="utf-8")
    return split


def _stem(index: int, count: int) -> str:
    return f"{index:0{max(3, len(str(count - 1)))}d}"


def _mask_png(mask: np.ndarray) -> np.ndarray:
    return np.where(mask, 255, 0).astype(np.uint8)


def _write_png(path: Path, image: np.ndarray) -> None:
    """Encode in memory and write the bytes: same pixels always give the same file."""
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise DataError(f"{path}: PNG encoding failed")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encoded.tobytes())
