"""Turn a task's answer into files in the run's ``outputs/`` folder, through staging.

An answer carries files as FILE blocks; a task with an ``output_file`` also gets its
whole answer there when no block names that file. While a task runs, the file tools
write into its staging area; once it has succeeded that area is merged into
``outputs/`` and the blocks of its answer follow it (confined, locked, atomic, scanned
for secrets, under the same conflict rule). Every write, refusal, conflict, secret and
unreadable block is an event in the run's log.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

from orchestrate.errors import SecretFoundError, WriteRefusedError
from orchestrate.safety.guards import SafetyGuards
from orchestrate.store.events import EventLog, EventType
from orchestrate.workspace.blocks import parse_file_blocks
from orchestrate.workspace.staging import Conflict, MergeResult, StagingAreas
from orchestrate.workspace.writer import Workspace, WrittenFile


class OutputWriter:
    """Stages and merges the files of each finished task into one outputs workspace."""

    def __init__(
        self, outputs: Path, staging: Path, events: EventLog, guards: SafetyGuards
    ) -> None:
        # Staging left by a process that died belongs to attempts that never finished.
        shutil.rmtree(staging, ignore_errors=True)
        self.workspace = Workspace(outputs, lock_dir=guards.lock_dir)
        self.staging = StagingAreas(staging, self.workspace, scanner=guards.scanner)
        self._lock_dir = guards.lock_dir
        self._events = events
        self._refused: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def area(self, task: str) -> Workspace:
        """The task's staging area, where its file tools write while it runs."""
        return self.staging.area(task)

    def discard(self, task: str) -> None:
        """Forget what a failed attempt staged; none of it reaches outputs."""
        self.staging.discard(task)

    def write_answer(self, task: str, answer: str, output_file: str | None) -> list[str]:
        """Stage the files an answer carries, merge the task's area; return merged paths."""
        # A task that answers in files gets its bare code blocks named; a document's
        # code samples stay in the document.
        parsed = parse_file_blocks(answer, repair=not output_file)
        blocks = [(block.path, block.content) for block in parsed.blocks]
        if output_file and answer.strip() and output_file not in {path for path, _ in blocks}:
            blocks.append((output_file, answer.strip() + "\n"))
        for problem in parsed.problems:
            self._events.emit(
                EventType.BLOCK_PROBLEM,
                task=task,
                line=problem.line,
                path=problem.path,
                reason=problem.reason,
            )
        written = self._record_merge(task, self.staging.merge(task))
        for path, content in blocks:
            published = self._publish(task, path, content)
            if published is not None and published not in written:
                written.append(published)
        return written

    def take_refused(self, task: str) -> list[str]:
        """The paths refused for ``task`` since the last call."""
        with self._lock:
            return self._refused.pop(task, [])

    def files(self) -> list[str]:
        return self.workspace.files()

    def copy_to(self, out_dir: Path) -> Path:
        """Copy the generated files to --out through the same confined writer."""
        destination = Workspace(out_dir, lock_dir=self._lock_dir)
        for relative in self.workspace.files():
            source = self.workspace.root / relative
            try:
                destination.write(relative, source.read_text(encoding="utf-8"))
            except (WriteRefusedError, UnicodeDecodeError) as exc:
                self._events.emit(
                    EventType.FILE_REFUSED, task=None, path=relative, reason=f"--out: {exc}"
                )
        return destination.root

    def _publish(self, task: str, path: str, content: str) -> str | None:
        try:
            written, conflict = self.staging.publish(task, path, content)
        except WriteRefusedError as exc:
            if isinstance(exc, SecretFoundError):
                self._secret_event(task, path, "refused", exc.findings)
            self._refuse(task, path, str(exc))
            return None
        if written.findings:
            self._secret_event(task, written.path, "redacted", written.findings)
        if conflict is not None:
            self._conflict_event(task, conflict)
        self._written_event(task, written)
        return written.path

    def _record_merge(self, task: str, merged: MergeResult) -> list[str]:
        for path, reason in merged.refused:
            self._refuse(task, path, reason)
        for conflict in merged.conflicts:
            self._conflict_event(task, conflict)
        for written in merged.written:
            self._written_event(task, written)
        return [written.path for written in merged.written]

    def _conflict_event(self, task: str, conflict: Conflict) -> None:
        self._events.emit(
            EventType.FILE_CONFLICT,
            task=task,
            path=conflict.path,
            winner=conflict.winner,
            loser=conflict.loser,
        )

    def _written_event(self, task: str, written: WrittenFile) -> None:
        self._events.emit(
            EventType.FILE_WRITTEN,
            task=task,
            path=written.path,
            bytes=written.size_bytes,
            replaced=written.replaced,
        )

    def _refuse(self, task: str, path: str, reason: str) -> None:
        self._events.emit(EventType.FILE_REFUSED, task=task, path=path, reason=reason)
        with self._lock:
            self._refused.setdefault(task, []).append(path)

    def _secret_event(self, task: str, path: str, action: str, findings: tuple[Any, ...]) -> None:
        self._events.emit(
            EventType.SECRET_FOUND,
            task=task,
            path=path,
            action=action,
            findings=[finding.as_event() for finding in findings],
        )
