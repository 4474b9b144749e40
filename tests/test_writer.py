"""Tests for orchestrate.workspace.writer: confined, atomic file writes."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrate.errors import SecretFoundError
from orchestrate.safety.secrets import SecretScanner
from orchestrate.workspace.writer import (
    LOCK_STRIPES,
    MAX_FILE_BYTES,
    UnsafePathError,
    Workspace,
    WrittenFile,
    check_relative_path,
)

SRC = Path(__file__).resolve().parents[1] / "src"
AWS_KEY = "AKIA" + "IOSFODNN7EXAMPLE"  # AWS's documented example key, split to keep scanners calm


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
    assert written == WrittenFile("src/pkg/mod.py", len("print('é')\n".encode()), False, True)
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


# --- locks, fsync, no-op writes, special files -------------------------------------------


def test_unchanged_content_is_a_no_op(workspace):
    first = workspace.write("a.txt", "same")
    inode = (workspace.root / "a.txt").stat().st_ino
    again = workspace.write("a.txt", "same")
    assert (first.changed, again.changed, again.replaced) == (True, False, True)
    assert (workspace.root / "a.txt").stat().st_ino == inode  # not even renamed over


def test_a_fifo_at_the_target_is_refused_without_blocking(workspace):
    os.mkfifo(workspace.root / "pipe")
    with pytest.raises(UnsafePathError, match="not a regular file"):
        workspace.write("pipe", "data")


def test_a_symlink_to_a_device_is_refused(workspace):
    (workspace.root / "null").symlink_to("/dev/null")
    with pytest.raises(UnsafePathError, match="is a symlink"):
        workspace.write("null", "data")


def test_a_file_in_place_of_a_folder_is_refused(workspace):
    workspace.write("src", "a file")
    with pytest.raises(UnsafePathError, match="is a file, not a folder"):
        workspace.write("src/app.py", "x")


def test_lock_files_are_bounded_and_kept(tmp_path):
    workspace = Workspace(tmp_path / "root", lock_dir=tmp_path / "locks")
    for index in range(40):
        workspace.write(f"f{index}.txt", "x")
    locks = list((tmp_path / "locks").iterdir())
    assert 0 < len(locks) <= LOCK_STRIPES
    assert all(lock.name.startswith("write-") and lock.suffix == ".lock" for lock in locks)
    assert "locks" not in everything_under(workspace.root)


def test_read_is_confined_like_write(workspace, outside):
    workspace.write("notes/a.txt", "hello")
    (outside / "secret.txt").write_text("top secret", encoding="utf-8")
    (workspace.root / "out").symlink_to(outside, target_is_directory=True)
    assert workspace.read("notes/a.txt") == "hello"
    with pytest.raises(UnsafePathError, match="symlink that leaves"):
        workspace.read("out/secret.txt")
    with pytest.raises(UnsafePathError, match=r"'\.\.' would leave"):
        workspace.read("../outside/secret.txt")
    with pytest.raises(UnsafePathError, match="does not exist"):
        workspace.read("missing.txt")


def test_secrets_are_redacted_before_the_write(tmp_path):
    workspace = Workspace(tmp_path / "root", scanner=SecretScanner("redact"))
    written = workspace.write("settings.py", f'AWS_KEY = "{AWS_KEY}"\n')
    assert [finding.kind for finding in written.findings] == ["AWS Access Key"]
    assert (workspace.root / "settings.py").read_text() == 'AWS_KEY = "<redacted>"\n'


def test_refuse_mode_writes_nothing(tmp_path):
    workspace = Workspace(tmp_path / "root", scanner=SecretScanner("refuse"))
    with pytest.raises(SecretFoundError) as info:
        workspace.write("settings.py", f'AWS_KEY = "{AWS_KEY}"\n')
    assert AWS_KEY not in str(info.value)
    assert "AWS Access Key on line 1" in str(info.value)
    assert everything_under(workspace.root) == []


# --- concurrency: every file ends as one complete content that was written ---------------


def content_for(writer: str, number: int) -> str:
    """A few KiB whose every line names its writer, so a torn or mixed file shows."""
    return "".join(f"{writer}:{number}:{line:04d}\n" for line in range(300))


def assert_each_file_is_one_whole_write(root, paths) -> None:
    for path in paths:
        text = (root / path).read_text(encoding="utf-8")
        writer, number, _ = text.split(":", 2)
        assert text == content_for(writer, int(number)), path
    assert not [name for name in everything_under(root) if ".tmp-" in name]


def test_threads_writing_shared_paths_never_tear_a_file(tmp_path):
    workspace = Workspace(tmp_path / "root", lock_dir=tmp_path / "locks")
    paths = [f"shared/{index}.txt" for index in range(5)]
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        start.wait()
        try:
            for number in range(60):
                workspace.write(paths[number % len(paths)], content_for(name, number))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"t{index}",)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert_each_file_is_one_whole_write(workspace.root, paths)


WRITER_PROCESS = """
import sys
from pathlib import Path
from orchestrate.workspace.writer import Workspace
root, locks, name, count, go = sys.argv[1:6]
workspace = Workspace(Path(root), lock_dir=Path(locks))
while not Path(go).exists():
    pass
