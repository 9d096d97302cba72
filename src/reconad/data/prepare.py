"""The ``prepare`` stage: validate a raw MVTec-layout category, resize it, split it.

Two passes over the files. The first decodes everything and checks it (corrupt files,
mask sizes, colour modes) before a single byte is written, so a broken dataset fails fast
with the name of the offending file. The second converts, resizes and writes the prepared
category into a temporary folder that replaces ``<out_root>/<category>`` only when
complete. Only one image is held in memory at a time, so full-size MVTec AD fits.

Output (``<out_root>/<category>``): the MVTec AD layout with every image an 8-bit PNG of
``image_size`` x ``image_size``, and ``split.json``::

    {"train": [...], "val": [...], "test": [...],
     "color": "grey" | "rgb", "image_size": N, "source": "<raw root>"}

Validation normals stay in ``train/good`` (as in MVTec AD, where they are training images);
``split.json`` says which ones are held out.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from reconad.config import Params
from reconad.data.fetch import source_root
from reconad.data.images import (
    Color,
    convert_color,
    decode_image,
    is_grey,
    read_mask,
    resize_image,
    resize_mask,
    write_mask,
    write_png,
)
from reconad.data.layout import (
    GOOD,
    MASK_SUFFIX,
    SPLIT_KEYS,
    CategoryFiles,
    TestItem,
    read_split,
    scan_category,
)
from reconad.errors import ConfigError, DataError
from reconad.io import atomic_dir, atomic_write_json
from reconad.paths import SPLIT_FILE

log = logging.getLogger("reconad")


@dataclass(frozen=True)
class PrepareReport:
    """What ``prepare_category`` wrote, and the warnings it logged."""

    category: str
    out_dir: Path
    color: str
    image_size: int
    train: int
    val: int
    test: int
    defective: int
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Survey:
    """What the checking pass learnt about a category's files."""

    all_grey: bool
    image_sizes: dict[tuple[int, int], Path]
    masks_binarised: list[Path]


def prepare_category(
    src_root: Path,
    category: str,
    out_root: Path,
    image_size: int,
    color: str,
    val_fraction: float,
    seed: int,
    split: dict | None = None,
) -> PrepareReport:
    """Check, convert, resize and split ``src_root/category`` into ``out_root/category``.

    Args:
        src_root: folder holding the raw category in MVTec AD layout.
        category: name of the category folder.
        out_root: where the prepared category is written (replacing an older one).
        image_size: side of the square output images.
        color: ``"auto"`` (grey only if every image is grey), ``"grey"`` or ``"rgb"``.
        val_fraction: share of ``train/good`` held out as validation normals.
        seed: with the category name, seeds the draw of validation images.
        split: a ready split (``train``/``val``/``test`` paths relative to the category
            folder, as the ``textures`` dataset ships); kept as is instead of drawing one.

    Returns:
        Counts, the colour mode chosen, and every warning logged.

    Raises:
        DataError: an unusable file or folder, a mask whose size differs from its image,
            fewer than 2 training images, or a ``split`` that does not match the files.
    """
    src_root, out_root = Path(src_root), Path(out_root)
    files = scan_category(src_root, category)
    survey = _survey(files)
    chosen = _choose_color(color, survey.all_grey)
    warnings = _survey_warnings(category, survey, image_size)
    names = _split_names(src_root / category, files, split, val_fraction, seed)
    with atomic_dir(out_root / category) as tmp:
        warnings += _write_category(tmp, src_root / category, files, chosen, image_size)
        atomic_write_json(
            tmp / SPLIT_FILE,
            {
                **{key: [_output_name(name) for name in names[key]] for key in SPLIT_KEYS},
                "color": chosen,
                "image_size": image_size,
                "source": str(src_root),
            },
        )
    for message in warnings:
        log.warning(message)
    return PrepareReport(
        category=category,
        out_dir=out_root / category,
        color=chosen,
        image_size=image_size,
        train=len(names["train"]),
        val=len(names["val"]),
        test=len(names["test"]),
        defective=sum(item.defect != GOOD for item in files.test),
        warnings=warnings,
    )


