"""The MVTec AD folder layout: finding a category's files, and loading a prepared category.

Layout of one category (the same for raw and prepared data)::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/<good|defect type>/*.png
    <root>/<category>/ground_truth/<defect type>/<stem>_mask.png
    <root>/<category>/split.json            (prepared data only)

Every problem is reported as a one-line DataError that names the offending path, because
the typical cause is one stray or broken file among hundreds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reconad.data.images import (
    IMAGE_SUFFIXES,
    decode_image,
    is_image_file,
    read_image,
    read_mask,
)
from reconad.errors import DataError
from reconad.paths import SPLIT_FILE

GOOD = "good"
MASK_SUFFIX = "_mask"
SPLIT_KEYS: tuple[str, ...] = ("train", "val", "test")
_IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini"})


@dataclass(frozen=True)
class TestItem:
    """One test image, its defect type (``"good"`` or e.g. ``"crack"``) and its mask."""

    __test__ = False  # not a pytest test class despite its name

    image: Path
    defect: str
    mask: Path | None

    @property
    def is_defective(self) -> bool:
        return self.defect != GOOD


@dataclass(frozen=True)
class CategoryFiles:
    """The files of one category, sorted by folder and name."""

    train: list[Path]
    test: list[TestItem]


@dataclass(frozen=True)
class CategoryData:
    """A prepared category in memory, split as its ``split.json`` says.

    Images are float32 ``(N, H, W, C)`` in [0, 1]; masks bool ``(N, H, W)``, all False for
    good images; labels int ``(N,)``, 1 = defective. Names are paths relative to the
    category folder (``test/crack/000.png``), in the order of the arrays.
    """

    category: str
    color: str
    image_size: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray
    test_masks: np.ndarray
    test_names: list[str]
    test_defects: list[str]
    train_names: list[str]
    val_names: list[str]

    @property
    def channels(self) -> int:
        return int(self.train.shape[-1])


def is_ignored(path: Path) -> bool:
    """Hidden files (``.DS_Store``, ``._x.png``) and OS thumbnails are not dataset files."""
    return path.name.startswith(".") or path.name.lower() in _IGNORED_NAMES


def list_categories(root: Path) -> list[str]:
    """Sorted names of the folders under ``root`` that have a ``train/good`` folder."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(
        entry.name
        for entry in root.iterdir()
        if not is_ignored(entry) and (entry / "train" / GOOD).is_dir()
    )


def scan_category(root: Path, category: str) -> CategoryFiles:
    """Find and check the files of ``root/category``.

    Raises:
        DataError: the category folder is missing (the message lists those available),
            ``train/good`` is empty, a non-image file sits in an image folder, a defective
            test image has no mask, a mask has no test image, or two images share a name.
    """
    category_dir = _category_dir(Path(root), category)
    train = _image_files(_required_dir(category_dir / "train" / GOOD))
    if not train:
        raise DataError(f"{category_dir / 'train' / GOOD}: no training images")
    _only_good_in_train(category_dir / "train")
    test_dir = _required_dir(category_dir / "test")
    items: list[TestItem] = []
    for defect_dir in _subdirs(test_dir):
        items.extend(_test_items(category_dir, defect_dir))
    if not items:
        raise DataError(f"{test_dir}: no test images")
    _no_orphan_masks(category_dir, items)
    return CategoryFiles(train=train, test=items)


def mask_path(category_dir: Path, defect: str, image: Path) -> Path:
    """Where MVTec AD keeps the mask of ``image``: ``ground_truth/<defect>/<stem>_mask.png``."""
    return category_dir / "ground_truth" / defect / f"{image.stem}{MASK_SUFFIX}.png"


def read_split(category_dir: Path) -> dict:
    """The parsed ``split.json`` of a category folder.

    Raises:
        DataError: the file is missing, not JSON, or lacks one of train / val / test.
    """
    path = Path(category_dir) / SPLIT_FILE
    try:
        split = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"{path}: missing; re-run the fetch and prepare stages") from exc
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable split file ({exc}); re-run prepare") from exc
    if not isinstance(split, dict) or any(
        not isinstance(split.get(key), list) for key in SPLIT_KEYS
    ):
        raise DataError(f"{path}: needs lists 'train', 'val' and 'test'; re-run prepare")
    return split


def load_split(category_dir: Path) -> CategoryData:
    """Load a prepared category into arrays, in the order of its ``split.json``.

    Raises:
        DataError: ``split.json`` is missing or invalid, a listed file is missing or
            unreadable, a defective test image has no mask, or sizes disagree.
    """
    category_dir = Path(category_dir)
    split = read_split(category_dir)
    if not split["train"]:
        raise DataError(f"{category_dir / SPLIT_FILE}: the train list is empty; re-run prepare")
    color = split.get("color") or _stored_color(category_dir / split["train"][0])
    train = _load_images(category_dir, split["train"], color)
    image_size = int(split.get("image_size", train.shape[1]))
    empty_shape = (image_size, image_size, train.shape[-1])
    val = _load_images(category_dir, split["val"], color, empty_shape)
    test = _load_images(category_dir, split["test"], color, empty_shape)
    defects = [_defect_of(category_dir, name) for name in split["test"]]
    masks = _load_masks(category_dir, split["test"], defects, test.shape[1:3])
    data = CategoryData(
        category=category_dir.name,
        color=color,
        image_size=image_size,
        train=train,
        val=val,
        test=test,
        test_labels=np.array([defect != GOOD for defect in defects], dtype=np.int64),
        test_masks=masks,
        test_names=list(split["test"]),
        test_defects=defects,
        train_names=list(split["train"]),
        val_names=list(split["val"]),
    )
    _check_sizes(category_dir, data)
    return data


