"""User-facing errors: one line that names the file or key and what to do.

Every failure a user can cause (bad params, unreadable images, a failed download, a full
disk) is raised as a ``ReconadError``; the CLI prints its message on one line and exits
non-zero, and shows the traceback only with ``--debug``.
"""

from __future__ import annotations


class ReconadError(Exception):
    """An error the user can fix; its message is shown without a traceback."""


class ConfigError(ReconadError):
    """``params.yaml`` (or a ``-S`` override) is invalid."""


class DataError(ReconadError):
    """An input image, mask or dataset folder is unusable."""


class DownloadError(ReconadError):
    """A dataset download or archive could not be used."""


class TrainingError(ReconadError):
    """Training cannot go on (e.g. the loss became NaN)."""
