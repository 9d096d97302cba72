"""Atomic writes: a stage that dies half-way never leaves a half-written file behind.

Every file is written to a hidden temporary file in its final directory, flushed to disk
(``fsync``) and moved onto its final name with ``os.replace``, which is atomic on POSIX and
Windows. DVC and the next stage therefore see either the old file or the new one. Disk
problems a user can fix (full disk, read-only or protected folder) become one-line
:class:`~reconad.errors.ReconadError` messages that name the path.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from reconad.errors import ReconadError

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_READ_ONLY = {errno.EROFS}
_DENIED = {errno.EACCES, errno.EPERM}


def os_error_message(exc: OSError, path: Path) -> str | None:
    """A one-line explanation of a disk error the user can fix, or None for other errors."""
    if exc.errno in _NO_SPACE:
        return f"no space left on device writing {path}: free space and re-run"
    if exc.errno in _READ_ONLY:
        return f"{path} is on a read-only file system: choose a writable location and re-run"
    if exc.errno in _DENIED:
        return f"{path}: permission denied: make the folder writable or choose another location"
    return None


@contextlib.contextmanager
def reporting_os_errors(path: Path) -> Iterator[None]:
    """Turn a full disk / read-only / permission OSError inside the block into a ReconadError.

    Other OSErrors propagate unchanged: they are bugs or transient faults, not user errors.
    """
    try:
        yield
    except OSError as exc:
        message = os_error_message(exc, path)
        if message is None:
            raise
        raise ReconadError(message) from exc


def check_writable(directory: Path) -> None:
    """Create ``directory`` and a file in it, so a stage fails before hours of work, not after.

    Raises:
        ReconadError: the folder is read-only, protected, or on a full disk.
    """
    directory = Path(directory)
    with reporting_os_errors(directory):
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-check.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, creating missing parent folders.

    Raises:
        ReconadError: the disk is full, read-only, or the folder is not writable.
    """
    path = Path(path)
    with reporting_os_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.chmod(tmp_name, 0o666 & ~_umask())
            _write_all(fd, data)
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.replace(tmp_name, path)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise
        _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, keys in insertion order, atomically.

    NaN and infinities are refused (``allow_nan=False``) because they are not JSON and
    break DVC metrics: the caller converts them (e.g. to None) first.

    Raises:
        ValueError: ``obj`` contains NaN or infinity, or is not JSON-serialisable.
        ReconadError: see :func:`atomic_write_bytes`.
    """
    text = json.dumps(obj, indent=2, allow_nan=False, ensure_ascii=False)
    atomic_write_text(path, text + "\n")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file a stage wrote; a missing or damaged one is a one-line error naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ReconadError(f"{path}: unreadable ({exc}); re-run the stage that writes it") from exc


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Build a folder in a temporary sibling and move it onto ``final`` when the block succeeds.

    An existing ``final`` is replaced only after the new folder is complete: it is first
    renamed aside, the new folder renamed in, then the old one deleted (and restored if the
    second rename fails). If the block raises, the temporary folder is removed and ``final``
    is left untouched; a full disk or refused write inside the block names ``final``.

    Yields:
        The temporary folder to fill.

    Raises:
        ReconadError: the disk is full, read-only, or the parent folder is not writable.
    """
    final = Path(final)
    with reporting_os_errors(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
        tmp.chmod(0o777 & ~_umask())
    try:
        with reporting_os_errors(final):
            yield tmp
            _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(new: Path, final: Path) -> None:
    if not final.exists() and not final.is_symlink():
        os.rename(new, final)
        _fsync_dir(final.parent)
        return
    old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".old"))
    os.rmdir(old)
    os.rename(final, old)
    try:
        os.rename(new, final)
    except BaseException:
        os.rename(old, final)
        raise
    _fsync_dir(final.parent)
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _umask() -> int:
    """The process umask, so outputs get the permissions a plain ``open`` would give them
    rather than the owner-only ones of ``tempfile``. POSIX has no getter: set and restore
    it, with a strict mask in between so a concurrent write is never more exposed."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(directory: Path) -> None:
    """Persist a rename; not every platform can open a folder, which is then fine to skip."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