for number in range(int(count)):
    text = "".join(f"{name}:{number}:{line:04d}\\n" for line in range(300))
    workspace.write(f"shared/{number % 5}.txt", text)
"""


def test_processes_writing_shared_paths_never_tear_a_file(tmp_path):
    go = tmp_path / "go"
    command = [sys.executable, "-c", WRITER_PROCESS, str(tmp_path / "root")]
    command += [str(tmp_path / "locks")]
    processes = [
        subprocess.Popen([*command, f"p{index}", "40", str(go)], env=_env_with_src())
        for index in range(4)
    ]
    go.touch()  # every process spins on this file, so their writes overlap
    assert [process.wait(timeout=120) for process in processes] == [0, 0, 0, 0]
    assert_each_file_is_one_whole_write(tmp_path / "root", [f"shared/{i}.txt" for i in range(5)])


def _env_with_src() -> dict[str, str]:
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    return env


LOCK_HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.readline()
with open(sys.argv[2], "w") as stream:
    stream.write("written by the lock holder")
os.close(fd)
"""


def test_a_write_waits_for_another_process_holding_the_lock(tmp_path):
    workspace = Workspace(tmp_path / "root", lock_dir=tmp_path / "locks")
    target = workspace.root / "a.txt"
    lock = workspace.lock_path(target)
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(lock), str(target)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline() == "locked\n"
    writer = threading.Thread(target=workspace.write, args=("a.txt", "written by us"))
    writer.start()
    writer.join(timeout=0.5)
    # Sound in one direction only: a working lock keeps the writer waiting however long.
    assert writer.is_alive()
    holder.stdin.write("go\n")
    holder.stdin.flush()
    assert holder.wait(timeout=60) == 0
    writer.join()
    assert target.read_text() == "written by us"  # it wrote after the holder, as it waited


# --- property: nothing is ever written outside the root ----------------------------------

SEGMENTS = st.one_of(
    st.sampled_from(
        ["..", ".", "", "~", "/", "link_out", "file_out", "dangling", "inner", "pipe", ".git"]
    ),
    st.sampled_from(["..%2f", "é", "\u202e", "\u0000", "a\x00b", "C:", "\\", "x" * 300, "日本"]),
    st.text(min_size=1, max_size=12),
)
HOSTILE_PATHS = st.one_of(
    st.lists(SEGMENTS, min_size=1, max_size=6).map("/".join),
    st.lists(SEGMENTS, min_size=1, max_size=3).map(lambda parts: "/" + "/".join(parts)),
    st.text(max_size=40),
    st.text(min_size=1000, max_size=1100),
)


def snapshot(folder):
    return {
        path.relative_to(folder).as_posix(): path.read_bytes() if path.is_file() else None
        for path in folder.rglob("*")
    }


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=HOSTILE_PATHS)
def test_hostile_paths_never_write_outside_the_root(raw):
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        outside = base / "outside"
        outside.mkdir()
        (outside / "victim.txt").write_text("untouched")
        root = base / "root"
        root.mkdir()
        (root / "link_out").symlink_to(outside, target_is_directory=True)
        (root / "file_out").symlink_to(outside / "victim.txt")
        (root / "dangling").symlink_to(outside / "created-by-attack.txt")
        (root / "inner").mkdir()
        os.mkfifo(root / "pipe")
        before = snapshot(outside)
        workspace = Workspace(root, lock_dir=base / "locks")

        try:
            written = workspace.write(raw, "owned")
        except UnsafePathError:
            written = None

        assert snapshot(outside) == before
        assert sorted(path.name for path in base.iterdir()) == ["locks", "outside", "root"]
        if written is not None:
            target = (root / written.path).resolve()
            assert target.is_relative_to(root.resolve())
            assert target.read_text() == "owned"
