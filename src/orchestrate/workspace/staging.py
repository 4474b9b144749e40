"""Per-task staging areas, merged into ``outputs/`` only when their task succeeds.

Each task writes into ``staging/<task>/`` of its run through a confined ``Workspace``
(the same checks, locks, atomic writes and secret scan as every other write). When the
task succeeds its files are merged into the outputs workspace; when it fails or is
cancelled the area is discarded, so a failed task's partial files never reach
``outputs/``.

The conflict rule: when two tasks write the same path, the task that finishes later wins.
Its file replaces the earlier one and a ``Conflict`` names both tasks, which the run
records as a ``file_conflict`` event. A later task usually read the earlier one's output
(it depends on it), so its version is the more informed; identical content is no conflict.
Merges run one at a time, so a task's files land together and the order is well defined.

Files that a task hands over only once it has succeeded (the FILE blocks of its answer)
skip the round trip through its area: ``publish`` gives them the same checks, scan and
conflict rule on the way straight into outputs.
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrate.errors import UnsafePathError
from orchestrate.workspace.writer import Workspace, WrittenFile, check_relative_path

if TYPE_CHECKING:
    from orchestrate.safety.secrets import SecretFinding, SecretScanner


@dataclass(frozen=True)
class Conflict:
    """Two tasks wrote the same path; ``winner`` finished later and its file was kept."""

    path: str
    winner: str
    loser: str


@dataclass
class MergeResult:
    written: list[WrittenFile] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


class StagingAreas:
    """The staging areas of one run and the outputs workspace they merge into."""

    def __init__(
        self, staging_root: Path, outputs: Workspace, *, scanner: SecretScanner | None = None
    ) -> None:
        self.root = staging_root
        self.outputs = outputs
        self.scanner = scanner  # staged writes are scanned; merging them need not scan again
        self._areas: dict[str, Workspace] = {}
        self._owners: dict[str, str] = {}  # path in outputs -> task whose file is there
        self._lock = threading.Lock()
        self._merge_lock = threading.Lock()

    def area(self, task: str) -> Workspace:
        """The task's own workspace, created on first use, sharing the outputs' locks."""
        name = check_relative_path(task)
        if len(name.parts) != 1:
            raise UnsafePathError(f"task name '{task}' cannot name a staging folder")
        with self._lock:
            if task not in self._areas:
                self._areas[task] = Workspace(
                    self.root / task,
                    lock_dir=self.outputs.lock_dir,
                    scanner=self.scanner,
                    max_file_bytes=self.outputs.max_file_bytes,
                    durable=False,
                )
            return self._areas[task]

    def merge(self, task: str) -> MergeResult:
        """Move a finished task's files into outputs, then remove its staging area."""
        result = MergeResult()
        with self._lock:
            staged = self._areas.pop(task, None)
        if staged is None:
            return result
        with self._merge_lock:
            for relative in staged.files():
                self._merge_file(task, staged, relative, result)
        shutil.rmtree(staged.root, ignore_errors=True)
        return result

    def publish(self, task: str, path: str, content: str) -> tuple[WrittenFile, Conflict | None]:
        """Write one file of a succeeded task straight into outputs, scanned first.

        Raises UnsafePathError or SecretFoundError when the file is refused.
        """
        findings: tuple[SecretFinding, ...] = ()
        if self.scanner is not None:
            content, findings = self.scanner.check(check_relative_path(path).as_posix(), content)
        with self._merge_lock:
            written = self.outputs.write(path, content)
            conflict = self._claim(task, written)
        return replace(written, findings=findings), conflict

    def discard(self, task: str) -> None:
        """Drop a failed or cancelled task's files; nothing of them reaches outputs."""
        with self._lock:
            staged = self._areas.pop(task, None)
        if staged is not None:
            shutil.rmtree(staged.root, ignore_errors=True)

    def owner(self, path: str) -> str | None:
        """The task whose version of ``path`` is in outputs, if any task merged one."""
        with self._lock:
            return self._owners.get(path)

    def _merge_file(self, task: str, staged: Workspace, relative: str, result: MergeResult) -> None:
        content = (staged.root / relative).read_bytes().decode("utf-8", errors="replace")
        try:
            written = self.outputs.write(relative, content)
        except UnsafePathError as exc:
            result.refused.append((relative, str(exc)))
            return
        conflict = self._claim(task, written)
        if conflict is not None:
            result.conflicts.append(conflict)
        result.written.append(written)

    def _claim(self, task: str, written: WrittenFile) -> Conflict | None:
        """Record ``task`` as the owner of a path it wrote; a conflict if another had it."""
        with self._lock:
            previous = self._owners.get(written.path)
            self._owners[written.path] = task
        if previous is not None and previous != task and written.changed:
            return Conflict(written.path, winner=task, loser=previous)
        return None
