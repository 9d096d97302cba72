"""The ``fetch`` stage: build, download or locate the raw dataset, and describe it.

- ``textures``: built offline into ``<raw_dir>/textures`` by :mod:`reconad.data.textures`.
- ``mvtec_ad``: a local archive (``dataset.archive``), an extracted copy (``dataset.root``),
  or a download of ``dataset.url``: resumed with an HTTP Range request after an
  interruption, checked against ``dataset.sha256``, then only the chosen categories are
  extracted, refusing any archive member that could write outside the target folder.
- ``folder``: a folder in MVTec AD layout (``dataset.root``), checked in place.

Every fetch writes ``<raw_dir>/manifest.json`` with the size and SHA-256 of every file of
the chosen categories, so DVC sees a change of content even in a folder outside the repo.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import lzma
import posixpath
import re
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from reconad import __version__
from reconad.config import DatasetConfig, Params
from reconad.data.layout import is_ignored, scan_category
from reconad.errors import ConfigError, DownloadError
from reconad.io import atomic_dir, atomic_write_json, reporting_os_errors

log = logging.getLogger("reconad")

MANIFEST_FILE = "manifest.json"
DOWNLOADS_DIR = "downloads"
TEXTURES_DIR = "textures"
MVTEC_DIR = "mvtec_ad"
PARTIAL_SUFFIX = ".partial"
CHUNK_BYTES = 1 << 20
TIMEOUT_SECONDS = 60.0
PROGRESS_STEPS = 10
_UNKNOWN_SIZE_STEP = 100 << 20
_MAX_ATTEMPTS = 3
_DEFAULT_ARCHIVE_NAME = "mvtec_anomaly_detection.tar.xz"
_HAS_DATA_FILTER = hasattr(tarfile, "data_filter")
_FILTER_ERRORS: tuple[type[Exception], ...] = (
    (tarfile.FilterError,) if hasattr(tarfile, "FilterError") else ()
)
_ARCHIVE_ERRORS = (tarfile.TarError, lzma.LZMAError, EOFError, zlib.error, OSError)


def source_root(params: Params, raw_dir: Path) -> Path:
    """The folder holding the raw categories after ``fetch``, in MVTec AD layout."""
    dataset = params.dataset
    if dataset.name == "textures":
        return Path(raw_dir) / TEXTURES_DIR
    if dataset.name == "folder" or (dataset.root and not dataset.archive):
        return Path(dataset.root)
    return Path(raw_dir) / MVTEC_DIR


def fetch_dataset(params: Params, raw_dir: Path, downloads_dir: Path | None = None) -> Path:
    """Make the raw categories of ``params.dataset`` available and write the manifest.

    Args:
        params: the dataset section decides what to do (see the module docstring).
        raw_dir: where built or extracted data and ``manifest.json`` go.
        downloads_dir: where the MVTec AD archive is downloaded (default
            ``<raw_dir>/downloads``); keep it outside DVC outputs to download only once.

    Returns:
        The source root (what :func:`source_root` names).

    Raises:
        DownloadError: the download, checksum or archive failed.
        DataError: a category folder is not in MVTec AD layout.
    """
    raw_dir = Path(raw_dir)
    dataset = params.dataset
    archive_entry: dict[str, Any] | None = None
    if dataset.name == "textures":
        root = _build_textures(params, raw_dir / TEXTURES_DIR)
    elif dataset.name == "folder" or (dataset.root and not dataset.archive):
        root = check_folder(Path(dataset.root), dataset.categories)
    else:
        archive, digest = _obtain_archive(dataset, Path(downloads_dir or raw_dir / DOWNLOADS_DIR))
        root = raw_dir / MVTEC_DIR
        extract_categories(archive, root, dataset.categories)
        check_folder(root, dataset.categories)
        archive_entry = {"name": archive.name, "sha256": digest}
    write_manifest(raw_dir / MANIFEST_FILE, dataset, root, archive_entry)
    return root


def check_folder(root: Path, categories: Iterable[str]) -> Path:
    """Check that every category of ``root`` follows the MVTec AD layout; return ``root``."""
    for category in categories:
        scan_category(root, category)
    return root


def write_manifest(
    path: Path, dataset: DatasetConfig, root: Path, archive: dict[str, Any] | None = None
) -> None:
    """Write the size and SHA-256 of every file of the chosen categories, atomically."""
    files = []
    for category in dataset.categories:
        for file in _dataset_files(root / category):
            files.append(
                {
                    "path": file.relative_to(root).as_posix(),
                    "size": file.stat().st_size,
                    "sha256": sha256_of(file),
                }
            )
    manifest: dict[str, Any] = {
        "dataset": dataset.name,
        "categories": list(dataset.categories),
        "source": str(root),
    }
    if archive is not None:
        manifest["archive"] = archive
    manifest["files"] = files
    atomic_write_json(path, manifest)


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks (archives are several GB)."""
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError as exc:
        raise DownloadError(f"{path}: cannot read ({exc.strerror})") from exc


