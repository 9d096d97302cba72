"""Registry of method families: one entry per family, its module imported on first use.

Adding a family = one module in this package (a :class:`~reconad.models.base.Method`
subclass with its ``Config`` schema), one entry here, its params block and its
``dvc.yaml`` blocks; ``docs/adding-a-method.md`` lists the exact edits.

This module imports no TensorFlow: ``reconad.config`` reads it to know which top-level
params blocks belong to which family.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from reconad.errors import ConfigError

if TYPE_CHECKING:
    from reconad.models.base import Method


@dataclass(frozen=True)
class Family:
    """Where a family lives and which top-level params blocks it owns.

    ``blocks[0]`` is the family's own block; further blocks are owned too but stay at
    the top level of params.yaml (SDC-AE's ``loss``, so that ``-S loss.lambda=...``
    sweeps it).
    """

    target: str
    """``module:Class`` of the :class:`~reconad.models.base.Method` subclass."""
    blocks: tuple[str, ...]


FAMILIES: dict[str, Family] = {
    "sdc_ae": Family("reconad.models.sdc_ae:SdcAe", ("sdc_ae", "loss")),
    "aesc": Family("reconad.models.aesc:Aesc", ("aesc",)),
    "patch_ae": Family("reconad.models.patch_ae:PatchAe", ("patch_ae",)),
    "patchcore": Family("reconad.models.patchcore:PatchCore", ("patchcore",)),
    "ensemble": Family("reconad.models.ensemble:Ensemble", ("ensemble",)),
}


def method_class(family: str) -> type[Method]:
    """The Method subclass of ``family``."""
    if family not in FAMILIES:
        raise ConfigError(
            f"unknown method family '{family}' (allowed: {', '.join(sorted(FAMILIES))})"
        )
    module_name, class_name = FAMILIES[family].target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def family_config(family: str) -> Any:
    """The pydantic schema of ``family``'s params block."""
    return method_class(family).Config


def block_owner(block: str) -> str | None:
    """The family that owns top-level params block ``block``, if any."""
    return next((name for name, entry in FAMILIES.items() if block in entry.blocks), None)
