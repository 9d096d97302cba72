"""Registry of method families: one explicit entry per family, imported on first use.

Adding a method = one module with a :class:`~reconad.models.base.Method` subclass and
one line here.
"""

from __future__ import annotations

import importlib

from reconad.errors import ConfigError
from reconad.models.base import Detector, Method

_METHODS: dict[str, str] = {
    "sdc_ae": "reconad.models.sdc_ae:SdcAe",
    "aesc": "reconad.models.aesc:Aesc",
    "patch_ae": "reconad.models.patch_ae:PatchAe",
}


def method_class(family: str) -> type[Method]:
    """The Method subclass of ``family`` (``sdc_ae``, ``aesc``, ``patch_ae``)."""
    if family not in _METHODS:
        raise ConfigError(
            f"unknown method family '{family}' (allowed: {', '.join(sorted(_METHODS))})"
        )
    module_name, class_name = _METHODS[family].split(":")
    return getattr(importlib.import_module(module_name), class_name)


__all__ = ["Detector", "Method", "method_class"]