def download(url: str, directory: Path, sha256: str) -> tuple[Path, str]:
    """Download ``url`` into ``directory`` (resuming a partial file) and check its SHA-256.

    The file is first written as ``<name>.partial``. A later call continues it with an
    HTTP Range request; a server that ignores Range sends the whole file again, which
    then replaces the partial one. A complete file whose hash differs from ``sha256`` is
    moved aside to ``<name>.bad-<hash prefix>`` so the next run downloads afresh while the
    bad copy stays available for inspection.

    Returns:
        The downloaded file and its SHA-256 (hex).

    Raises:
        DownloadError: the network failed (the partial file is kept for resuming), or the
            checksum does not match.
    """
    final = Path(directory) / _archive_name(url)
    if not final.is_file():
        _download_to(url, final)
    actual = sha256_of(final)
    if sha256 and actual != sha256.lower():
        bad = final.with_name(f"{final.name}.bad-{actual[:12]}")
        with reporting_os_errors(bad):
            final.replace(bad)
        raise DownloadError(
            f"{url}: SHA-256 mismatch (expected {sha256}, got {actual}); the file is kept as "
            f"{bad}; re-run to download again, or update dataset.sha256 if the archive changed"
        )
    return final, actual


def extract_categories(archive: Path, target: Path, categories: Iterable[str]) -> None:
    """Extract only the top-level folders ``categories`` of a tar archive into ``target``.

    The archive is read as a stream (one pass, no seeking: a .tar.xz cannot seek
    cheaply). Every member is checked first; an absolute path, a ``..`` component, a link
    leading outside ``target`` or a device file aborts the extraction with the member
    named. Python's ``data`` extraction filter is applied as a second line of defence.
    ``target`` is replaced only when the extraction succeeded.

    Raises:
        DownloadError: unsafe member, unreadable archive, or a category not in it.
    """
    archive, wanted = Path(archive), set(categories)
    found: set[str] = set()
    tops: set[str] = set()
    with atomic_dir(Path(target)) as tmp:
        try:
            with tarfile.open(archive, mode="r|*") as tar:
                for member in tar:
                    top = _checked_top_folder(archive, member)
                    tops.add(top)
                    if top not in wanted:
                        continue
                    if top not in found:
                        _say(f"extracting {top} from {archive.name}")
                        found.add(top)
                    _extract_member(tar, member, tmp, archive)
        except _ARCHIVE_ERRORS as exc:
            raise DownloadError(
                f"{archive}: not a readable tar archive ({exc}); delete it and re-run"
            ) from exc
        missing = sorted(wanted - found)
        if missing:
            available = ", ".join(sorted(top for top in tops if top)) or "nothing"
            raise DownloadError(
                f"{archive}: no category '{missing[0]}' in the archive (it has: {available})"
            )


def _build_textures(params: Params, target: Path) -> Path:
    from reconad.data.textures import build_textures

    dataset = params.dataset
    build_textures(
        target, list(dataset.categories), dataset.image_size, dataset.textures, params.seed
    )
    return target


def _obtain_archive(dataset: DatasetConfig, downloads_dir: Path) -> tuple[Path, str]:
    """The checked archive (local or downloaded) and its SHA-256."""
    if dataset.archive:
        archive = Path(dataset.archive)
        if not archive.is_file():
            raise DownloadError(f"dataset.archive: {archive} does not exist")
        actual = sha256_of(archive)
        if dataset.sha256 and actual != dataset.sha256.lower():
            raise DownloadError(
                f"{archive}: SHA-256 is {actual}, expected {dataset.sha256} (dataset.sha256); "
                "use the original archive, or set dataset.sha256 to '' to skip the check"
            )
        return archive, actual
    if not dataset.url:
        raise ConfigError("dataset.url: empty; set dataset.url, dataset.archive or dataset.root")
    return download(dataset.url, downloads_dir, dataset.sha256)


def _archive_name(url: str) -> str:
    name = PurePosixPath(urllib.parse.urlparse(url).path).name
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or _DEFAULT_ARCHIVE_NAME


def _download_to(url: str, final: Path) -> None:
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    with reporting_os_errors(final.parent):
        final.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(_MAX_ATTEMPTS):
        offset = partial.stat().st_size if partial.is_file() else 0
        if _transfer(url, partial, offset):
            with reporting_os_errors(final):
                partial.replace(final)
            return
        with reporting_os_errors(partial):
            partial.unlink(missing_ok=True)
    raise DownloadError(
        f"cannot download {url} (the server does not resume consistently); "
        f"download it manually and set dataset.archive: <path to {final.name}>"
    )


