"""Atomic writes: complete files or nothing, and one-line errors for disk problems."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from reconad.errors import ReconadError
from reconad.io import (
    atomic_dir,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_json,
    reporting_os_errors,
)

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name not in keep)


def test_write_bytes_creates_parents_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "file.bin"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert _leftovers(target.parent, {"file.bin"}) == []


def test_write_text_is_utf8(tmp_path: Path) -> None:
    target = tmp_path / "t.txt"
    atomic_write_text(target, "Größe ✓")
    assert target.read_bytes() == "Größe ✓".encode()


def test_write_json_keeps_insertion_order_and_refuses_nan(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    atomic_write_json(target, {"z": 1, "a": [1.5, None]})
    assert list(json.loads(target.read_text())) == ["z", "a"]
    assert target.read_text().startswith('{\n  "z": 1')
    with pytest.raises(ValueError):
        atomic_write_json(target, {"auroc": float("nan")})
    assert json.loads(target.read_text()) == {"z": 1, "a": [1.5, None]}
    assert _leftovers(tmp_path, {"m.json"}) == []


@pytest.mark.parametrize("function", ["write", "fsync"])
def test_full_disk_is_a_one_line_error_and_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, function: str
) -> None:
    target = tmp_path / "scores.json"
    target.write_text("old")

    def no_space(*args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, function, no_space)
    with pytest.raises(ReconadError, match=r"no space left on device writing .*scores\.json"):
        atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert _leftovers(tmp_path, {"scores.json"}) == []


@pytest.mark.parametrize(
    ("code", "message"),
    [(errno.EROFS, "read-only file system"), (errno.EACCES, "permission denied")],
)
def test_read_only_or_protected_folder_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, message: str
) -> None:
    def refuse(*args: object, **kwargs: object) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(ReconadError, match=message) as caught:
        atomic_write_bytes(tmp_path / "x.bin", b"data")
    monkeypatch.undo()
    assert str(tmp_path / "x.bin") in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.skipif(IS_ROOT, reason="root ignores folder permissions; covered by the EACCES case")
def test_real_read_only_folder(tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(ReconadError, match="permission denied"):
            atomic_write_bytes(folder / "x.bin", b"data")
        with pytest.raises(ReconadError, match="permission denied"), atomic_dir(folder / "sub"):
            pass
    finally:
        folder.chmod(0o755)


def test_other_os_errors_pass_through(tmp_path: Path) -> None:
    with pytest.raises(OSError) as caught, reporting_os_errors(tmp_path):
        raise OSError(errno.EIO, "I/O error")
    assert not isinstance(caught.value, ReconadError)


def test_atomic_dir_moves_the_complete_folder_into_place(tmp_path: Path) -> None:
    final = tmp_path / "out"
    with atomic_dir(final) as tmp:
        assert tmp.parent == tmp_path and tmp != final
        (tmp / "a.txt").write_text("1")
        assert not final.exists()
    assert (final / "a.txt").read_text() == "1"
    assert _leftovers(tmp_path, {"out"}) == []


def test_atomic_dir_replaces_an_existing_folder(tmp_path: Path) -> None:
    final = tmp_path / "out"
    final.mkdir()
    (final / "stale.txt").write_text("old")
    with atomic_dir(final) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(os.listdir(final)) == ["new.txt"]
    assert _leftovers(tmp_path, {"out"}) == []


def test_atomic_dir_leaves_nothing_behind_on_error(tmp_path: Path) -> None:
    final = tmp_path / "out"
    final.mkdir()
    (final / "kept.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_dir(final) as tmp:
        (tmp / "half.txt").write_text("partial")
        raise RuntimeError("boom")
    assert sorted(os.listdir(final)) == ["kept.txt"]
    assert _leftovers(tmp_path, {"out"}) == []
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "fresh"):
        raise RuntimeError("boom")
    assert _leftovers(tmp_path, {"out"}) == []


def test_atomic_dir_restores_the_old_folder_when_the_swap_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    final = tmp_path / "out"
    final.mkdir()
    (final / "kept.txt").write_text("old")
    real_rename = os.rename
    calls = []

    def failing_second_rename(src: str, dst: str) -> None:
        calls.append((src, dst))
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_second_rename)
    with pytest.raises(ReconadError, match="no space left"), atomic_dir(final) as tmp:
        (tmp / "new.txt").write_text("new")
    monkeypatch.undo()
    assert sorted(os.listdir(final)) == ["kept.txt"]
    assert _leftovers(tmp_path, {"out"}) == []


def test_read_json_returns_what_atomic_write_json_wrote(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "a.json", {"b": [1, 2.5], "c": "d"})
    assert read_json(tmp_path / "a.json") == {"b": [1, 2.5], "c": "d"}


@pytest.mark.parametrize("content", [None, "{not json"], ids=["missing", "damaged"])
def test_read_json_names_a_missing_or_damaged_file(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "curves.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ReconadError, match=r"curves\.json: unreadable .*re-run the stage"):
        read_json(path)
