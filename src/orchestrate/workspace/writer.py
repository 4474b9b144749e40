"""Write generated files under one root, refusing any path that could leave it.

A path from a model is untrusted input. It is refused when it is absolute, climbs with
``..``, holds NUL or control characters, uses backslashes, names a ``.git`` folder, is
too long, or would pass through a symlink (or onto a non-regular file) that points out
of the root. Accepted content goes to a temporary file in the target folder and is
renamed over the target, so a reader never sees a half-written file.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

MAX_FILE_BYTES = 1_000_000
MAX_PATH_CHARS = 1024
MAX_NAME_BYTES = 255
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")


class UnsafePathError(ValueError):
    """A generated path was refused; the message says why."""


@dataclass(frozen=True)
class WrittenFile:
    path: str  # relative to the workspace root, with forward slashes
    size_bytes: int
    replaced: bool  # an earlier file at the same path was overwritten


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

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()
        self._lock = threading.Lock()

    def write(self, raw_path: str, content: str) -> WrittenFile:
        """Write one file atomically; raise UnsafePathError if it is refused."""
        relative = check_relative_path(raw_path)
        data = content.encode("utf-8")
        if len(data) > MAX_FILE_BYTES:
            raise UnsafePathError(f"the content is {len(data)} bytes (limit {MAX_FILE_BYTES})")
        with self._lock:
            target = self._confined_target(relative)
            replaced = target.exists()
            _replace_atomically(target, data)
        return WrittenFile(relative.as_posix(), len(data), replaced)

    def files(self) -> list[str]:
        """Every regular file under the root, relative and sorted."""
        found = [
            path.relative_to(self.root).as_posix()
            for path in self.root.rglob("*")
            if path.is_file() and not path.is_symlink()
        ]
        return sorted(found)

    def _confined_target(self, relative: PurePosixPath) -> Path:
        target = self.root.joinpath(*relative.parts)
        self._ensure_inside(target.parent, relative)
        target.parent.mkdir(parents=True, exist_ok=True)
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


def _replace_atomically(target: Path, data: bytes) -> None:
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        Path(temp_name).chmod(0o644)
        Path(temp_name).replace(target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
