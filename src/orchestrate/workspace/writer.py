"""Write generated files under one root: confined, locked, atomic and scanned for secrets.

A path from a model is untrusted input. It is refused when it is absolute, climbs with
``..``, holds NUL or control characters, uses backslashes, names a ``.git`` folder, is
too long, or would pass through a symlink (or onto a device, FIFO or other non-regular
file) that leaves the root. Content over the size limit is refused too.

Accepted content is scanned for secrets (redacted or refused, see ``safety.secrets``),
then written under two locks: a lock per path stripe inside the process, because threads
of one process would share one ``flock``, and an exclusive ``fcntl.flock`` on a lock file
in ``lock_dir``, shared by every process. Lock files are never unlinked: unlinking one
while another process waits on it would break mutual exclusion. Under the locks, content
equal to what is on disk is a no-op; anything else goes to a temporary file in the same
folder, is fsynced, renamed over the target with ``os.replace`` and the folder is fsynced,
so a reader (or a crash) sees either the old or the new file, never a mix.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import stat
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from orchestrate.errors import UnsafePathError

if TYPE_CHECKING:
    from orchestrate.safety.secrets import SecretFinding, SecretScanner

__all__ = [
    "MAX_FILE_BYTES",
    "UnsafePathError",
    "Workspace",
    "WrittenFile",
    "check_relative_path",
    "default_lock_dir",
]

MAX_FILE_BYTES = 1_000_000
MAX_PATH_CHARS = 1024
MAX_NAME_BYTES = 255
LOCK_STRIPES = 256  # paths share lock files by hash: a bounded set, never unlinked
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")
_thread_locks: dict[Path, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


@dataclass(frozen=True)
class WrittenFile:
    path: str  # relative to the workspace root, with forward slashes
    size_bytes: int
    replaced: bool  # an earlier file at the same path was overwritten
    changed: bool = True  # False when the file already held exactly this content
    findings: tuple[SecretFinding, ...] = field(default=())  # secrets found, redacted


def default_lock_dir() -> Path:
    """Where lock files go when the caller names no state directory."""
    return Path(tempfile.gettempdir()) / f"orchestrate-locks-{os.getuid()}"


def check_relative_path(raw: str) -> PurePosixPath:
    """Validate a model-supplied path and return it normalised, or raise UnsafePathError."""
    if not raw or not raw.strip():
        raise UnsafePathError("the path is empty")
    if _CONTROL_CHARS.search(raw):
        raise UnsafePathError("the path contains NUL or control characters")
    if len(raw) > MAX_PATH_CHARS:
        raise UnsafePathError(f"the path is {len(raw)} characters long (limit {MAX_PATH_CHARS})")
    if "\\" in raw:
        raise UnsafePathError("the path uses backslashes; use '/' between folders")
    if raw.startswith(("/", "~")) or _DRIVE_LETTER.match(raw):
        raise UnsafePathError("absolute paths are not allowed; give a path inside the project")
    parts = [part for part in raw.split("/") if part not in ("", ".")]
    if not parts:
        raise UnsafePathError("the path names no file")
    for part in parts:
        if part == "..":
            raise UnsafePathError("'..' would leave the project folder")
        if part == ".git":
            raise UnsafePathError("writing into a .git folder is not allowed")
        if len(part.encode()) > MAX_NAME_BYTES:
            raise UnsafePathError(f"a path component is over {MAX_NAME_BYTES} bytes")
    return PurePosixPath(*parts)


class Workspace:
    """A folder that generated files are written into, and never out of."""

    def __init__(
        self,
        root: Path,
        *,
        lock_dir: Path | None = None,
        scanner: SecretScanner | None = None,
        max_file_bytes: int = MAX_FILE_BYTES,
        durable: bool = True,
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()
        self.lock_dir = lock_dir or default_lock_dir()
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        self.scanner = scanner
        self.max_file_bytes = max_file_bytes
        # Scratch space (a staging area, wiped after a crash) skips the fsyncs: the file
        # becomes durable when it is merged into outputs, which is written durably.
        self.durable = durable

    def write(self, raw_path: str, content: str) -> WrittenFile:
        """Write one file atomically; raise UnsafePathError (or SecretFoundError) if refused."""
        relative = check_relative_path(raw_path)
        findings: tuple[SecretFinding, ...] = ()
        if self.scanner is not None:
            content, findings = self.scanner.check(relative.as_posix(), content)
        data = content.encode("utf-8")
        if len(data) > self.max_file_bytes:
            raise UnsafePathError(f"the content is {len(data)} bytes (limit {self.max_file_bytes})")
        target = self.root.joinpath(*relative.parts)
        with self._locked(target):
            target = self._confined_target(relative)
            current = _read_regular(target)
            if current == data:
                return WrittenFile(relative.as_posix(), len(data), True, False, findings)
            _replace_atomically(target, data, durable=self.durable)
        return WrittenFile(relative.as_posix(), len(data), current is not None, True, findings)

    def read(self, raw_path: str) -> str:
        """Read one file under the root, with the same confinement as writing."""
        relative = check_relative_path(raw_path)
        target = self.root.joinpath(*relative.parts)
        self._ensure_inside(target.parent, relative)
        data = _read_regular(target, limit=self.max_file_bytes)
        if data is None:
            raise UnsafePathError(f"'{relative}' does not exist or is not a regular file")
        return data.decode("utf-8", errors="replace")

    def files(self) -> list[str]:
        """Every regular file under the root, relative and sorted."""
        found = [
            path.relative_to(self.root).as_posix()
            for path in self.root.rglob("*")
            if path.is_file() and not path.is_symlink()
        ]
        return sorted(found)

    def lock_path(self, target: Path) -> Path:
        """The lock file guarding ``target``: one of LOCK_STRIPES, chosen by its path."""
        # The resolved folder, so two names for one file (an in-root symlink) share a lock.
        identity = str(target.parent.resolve() / target.name)
        digest = hashlib.blake2b(identity.encode(), digest_size=8).digest()
        stripe = int.from_bytes(digest, "big") % LOCK_STRIPES
        return self.lock_dir / f"write-{stripe:03d}.lock"

    @contextlib.contextmanager
    def _locked(self, target: Path) -> Iterator[None]:
        """Hold the in-process and the cross-process lock of the target's stripe."""
        lock_path = self.lock_path(target)
        with _thread_lock(lock_path):
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing the descriptor releases the flock

    def _confined_target(self, relative: PurePosixPath) -> Path:
        target = self.root.joinpath(*relative.parts)
        self._ensure_inside(target.parent, relative)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise UnsafePathError(f"a parent of '{relative}' is a file, not a folder") from None
        # Checked again after mkdir: a folder may have been swapped for a symlink meanwhile.
        self._ensure_inside(target.parent, relative)
        if target.is_symlink():
            raise UnsafePathError("the path is a symlink; refusing to write through it")
        if target.exists() and not target.is_file():
            raise UnsafePathError("the path exists and is not a regular file")
        return target

    def _ensure_inside(self, folder: Path, relative: PurePosixPath) -> None:
        if not folder.resolve().is_relative_to(self.root):
            raise UnsafePathError(f"'{relative}' passes through a symlink that leaves the project")


def _thread_lock(lock_path: Path) -> threading.Lock:
    with _thread_locks_guard:
        return _thread_locks.setdefault(lock_path, threading.Lock())


def _read_regular(target: Path, limit: int | None = None) -> bytes | None:
    """The bytes of a regular file, or None if there is none; never follows a symlink."""
    try:
        # O_NONBLOCK: opening a FIFO planted at the target must not hang the writer.
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UnsafePathError(f"cannot open the existing file: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as stream:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafePathError("the path exists and is not a regular file")
        if limit is not None and os.fstat(fd).st_size > limit:
            raise UnsafePathError(f"the file is over {limit} bytes")
        return stream.read()


def _replace_atomically(target: Path, data: bytes, *, durable: bool) -> None:
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            if durable:
                stream.flush()
                os.fsync(stream.fileno())
        temp = Path(temp_name)
        temp.chmod(0o644)
        temp.replace(target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_folder(target.parent)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable: it lives in the folder's entry, not in the file."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