def _transfer(url: str, partial: Path, offset: int) -> bool:
    """One HTTP request; True when ``partial`` is complete, False to restart from zero."""
    headers = {"User-Agent": f"reconad/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            return _content_range(exc.headers.get("Content-Range"))[1] == offset
        raise _cannot_download(url, f"HTTP {exc.code} {exc.reason}", partial) from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        raise _cannot_download(url, _reason(exc), partial) from exc
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        if offset and response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                return False
            _say(f"resuming {partial.name} at {_megabytes(offset)}")
        else:
            offset = 0
        _receive(response, partial, offset, total, url)
    return True


def _receive(response: BinaryIO, partial: Path, offset: int, total: int | None, url: str) -> None:
    """Append the body to ``partial`` (or overwrite it when ``offset`` is 0)."""
    progress = _Progress(partial.name.removesuffix(PARTIAL_SUFFIX), offset, total)
    with reporting_os_errors(partial), open(partial, "ab" if offset else "wb") as handle:
        while True:
            try:
                chunk = response.read(CHUNK_BYTES)
            except (OSError, http.client.HTTPException) as exc:
                raise _cannot_download(url, _reason(exc), partial) from exc
            if not chunk:
                break
            handle.write(chunk)
            progress.advance(len(chunk))
    if total is not None and progress.done != total:
        raise _cannot_download(
            url, f"connection closed at {progress.done} of {total} bytes", partial
        )


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of ``bytes 100-199/1000`` or ``bytes */1000``."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", header or "")
    if match is None:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total and total != "*" else None)


def _cannot_download(url: str, reason: str, partial: Path) -> DownloadError:
    name = partial.name.removesuffix(PARTIAL_SUFFIX)
    return DownloadError(
        f"cannot download {url} ({reason}); re-run to resume, or download it manually "
        f"and set dataset.archive: <path to {name}>"
    )


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
    return str(reason) or type(exc).__name__


def _checked_top_folder(archive: Path, member: tarfile.TarInfo) -> str:
    """The first path component of a member that is safe to extract, else DownloadError."""
    name = member.name.replace("\\", "/")
    reason = _unsafe_reason(name, member)
    if reason:
        raise DownloadError(
            f"{archive}: refusing to extract member '{member.name}' ({reason}); "
            "the archive is not a genuine dataset archive"
        )
    parts = [part for part in PurePosixPath(name).parts if part != "."]
    return parts[0] if parts else ""


def _unsafe_reason(name: str, member: tarfile.TarInfo) -> str | None:
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in PurePosixPath(name).parts:
        return "'..' in its path"
    if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
        return "device or special file"
    if member.issym():
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
        if member.linkname.startswith("/") or _leaves_root(resolved):
            return f"symbolic link to '{member.linkname}' outside the extraction folder"
    if member.islnk():
        resolved = posixpath.normpath(member.linkname.replace("\\", "/"))
        if member.linkname.startswith("/") or _leaves_root(resolved):
            return f"hard link to '{member.linkname}' outside the extraction folder"
    return None


def _leaves_root(relative: str) -> bool:
    return relative == ".." or relative.startswith("../")


def _extract_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path, archive: Path
) -> None:
    options = {"filter": "data"} if _HAS_DATA_FILTER else {}
    try:
        with reporting_os_errors(target):
            tar.extract(member, target, **options)
    except _FILTER_ERRORS as exc:
        raise DownloadError(
            f"{archive}: refusing to extract member '{member.name}' ({exc}); "
            "the archive is not a genuine dataset archive"
        ) from exc


def _dataset_files(folder: Path) -> list[Path]:
    """Regular files under ``folder``, sorted, without hidden files or folders."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and not any(is_ignored(Path(part)) for part in path.relative_to(folder).parts)
    )


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB"


def _say(message: str) -> None:
    """Progress goes to stderr, one line at a time, whatever the logging set-up."""
    print(message, file=sys.stderr, flush=True)


class _Progress:
    """Prints one line per tenth of a download (per 100 MB when the size is unknown)."""

    def __init__(self, name: str, done: int, total: int | None) -> None:
        self.name = name
        self.done = done
        self.total = total
        self._next = self._step_after(done)

    def advance(self, count: int) -> None:
        self.done += count
        if self.done < self._next:
            return
        if self.total:
            percent = 100 * self.done // self.total
            _say(f"downloading {self.name}: {percent}% ({_megabytes(self.done)})")
        else:
            _say(f"downloading {self.name}: {_megabytes(self.done)}")
        self._next = self._step_after(self.done)

    def _step_after(self, done: int) -> int:
        if not self.total:
            return (done // _UNKNOWN_SIZE_STEP + 1) * _UNKNOWN_SIZE_STEP
        step = max(1, self.total // PROGRESS_STEPS)
        return min(self.total, (done // step + 1) * step)