def prepare_dataset(
    params: Params, raw_dir: Path, out_root: Path, categories: Iterable[str] | None = None
) -> list[PrepareReport]:
    """Prepare ``categories`` of ``params.dataset`` from what ``fetch`` left in ``raw_dir``.

    ``categories`` defaults to every category of the dataset; the pipeline prepares one
    per stage (dvc.yaml says why).

    The ``textures`` dataset ships its own ``split.json`` per category, which is kept;
    the other datasets get a validation split drawn from ``train/good``.

    Raises:
        ConfigError: a category that ``dataset.categories`` does not list.
    """
    dataset = params.dataset
    chosen = list(dataset.categories if categories is None else categories)
    for category in chosen:
        if category not in dataset.categories:
            raise ConfigError(
                f"dataset.categories: {category!r} is not one of {list(dataset.categories)}"
            )
    root = source_root(params, Path(raw_dir))
    reports = []
    for category in chosen:
        split = read_split(root / category) if dataset.name == "textures" else None
        report = prepare_category(
            root,
            category,
            Path(out_root),
            image_size=dataset.image_size,
            color=dataset.color,
            val_fraction=dataset.val_fraction,
            seed=params.seed,
            split=split,
        )
        log.info(
            "prepared %s: %d train, %d val, %d test (%d defective), %s, %d px",
            category,
            report.train,
            report.val,
            report.test,
            report.defective,
            report.color,
            report.image_size,
        )
        reports.append(report)
    return reports


def draw_validation(names: list[str], val_fraction: float, seed: int, category: str) -> list[str]:
    """The validation subset of the training ``names``: at least one, never all.

    The generator is seeded with ``seed`` plus a stable hash of the category, so a
    category's split does not change when other categories are added to the run.

    Raises:
        DataError: fewer than 2 training images.
    """
    if len(names) < 2:
        raise DataError(
            f"{category}: train/good has {len(names)} image(s); at least 2 are needed "
            "to hold out validation normals"
        )
    count = min(len(names) - 1, max(1, round(val_fraction * len(names))))
    rng = np.random.default_rng(seed + zlib.crc32(category.encode("utf-8")))
    chosen = rng.choice(len(names), size=count, replace=False)
    return [names[index] for index in sorted(chosen)]


def _survey(files: CategoryFiles) -> _Survey:
    """Decode every image and mask once; check each mask against its image."""
    all_grey = True
    sizes: dict[tuple[int, int], Path] = {}
    binarised: list[Path] = []
    for path in files.train:
        image = decode_image(path)
        all_grey = all_grey and is_grey(image)
        sizes.setdefault(image.shape[:2], path)
    for item in files.test:
        image = decode_image(item.image)
        all_grey = all_grey and is_grey(image)
        sizes.setdefault(image.shape[:2], item.image)
        if item.mask is None:
            continue
        mask, was_binarised = read_mask(item.mask)
        if mask.shape != image.shape[:2]:
            raise DataError(
                f"{item.mask}: mask is {_size_text(mask.shape)} but its image {item.image} is "
                f"{_size_text(image.shape)}; fix or replace the mask"
            )
        if was_binarised:
            binarised.append(item.mask)
    return _Survey(all_grey=all_grey, image_sizes=sizes, masks_binarised=binarised)


def _choose_color(color: str, all_grey: bool) -> Color:
    if color == "auto":
        return "grey" if all_grey else "rgb"
    if color not in ("grey", "rgb"):
        raise ValueError(f"color: expected auto, grey or rgb, received: {color!r}")
    return color


def _survey_warnings(category: str, survey: _Survey, image_size: int) -> list[str]:
    warnings = []
    sizes = survey.image_sizes
    if len(sizes) > 1:
        shown = ", ".join(f"{_size_text(size)} ({path.name})" for size, path in sizes.items())
        warnings.append(
            f"{category}: images have different sizes ({shown}); "
            f"all resized to {image_size}x{image_size}"
        )
    elif next(iter(sizes)) != (image_size, image_size):
        size = next(iter(sizes))
        kept = "" if size[0] == size[1] else " (aspect ratio not kept)"
        warnings.append(
            f"{category}: images resized from {_size_text(size)} to "
            f"{image_size}x{image_size} (dataset.image_size){kept}"
        )
    if survey.masks_binarised:
        warnings.append(
            f"{category}: {len(survey.masks_binarised)} mask(s) not binary, binarised at 50% "
            f"(first: {survey.masks_binarised[0]})"
        )
    return warnings


