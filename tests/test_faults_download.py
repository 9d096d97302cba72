"""Issue 7, item 3: download faults, driven through ``reconad fetch`` against a local
HTTP server (or a local archive): a checksum mismatch, an interrupted download, and
archive members that would write outside the extraction folder."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from faults_support import assert_one_error, leftovers, make_raw_category, run_cli, write_params

CATEGORY = "widget"
ARCHIVE_NAME = "mvtec_anomaly_detection.tar.xz"
DOWNLOADS = Path("data/downloads")
EXTRACTED = Path("data/raw/mvtec_ad")
MANIFEST = Path("data/raw/manifest.json")


def build_archive(source: Path, extra: list[tuple[tarfile.TarInfo, bytes]] = ()) -> bytes:
    """A .tar.xz of the category folders of ``source``, then ``extra`` members."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        for path in sorted(source.rglob("*")):
            tar.add(path, arcname=path.relative_to(source).as_posix(), recursive=False)
        for member, data in extra:
            tar.addfile(member, io.BytesIO(data) if data else None)
    return buffer.getvalue()


@dataclass
class Server:
    """Serves one archive; can cut the first response short, and records Range headers."""

    body: bytes = b""
    cut_first_after: int | None = None
    ranges: list[str | None] = field(default_factory=list)
    url: str = ""


def _handler(state: Server) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requested = self.headers.get("Range")
            state.ranges.append(requested)
            start = int(requested.removeprefix("bytes=").rstrip("-")) if requested else 0
            body = state.body[start:]
            self.send_response(206 if start else 200)
            if start:
                self.send_header(
                    "Content-Range", f"bytes {start}-{len(state.body) - 1}/{len(state.body)}"
                )
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if state.cut_first_after is not None and len(state.ranges) == 1:
                self.wfile.write(body[: state.cut_first_after])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            """Quiet: the test asserts on what reconad prints."""

    return Handler


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/files/{ARCHIVE_NAME}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _mvtec_params(workdir: Path, **dataset: object) -> None:
    write_params(
        workdir,
        dataset__name="mvtec_ad",
        dataset__categories=[CATEGORY],
        **{f"dataset__{key}": value for key, value in dataset.items()},
    )


def _archive(workdir: Path) -> bytes:
    return build_archive(make_raw_category(workdir / "source", CATEGORY).parent)


def test_checksum_mismatch_keeps_the_file_aside_and_uses_nothing(
    workdir: Path, server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    server.body = _archive(workdir)
    actual = hashlib.sha256(server.body).hexdigest()
    _mvtec_params(workdir, url=server.url, sha256="0" * 64)
    code, _, err = run_cli(capsys, "fetch")
    bad = DOWNLOADS / f"{ARCHIVE_NAME}.bad-{actual[:12]}"
    assert_one_error(code, err, server.url, "SHA-256 mismatch", actual, str(bad), "dataset.sha256")
    assert bad.read_bytes() == server.body
    assert not (DOWNLOADS / ARCHIVE_NAME).exists()
    assert not EXTRACTED.exists() and not MANIFEST.exists()

    _mvtec_params(workdir, url=server.url, sha256=actual)
    assert run_cli(capsys, "fetch")[0] == 0
    assert len(server.ranges) == 2, "the bad copy must not be reused"
    assert json.loads(MANIFEST.read_text())["archive"]["sha256"] == actual


def test_an_interrupted_download_resumes_from_the_partial_file(
    workdir: Path, server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    server.body = _archive(workdir)
    cut = len(server.body) // 3
    server.cut_first_after = cut
    _mvtec_params(workdir, url=server.url, sha256=hashlib.sha256(server.body).hexdigest())

    code, _, err = run_cli(capsys, "fetch")
    assert_one_error(code, err, f"cannot download {server.url}", "re-run to resume")
    partial = DOWNLOADS / f"{ARCHIVE_NAME}.partial"
    assert partial.read_bytes() == server.body[:cut]
    assert not EXTRACTED.exists() and not MANIFEST.exists()

    code, _, err = run_cli(capsys, "fetch")
    assert code == 0, err
    assert server.ranges == [None, f"bytes={cut}-"]
    assert (DOWNLOADS / ARCHIVE_NAME).read_bytes() == server.body
    assert not partial.exists()
    assert len(list((EXTRACTED / CATEGORY / "train" / "good").glob("*.png"))) == 4
    assert MANIFEST.exists()


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    data = b"owned\n" if kind == tarfile.REGTYPE else b""
    info.size = len(data)
    return info, data


UNSAFE = {
    "absolute path": ([lambda root: _member(str(root / "outside" / "evil.txt"))], "absolute path"),
    "dot-dot": (
        [lambda root: _member(f"{CATEGORY}/../../../outside/evil.txt")],
        "'..' in its path",
    ),
    "symlink outside": (
        [
            lambda root: _member(f"{CATEGORY}/link", tarfile.SYMTYPE, "../../../../outside"),
            lambda root: _member(f"{CATEGORY}/link/evil.txt"),
        ],
        "symbolic link to '../../../../outside' outside the extraction folder",
    ),
    "absolute symlink": (
        [lambda root: _member(f"{CATEGORY}/link", tarfile.SYMTYPE, str(root / "outside"))],
        "symbolic link to",
    ),
    "hard link outside": (
        [lambda root: _member(f"{CATEGORY}/hard", tarfile.LNKTYPE, "../outside/evil.txt")],
        "hard link to '../outside/evil.txt' outside the extraction folder",
    ),
}


@pytest.mark.parametrize("case", list(UNSAFE), ids=list(UNSAFE))
def test_an_archive_member_escaping_the_target_is_refused(
    workdir: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    makers, reason = UNSAFE[case]
    members = [make(workdir) for make in makers]
    archive = workdir / ARCHIVE_NAME
    source = make_raw_category(workdir / "source", CATEGORY).parent
    archive.write_bytes(build_archive(source, members))
    _mvtec_params(workdir, archive=str(archive), sha256="")
    code, _, err = run_cli(capsys, "fetch")
    refused = f"refusing to extract member '{members[0][0].name}'"
    assert_one_error(code, err, str(archive), refused, reason)
    assert not EXTRACTED.exists() and not MANIFEST.exists()
    assert not (workdir / "outside").exists()
    assert not list(workdir.rglob("evil.txt"))
    assert leftovers(workdir / "data") == []
