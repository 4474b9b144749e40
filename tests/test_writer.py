"""Tests for orchestrate.workspace.writer: confined, atomic file writes."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from orchestrate.workspace.writer import (
    MAX_FILE_BYTES,
    UnsafePathError,
    Workspace,
    WrittenFile,
    check_relative_path,
)


@pytest.fixture
def outside(tmp_path):
    folder = tmp_path / "outside"
    folder.mkdir()
    return folder


@pytest.fixture
def workspace(tmp_path):
    return Workspace(tmp_path / "root")


def everything_under(folder):
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*"))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("/etc/passwd", "absolute paths are not allowed"),
        ("~/.bashrc", "absolute paths are not allowed"),
        ("C:x", "absolute paths are not allowed"),
        ("C:\\x", "backslashes"),
        ("a\\b", "backslashes"),
        ("../x", "'..' would leave"),
        ("a/../../x", "'..' would leave"),
        ("a/..", "'..' would leave"),
        ("a\x00b", "NUL or control characters"),
        ("a\nb", "NUL or control characters"),
        ("a\x1b[31mb", "NUL or control characters"),
        ("a\x7fb", "NUL or control characters"),
        (".git/hooks/pre-commit", "into a .git folder"),
        ("sub/.git/config", "into a .git folder"),
        ("x" * 256, "component is over 255 bytes"),
        ("é" * 128, "component is over 255 bytes"),
        ("a/" * 600, "characters long"),
        ("", "the path is empty"),
        ("   ", "the path is empty"),
        ("./", "names no file"),
        ("/", "absolute paths are not allowed"),
    ],
)
def test_hostile_paths_are_refused(workspace, raw, reason):
    with pytest.raises(UnsafePathError, match=reason):
        workspace.write(raw, "owned")
    assert everything_under(workspace.root) == []


def test_hostile_path_writes_nothing_outside(tmp_path):
    workspace = Workspace(tmp_path / "deep" / "root")
    with pytest.raises(UnsafePathError):
        workspace.write("../escaped.txt", "owned")
    assert not (tmp_path / "deep" / "escaped.txt").exists()


def test_check_relative_path_normalises():
    assert check_relative_path("./src//pkg/./mod.py") == PurePosixPath("src/pkg/mod.py")
    assert check_relative_path("x" * 255) == PurePosixPath("x" * 255)


def test_folder_symlink_leaving_root_is_refused(workspace, outside):
    (workspace.root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePathError, match="symlink that leaves the project"):
        workspace.write("link/evil.txt", "owned")
    with pytest.raises(UnsafePathError, match="symlink that leaves the project"):
        workspace.write("link/sub/evil.txt", "owned")
    assert everything_under(outside) == []


def test_file_symlink_leaving_root_is_refused(workspace, outside):
    secret = outside / "secret.txt"
    secret.write_text("original", encoding="utf-8")
    (workspace.root / "notes.txt").symlink_to(secret)
    with pytest.raises(UnsafePathError, match="is a symlink"):
        workspace.write("notes.txt", "owned")
    assert secret.read_text(encoding="utf-8") == "original"
    assert everything_under(outside) == ["secret.txt"]


def test_dangling_symlink_is_refused(workspace, outside):
    (workspace.root / "new.txt").symlink_to(outside / "not-yet.txt")
    with pytest.raises(UnsafePathError, match="is a symlink"):
        workspace.write("new.txt", "owned")
    assert not (outside / "not-yet.txt").exists()


def test_symlink_inside_root_is_followed(workspace):
    (workspace.root / "real").mkdir()
    (workspace.root / "alias").symlink_to(workspace.root / "real", target_is_directory=True)
    workspace.write("alias/a.txt", "ok")
    assert (workspace.root / "real" / "a.txt").read_text(encoding="utf-8") == "ok"


def test_existing_folder_at_target_is_refused(workspace):
    (workspace.root / "src").mkdir()
    with pytest.raises(UnsafePathError, match="not a regular file"):
        workspace.write("src", "x")


def test_oversized_content_is_refused(workspace):
    with pytest.raises(UnsafePathError, match=f"limit {MAX_FILE_BYTES}"):
        workspace.write("big.txt", "x" * (MAX_FILE_BYTES + 1))
    assert everything_under(workspace.root) == []


def test_size_limit_counts_utf8_bytes(workspace):
    content = "é" * (MAX_FILE_BYTES // 2 + 1)  # fewer characters than the limit
    with pytest.raises(UnsafePathError, match=f"is {MAX_FILE_BYTES + 2} bytes"):
        workspace.write("big.txt", content)


def test_content_at_limit_is_written(workspace):
    written = workspace.write("max.txt", "x" * MAX_FILE_BYTES)
    assert written.size_bytes == MAX_FILE_BYTES


def test_nested_write(workspace):
    written = workspace.write("./src//pkg/mod.py", "print('é')\n")
    assert written == WrittenFile("src/pkg/mod.py", len("print('é')\n".encode()), False)
    target = workspace.root / "src" / "pkg" / "mod.py"
    assert target.read_text(encoding="utf-8") == "print('é')\n"
    assert target.stat().st_mode & 0o777 == 0o644


def test_write_leaves_no_temp_files(workspace):
    workspace.write("a/b.txt", "one")
    workspace.write("a/b.txt", "two")
    workspace.write("c.txt", "three")
    assert everything_under(workspace.root) == ["a", "a/b.txt", "c.txt"]


def test_second_write_sets_replaced(workspace):
    first = workspace.write("a.txt", "one")
    second = workspace.write("a.txt", "second")
    assert (first.replaced, second.replaced) == (False, True)
    assert second.size_bytes == 6
    assert (workspace.root / "a.txt").read_text(encoding="utf-8") == "second"


def test_files_lists_relative_sorted_regular_files(workspace, outside):
    workspace.write("b.txt", "b")
    workspace.write("a/c.txt", "c")
    workspace.write("a/b/d.txt", "d")
    (outside / "x.txt").write_text("x", encoding="utf-8")
    (workspace.root / "link.txt").symlink_to(outside / "x.txt")
    assert workspace.files() == ["a/b/d.txt", "a/c.txt", "b.txt"]


def test_workspace_creates_root(tmp_path):
    workspace = Workspace(tmp_path / "new" / "root")
    assert workspace.root.is_dir()
    assert workspace.files() == []
