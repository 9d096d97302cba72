"""The fetch stage against a real HTTP server on 127.0.0.1 and real tar archives."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import re
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest

from faults_support import free_port
from pipeline_fixtures import repo_params
from reconad.config import Params, params_from_dict
from reconad.data.fetch import extract_categories, fetch_dataset, source_root
from reconad.errors import DataError, DownloadError

PROXY_VARIABLES = (
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
)


def _png_bytes(seed: int, size: int = 8) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".png", pixels)
    assert ok
    return encoded.tobytes()


def _category_members(category: str, seed: int) -> dict[str, bytes]:
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 2:5] = 255
    ok, mask_png = cv2.imencode(".png", mask)
    assert ok
    return {
        f"{category}/train/good/000.png": _png_bytes(seed),
        f"{category}/train/good/001.png": _png_bytes(seed + 1),
        f"{category}/test/good/000.png": _png_bytes(seed + 2),
        f"{category}/test/hole/000.png": _png_bytes(seed + 3),
        f"{category}/ground_truth/hole/000_mask.png": mask_png.tobytes(),
    }


def _add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def build_archive(path: Path, extra: list[tarfile.TarInfo] = ()) -> bytes:
    """A .tar.xz in MVTec AD layout with categories ``alpha`` and ``beta``, plus ``extra``."""
    with tarfile.open(path, "w:xz") as tar:
        _add_file(tar, "license.txt", b"CC BY-NC-SA 4.0\n")
        for category, seed in (("alpha", 0), ("beta", 10)):
            for name, data in _category_members(category, seed).items():
                _add_file(tar, name, data)
        for info in extra:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isreg() else None)
    return path.read_bytes()


@dataclass
class Server:
    """What the test server sends, and what it was asked."""

    payload: bytes = b""
    ignore_range: bool = False
    drop_after: int | None = None
    range_headers: list[str | None] = field(default_factory=list)
    url: str = ""


def _handler(state: Server) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/mvtec_anomaly_detection.tar.xz":
                self.send_error(404)
                return
            wanted = self.headers.get("Range")
            state.range_headers.append(wanted)
            body, start = state.payload, 0
            match = re.fullmatch(r"bytes=(\d+)-", wanted or "")
            if match and not state.ignore_range:
                start = int(match.group(1))
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            chunk = body[start:]
            if state.drop_after is not None:
                chunk, state.drop_after = chunk[: state.drop_after], None
            self.wfile.write(chunk)

        def log_message(self, *args: object) -> None:
            return

    return Handler


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    for variable in PROXY_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    state = Server()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/mvtec_anomaly_detection.tar.xz"
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _params(**dataset: object) -> Params:
    """The repository's params with ``dataset`` keys replaced; no URL or checksum unless
    given, so that nothing reaches the real download server."""
    raw = repo_params()
    raw["dataset"].update({"url": "", "sha256": "", **dataset})
    return params_from_dict(raw)


def _mvtec_params(categories: list[str], **dataset: object) -> Params:
    return _params(name="mvtec_ad", categories=categories, image_size=32, **dataset)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_verifies_and_extracts_only_the_chosen_categories(
    tmp_path: Path, server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    server.payload = build_archive(tmp_path / "a.tar.xz")
    params = _mvtec_params(["alpha"], url=server.url, sha256=_sha(server.payload))
    raw = tmp_path / "raw"
    root = fetch_dataset(params, raw)
    assert root == raw / "mvtec_ad" == source_root(params, raw)
    assert sorted(os.listdir(root)) == ["alpha"]
    extracted = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    expected = _category_members("alpha", 0)
    assert extracted == sorted(expected)
    assert all((root / name).read_bytes() == data for name, data in expected.items())
    download = raw / "downloads" / "mvtec_anomaly_detection.tar.xz"
    assert download.read_bytes() == server.payload
    assert server.range_headers == [None]
    manifest = json.loads((raw / "manifest.json").read_text())
    assert manifest["dataset"] == "mvtec_ad" and manifest["categories"] == ["alpha"]
    assert manifest["archive"]["sha256"] == _sha(server.payload)
    assert {f["path"]: (f["size"], f["sha256"]) for f in manifest["files"]} == {
        name: (len(data), _sha(data)) for name, data in expected.items()
    }
    assert "downloading mvtec_anomaly_detection.tar.xz: 100%" in capsys.readouterr().err


def test_checksum_mismatch_keeps_the_file_aside_and_extracts_nothing(
    tmp_path: Path, server: Server
) -> None:
    server.payload = build_archive(tmp_path / "a.tar.xz")
    wrong = "0" * 64
    params = _mvtec_params(["alpha"], url=server.url, sha256=wrong)
    with pytest.raises(DownloadError) as caught:
        fetch_dataset(params, tmp_path / "raw")
    actual = _sha(server.payload)
    message = str(caught.value)
    kept = tmp_path / "raw" / "downloads" / f"mvtec_anomaly_detection.tar.xz.bad-{actual[:12]}"
    assert wrong in message and actual in message and str(kept) in message
    assert kept.read_bytes() == server.payload
    assert os.listdir(tmp_path / "raw") == ["downloads"]
    assert os.listdir(tmp_path / "raw" / "downloads") == [kept.name]


def test_interrupted_download_resumes_with_a_range_request(tmp_path: Path, server: Server) -> None:
    server.payload = build_archive(tmp_path / "a.tar.xz")
    half = len(server.payload) // 2
    server.drop_after = half
    params = _mvtec_params(["beta"], url=server.url, sha256=_sha(server.payload))
    with pytest.raises(
        DownloadError, match=r"cannot download .*re-run to resume.*dataset\.archive"
    ):
        fetch_dataset(params, tmp_path / "raw")
    partial = tmp_path / "raw" / "downloads" / "mvtec_anomaly_detection.tar.xz.partial"
    assert partial.read_bytes() == server.payload[:half]

    root = fetch_dataset(params, tmp_path / "raw")
    assert server.range_headers == [None, f"bytes={half}-"]
    assert (tmp_path / "raw" / "downloads" / "mvtec_anomaly_detection.tar.xz").read_bytes() == (
        server.payload
    )
    assert not partial.exists()
    assert sorted(os.listdir(root)) == ["beta"]


def test_server_ignoring_range_restarts_cleanly(tmp_path: Path, server: Server) -> None:
    server.payload = build_archive(tmp_path / "a.tar.xz")
    server.ignore_range = True
    downloads = tmp_path / "raw" / "downloads"
    downloads.mkdir(parents=True)
    (downloads / "mvtec_anomaly_detection.tar.xz.partial").write_bytes(b"stale bytes")
    params = _mvtec_params(["alpha"], url=server.url, sha256=_sha(server.payload))
    fetch_dataset(params, tmp_path / "raw")
    assert server.range_headers == ["bytes=11-"]
    assert (downloads / "mvtec_anomaly_detection.tar.xz").read_bytes() == server.payload


def test_a_complete_partial_file_is_recognised(tmp_path: Path, server: Server) -> None:
    server.payload = build_archive(tmp_path / "a.tar.xz")
    downloads = tmp_path / "raw" / "downloads"
    downloads.mkdir(parents=True)
    (downloads / "mvtec_anomaly_detection.tar.xz.partial").write_bytes(server.payload)
    params = _mvtec_params(["alpha"], url=server.url, sha256=_sha(server.payload))
    fetch_dataset(params, tmp_path / "raw")
    assert server.range_headers == [f"bytes={len(server.payload)}-"]
    assert (downloads / "mvtec_anomaly_detection.tar.xz").read_bytes() == server.payload


def test_offline_is_a_one_line_download_error(tmp_path: Path, server: Server) -> None:
    url = f"http://127.0.0.1:{free_port()}/mvtec_anomaly_detection.tar.xz"
    with pytest.raises(DownloadError) as caught:
        fetch_dataset(_mvtec_params(["alpha"], url=url), tmp_path / "raw")
    message = str(caught.value)
    assert message.startswith(f"cannot download {url} (") and "\n" not in message
    assert "set dataset.archive: <path to mvtec_anomaly_detection.tar.xz>" in message


def test_http_error_is_a_download_error(tmp_path: Path, server: Server) -> None:
    url = server.url.replace("mvtec_anomaly_detection", "missing")
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch_dataset(_mvtec_params(["alpha"], url=url), tmp_path / "raw")


def test_local_archive_is_checked_and_extracted(tmp_path: Path) -> None:
    archive = tmp_path / "copy.tar.xz"
    payload = build_archive(archive)
    raw = tmp_path / "raw"
    params = _mvtec_params(["alpha", "beta"], archive=str(archive), sha256=_sha(payload))
    root = fetch_dataset(params, raw)
    assert sorted(os.listdir(root)) == ["alpha", "beta"]
    assert not (raw / "downloads").exists()
    bad = _mvtec_params(["alpha"], archive=str(archive), sha256="f" * 64)
    with pytest.raises(DownloadError, match=r"expected f{64}"):
        fetch_dataset(bad, tmp_path / "raw2")
    assert archive.read_bytes() == payload


def test_missing_category_in_archive_lists_what_is_there(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.xz"
    build_archive(archive)
    with pytest.raises(DownloadError, match=r"no category 'gamma' .*alpha, beta, license\.txt"):
        extract_categories(archive, tmp_path / "out", ["alpha", "gamma"])
    assert os.listdir(tmp_path) == ["a.tar.xz"]


def test_corrupt_archive_is_a_download_error(tmp_path: Path) -> None:
    archive = tmp_path / "junk.tar.xz"
    archive.write_bytes(b"\xfd7zXZ\x00" + bytes(range(200)))
    with pytest.raises(DownloadError, match="not a readable tar archive"):
        extract_categories(archive, tmp_path / "out", ["alpha"])
    assert os.listdir(tmp_path) == ["junk.tar.xz"]


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", size: int = 0):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = size
    return info


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (_member("/tmp/evil.png", size=3), "absolute path"),
        (_member("alpha/../../evil.png", size=3), "'..' in its path"),
        (
            _member("alpha/train/good/link.png", tarfile.SYMTYPE, "../../../../etc/passwd"),
            "symbolic",
        ),
        (_member("alpha/abs.png", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
        (_member("alpha/hard.png", tarfile.LNKTYPE, "../outside.png"), "hard link"),
        (_member("alpha/hard_abs.png", tarfile.LNKTYPE, "/etc/passwd"), "hard link"),
        (_member("alpha/dev", tarfile.CHRTYPE), "device"),
        (_member("alpha/pipe", tarfile.FIFOTYPE), "device or special file"),
    ],
)
def test_unsafe_members_are_refused_and_named(
    tmp_path: Path, member: tarfile.TarInfo, reason: str
) -> None:
    archive = tmp_path / "evil.tar.xz"
    build_archive(archive, extra=[member])
    with tarfile.open(archive) as tar:
        assert member.name in tar.getnames()
    with pytest.raises(DownloadError) as caught:
        extract_categories(archive, tmp_path / "out", ["alpha"])
    message = str(caught.value)
    assert f"refusing to extract member '{member.name}'" in message and reason in message
    assert sorted(os.listdir(tmp_path)) == ["evil.tar.xz"]


@pytest.mark.skipif(not hasattr(tarfile, "data_filter"), reason="Python without tarfile filters")
def test_link_chains_escaping_the_target_are_caught_by_the_data_filter(tmp_path: Path) -> None:
    """Each link looks harmless on its own; following both leaves the target folder."""
    archive = tmp_path / "chain.tar.xz"
    up = _member("alpha/up", tarfile.SYMTYPE, "..")
    escape = _member("alpha/escape", tarfile.SYMTYPE, "up/..")
    build_archive(archive, extra=[up, escape])
    with pytest.raises(DownloadError, match="refusing to extract member 'alpha/escape'"):
        extract_categories(archive, tmp_path / "out", ["alpha"])
    assert sorted(os.listdir(tmp_path)) == ["chain.tar.xz"]


def test_links_inside_the_target_are_allowed(tmp_path: Path) -> None:
    archive = tmp_path / "links.tar.xz"
    link = _member("alpha/train/good/002.png", tarfile.SYMTYPE, "000.png")
    build_archive(archive, extra=[link])
    extract_categories(archive, tmp_path / "out", ["alpha"])
    copy = tmp_path / "out" / "alpha" / "train" / "good" / "002.png"
    assert copy.is_symlink() and copy.read_bytes() == _png_bytes(0)


def test_folder_dataset_is_checked_and_described(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    for name, data in _category_members("alpha", 0).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    params = _params(name="folder", root=str(root), categories=["alpha"])
    assert fetch_dataset(params, tmp_path / "raw") == root
    manifest = json.loads((tmp_path / "raw" / "manifest.json").read_text())
    assert len(manifest["files"]) == 5 and manifest["source"] == str(root)
    before = {f["path"]: f["sha256"] for f in manifest["files"]}
    (root / "alpha/train/good/000.png").write_bytes(_png_bytes(99))
    fetch_dataset(params, tmp_path / "raw")
    after = json.loads((tmp_path / "raw" / "manifest.json").read_text())
    changed = [f["path"] for f in after["files"] if before[f["path"]] != f["sha256"]]
    assert changed == ["alpha/train/good/000.png"]
    (root / "alpha/ground_truth/hole/000_mask.png").unlink()
    with pytest.raises(DataError, match="without a mask"):
        fetch_dataset(params, tmp_path / "raw")


def test_mvtec_ad_extracted_copy_is_used_in_place(tmp_path: Path) -> None:
    root = tmp_path / "extracted"
    for name, data in _category_members("beta", 3).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    params = _mvtec_params(["beta"], root=str(root))
    assert fetch_dataset(params, tmp_path / "raw") == root == source_root(params, tmp_path)
    assert os.listdir(tmp_path / "raw") == ["manifest.json"]
    with pytest.raises(DataError, match=r"gamma: category folder not found .*beta"):
        fetch_dataset(_mvtec_params(["gamma"], root=str(root)), tmp_path / "raw")


def test_textures_are_built_and_described(tmp_path: Path) -> None:
    pytest.importorskip("reconad.data.textures")
    params = _params(
        name="textures",
        categories=["grass"],
        image_size=32,
        textures={"train": 3, "val": 2, "test_good": 2, "test_defect": 2},
    )
    root = fetch_dataset(params, tmp_path / "raw")
    assert root == tmp_path / "raw" / "textures" == source_root(params, tmp_path / "raw")
    manifest = json.loads((tmp_path / "raw" / "manifest.json").read_text())
    paths = {f["path"] for f in manifest["files"]}
    assert "grass/split.json" in paths and len(paths) == 12
    for entry in manifest["files"]:
        assert _sha((root / entry["path"]).read_bytes()) == entry["sha256"]