def _write_category(
    out_dir: Path, category_dir: Path, files: CategoryFiles, color: Color, image_size: int
) -> list[str]:
    """Convert, resize and write every image and mask; return the conversion warnings."""
    converted: list[Path] = []
    emptied: list[Path] = []
    for path in files.train:
        if _write_image(out_dir, category_dir, path, color, image_size):
            converted.append(path)
    for item in files.test:
        if _write_image(out_dir, category_dir, item.image, color, image_size):
            converted.append(item.image)
        if item.mask is not None and not _write_item_mask(out_dir, item, image_size):
            emptied.append(item.mask)
    warnings = []
    if converted:
        total = len(files.train) + len(files.test)
        warnings.append(
            f"{category_dir.name}: {len(converted)} of {total} images converted to {color} "
            f"(first: {converted[0]}); set dataset.color to choose the mode"
        )
    if emptied:
        warnings.append(
            f"{category_dir.name}: {len(emptied)} defect mask(s) empty after resizing to "
            f"{image_size} px (first: {emptied[0]}); consider a larger dataset.image_size"
        )
    return warnings


def _write_image(
    out_dir: Path, category_dir: Path, path: Path, color: Color, image_size: int
) -> bool:
    """Write one prepared image; True when its colour mode had to be converted."""
    image, converted = convert_color(decode_image(path), color)
    relative = path.relative_to(category_dir).as_posix()
    write_png(out_dir / _output_name(relative), resize_image(image, image_size))
    return converted


def _write_item_mask(out_dir: Path, item: TestItem, image_size: int) -> bool:
    """Write the resized mask of a defective test image; False when nothing of it is left."""
    mask = resize_mask(read_mask(item.mask).mask, image_size)
    stem = PurePosixPath(item.image.name).stem
    write_mask(out_dir / "ground_truth" / item.defect / f"{stem}{MASK_SUFFIX}.png", mask)
    return bool(mask.any())


def _split_names(
    category_dir: Path,
    files: CategoryFiles,
    split: dict | None,
    val_fraction: float,
    seed: int,
) -> dict[str, list[str]]:
    """Train / val / test names relative to the source category folder."""
    train = _relative(category_dir, files.train)
    test = _relative(category_dir, (item.image for item in files.test))
    if split is None:
        val = draw_validation(train, val_fraction, seed, category_dir.name)
        held_out = set(val)
        return {"train": [n for n in train if n not in held_out], "val": val, "test": test}
    _check_given_split(category_dir, split, train, test)
    return {key: list(split[key]) for key in SPLIT_KEYS}


def _check_given_split(category_dir: Path, split: dict, train: list[str], test: list[str]) -> None:
    """A shipped split must use each training image once and list every test image."""
    where = category_dir / SPLIT_FILE
    listed_train = list(split["train"]) + list(split["val"])
    if len(set(listed_train)) != len(listed_train):
        raise DataError(f"{where}: an image is listed twice in train/val")
    problems = [
        (set(listed_train), set(train), "train + val", "train/good"),
        (set(split["test"]), set(test), "test", "test/"),
    ]
    for listed, present, key, folder in problems:
        missing = sorted(listed - present)
        if missing:
            raise DataError(f"{where}: {key} lists {missing[0]}, which is not in {folder}")
        unlisted = sorted(present - listed)
        if unlisted:
            raise DataError(f"{where}: {unlisted[0]} is in {folder} but not in {key}")


def _relative(category_dir: Path, paths: Iterable[Path]) -> list[str]:
    return [path.relative_to(category_dir).as_posix() for path in paths]


def _output_name(relative: str) -> str:
    """Prepared images are PNG whatever the source format."""
    return PurePosixPath(relative).with_suffix(".png").as_posix()


def _size_text(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]}"