def _category_dir(root: Path, category: str) -> Path:
    category_dir = root / category
    if category_dir.is_dir():
        return category_dir
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found; check dataset.root")
    available = ", ".join(list_categories(root)) or "none"
    raise DataError(f"{category_dir}: category folder not found (available in {root}: {available})")


def _required_dir(path: Path) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: folder missing (expected the MVTec AD layout)")
    return path


def _subdirs(folder: Path) -> list[Path]:
    """Sub-folders of ``folder``; a stray file directly in it is an error."""
    entries = [entry for entry in sorted(folder.iterdir()) if not is_ignored(entry)]
    for entry in entries:
        if not entry.is_dir():
            raise DataError(f"{entry}: unexpected file; {folder.name}/ holds one folder per type")
    return entries


def _image_files(folder: Path) -> list[Path]:
    """Image files of ``folder``, sorted; any other (non-hidden) entry is an error."""
    files: list[Path] = []
    stems: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if is_ignored(entry):
            continue
        if not entry.is_file() or not is_image_file(entry):
            raise DataError(
                f"{entry}: not an image file (expected {', '.join(sorted(IMAGE_SUFFIXES))}); "
                "move it out of the dataset"
            )
        if entry.stem in stems:
            raise DataError(f"{entry}: same name as {stems[entry.stem].name}; rename one of them")
        stems[entry.stem] = entry
        files.append(entry)
    return files


def _only_good_in_train(train_dir: Path) -> None:
    for entry in _subdirs(train_dir):
        if entry.name != GOOD:
            raise DataError(f"{entry}: unexpected folder; train/ holds only good/ (normal images)")


def _test_items(category_dir: Path, defect_dir: Path) -> list[TestItem]:
    defect = defect_dir.name
    items = []
    for image in _image_files(defect_dir):
        mask = None
        if defect != GOOD:
            mask = _find_mask(category_dir, defect, image)
        items.append(TestItem(image=image, defect=defect, mask=mask))
    return items


def _find_mask(category_dir: Path, defect: str, image: Path) -> Path:
    """The mask of ``image``; PNG is the MVTec convention, other image suffixes are accepted."""
    expected = mask_path(category_dir, defect, image)
    candidates = [expected] + [expected.with_suffix(suffix) for suffix in sorted(IMAGE_SUFFIXES)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DataError(f"{image}: defective test image without a mask (expected {expected})")


def _no_orphan_masks(category_dir: Path, items: list[TestItem]) -> None:
    ground_truth = category_dir / "ground_truth"
    if not ground_truth.is_dir():
        return
    images = {(item.defect, item.image.stem) for item in items}
    for defect_dir in _subdirs(ground_truth):
        for mask in _image_files(defect_dir):
            stem = mask.stem.removesuffix(MASK_SUFFIX)
            if mask.stem == stem or (defect_dir.name, stem) not in images:
                raise DataError(
                    f"{mask}: mask without a test image "
                    f"(expected test/{defect_dir.name}/{stem}.png); remove it or add the image"
                )


def _stored_color(image: Path) -> str:
    """Colour mode of a split.json without a ``color`` entry: that of its first image."""
    return "grey" if decode_image(image).shape[-1] == 1 else "rgb"


def _load_images(
    category_dir: Path,
    names: list[str],
    color: str,
    empty_shape: tuple[int, int, int] = (0, 0, 0),
) -> np.ndarray:
    images = [read_image(category_dir / name, color).pixels for name in names]
    if not images:
        return np.zeros((0, *empty_shape), dtype=np.float32)
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise DataError(
            f"{category_dir}: images of different sizes {sorted(shapes)}; re-run prepare"
        )
    return np.stack(images)


def _defect_of(category_dir: Path, name: str) -> str:
    parts = Path(name).parts
    if len(parts) != 3 or parts[0] != "test":
        raise DataError(
            f"{category_dir / SPLIT_FILE}: test entry '{name}' is not test/<type>/<file>"
        )
    return parts[1]


def _load_masks(
    category_dir: Path, names: list[str], defects: list[str], size: tuple[int, ...]
) -> np.ndarray:
    masks = np.zeros((len(names), *size), dtype=bool)
    for index, (name, defect) in enumerate(zip(names, defects, strict=True)):
        if defect == GOOD:
            continue
        path = mask_path(category_dir, defect, Path(name))
        if not path.is_file():
            raise DataError(f"{category_dir / name}: defective test image without a mask ({path})")
        mask = read_mask(path).mask
        if mask.shape != tuple(size):
            raise DataError(f"{path}: mask size {mask.shape} differs from its image {size}")
        masks[index] = mask
    return masks


def _check_sizes(category_dir: Path, data: CategoryData) -> None:
    expected = (data.image_size, data.image_size)
    for name, images in (("train", data.train), ("val", data.val), ("test", data.test)):
        if len(images) and images.shape[1:3] != expected:
            raise DataError(
                f"{category_dir}: {name} images are {images.shape[1:3]}, split.json says "
                f"image_size {data.image_size}; re-run prepare"
            )
