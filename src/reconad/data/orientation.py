"""Which rot90/flips keep an MVTec AD image normal, per category.

Bauer et al. (SDC-AE v2, §4.1) augment with quarter turns and flips "depending on the
category". One ``default`` for all would teach a model that a mirrored metal nut (the
``flip`` defect) or a turned transistor (``misplaced``) is normal. So categories named
as in MVTec AD get :data:`MVTEC_AD` unless ``dataset.augment`` has an entry of their own;
an entry that allows more than the table is honoured, with a warning. The table is kept
free of TensorFlow and of ``reconad.config``, which reads it.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

from reconad.config import AugmentConfig, DatasetConfig

log = logging.getLogger("reconad")

OPERATIONS = ("rot90", "hflip", "vflip")


class Orientation(NamedTuple):
    """The random operations a category's images may undergo and still look normal."""

    rot90: bool
    hflip: bool
    vflip: bool


class Rule(NamedTuple):
    allowed: Orientation
    reason: str
    """Why, said of the category's images and defect types (shown in the warning)."""


ALL = Orientation(rot90=True, hflip=True, vflip=True)
NONE = Orientation(rot90=False, hflip=False, vflip=False)
TURNS_ONLY = Orientation(rot90=True, hflip=False, vflip=False)
FLIPS_ONLY = Orientation(rot90=False, hflip=True, vflip=True)

MVTEC_AD: dict[str, Rule] = {
    "bottle": Rule(ALL, "a round bottle seen from above looks the same turned or mirrored"),
    "cable": Rule(
        NONE,
        "three coloured wires in a fixed order and place; a flip reverses the order (what "
        "cable_swap looks like), a turn puts them where no normal has them",
    ),
    "capsule": Rule(
        NONE,
        "lies horizontal, its imprint one way round; a turn is a pose never seen, "
        "a mirrored imprint looks like faulty_imprint",
    ),
    "carpet": Rule(ALL, "a woven texture with no preferred direction"),
    "grid": Rule(ALL, "a regular wire mesh with no preferred direction"),
    "hazelnut": Rule(ALL, "natural nuts lying at any angle; a mirrored nut is still a nut"),
    "leather": Rule(ALL, "a grained texture with no preferred direction"),
    "metal_nut": Rule(
        TURNS_ONLY,
        "nuts lie at any angle but are chiral: a mirrored nut is the 'flip' defect",
    ),
    "pill": Rule(
        NONE,
        "lies horizontal, its imprint one way round; a turn is a pose never seen, "
        "a mirrored imprint looks like faulty_imprint",
    ),
    "screw": Rule(
        TURNS_ONLY,
        "screws lie at any angle but the thread is right-handed; a mirror makes it left-handed",
    ),
    "tile": Rule(ALL, "a speckled texture with no preferred direction"),
    "toothbrush": Rule(
        Orientation(rot90=False, hflip=True, vflip=False),
        "stands vertical, the same end up in every image; only the left-right mirror keeps "
        "that (the head is symmetric about its long axis)",
    ),
    "transistor": Rule(
        NONE,
        "sits upright on its board in the same place every time; a turned or mirrored part "
        "is what the 'misplaced' defect looks like",
    ),
    "wood": Rule(
        FLIPS_ONLY,
        "the grain runs top to bottom in every image; flips keep it, a quarter turn lays it across",
    ),
    "zipper": Rule(
        FLIPS_ONLY,
        "runs top to bottom in every image; its rows of teeth look the same mirrored",
    ),
}
"""The 15 MVTec AD categories; used for any dataset whose category has one of these names
(``folder`` is how a local MVTec AD copy is read)."""


def augmentation(dataset: DatasetConfig, category: str) -> AugmentConfig:
    """The rot90/flips ``category`` trains with: its own ``dataset.augment`` entry, else
    the table for an MVTec AD name (whatever ``dataset.name``: ``folder`` reads local
    MVTec copies), else ``dataset.augment.default``.

    The table keeps ``default`` from mirroring defects such as metal_nut's ``flip`` into
    normals. An explicit entry that allows what the table forbids is used, with a warning.
    """
    explicit = dataset.augment.get(category)
    if explicit is not None:
        warn_if_reoriented(category, explicit)
        return explicit
    allowed = table_entry(category)
    if allowed is not None:
        return AugmentConfig(**allowed._asdict())
    return dataset.augment["default"]


def table_entry(category: str) -> Orientation | None:
    """The operations the table allows ``category``; None if it is no MVTec AD name."""
    rule = MVTEC_AD.get(category)
    return rule.allowed if rule is not None else None


def forbidden_but_allowed(category: str, entry: AugmentConfig) -> list[str]:
    """The operations ``entry`` allows that the table forbids ``category``."""
    rule = MVTEC_AD.get(category)
    if rule is None:
        return []
    return [op for op in OPERATIONS if getattr(entry, op) and not getattr(rule.allowed, op)]


def warn_if_reoriented(category: str, explicit: AugmentConfig) -> None:
    """Warn when the user's own ``dataset.augment`` entry for an MVTec AD category allows
    an operation the table forbids: one that makes normals look like its defects, or
    shows poses no normal image has.

    Only an explicit entry can do that (the table wins over ``default``), and it is
    honoured: the user may know their copy better, but should hear what it costs.
    """
    ops = forbidden_but_allowed(category, explicit)
    if not ops:
        return
    keys = ", ".join(f"dataset.augment.{category}.{op}" for op in ops)
    log.warning(
        "dataset.augment.%s allows %s, which MVTec AD's %s should not get: %s. "
        "Set %s to false, or drop the entry to use the table",
        category,
        "/".join(ops),
        category,
        MVTEC_AD[category].reason,
        keys,
    )
