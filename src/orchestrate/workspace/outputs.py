"""Turn a task's answer into files in the run's ``outputs/`` folder.

An answer carries files as FILE blocks; a task with an ``output_file`` also gets its
whole answer there when no block names that file. Every path goes through the confined
writer, and every write, refusal and unreadable block is an event in the run's log.
"""

from __future__ import annotations

import threading
from pathlib import Path

from orchestrate.store.events import EventLog, EventType
from orchestrate.workspace.blocks import parse_file_blocks
from orchestrate.workspace.writer import UnsafePathError, Workspace


class OutputWriter:
    """Writes the files of each finished task into one workspace."""

    def __init__(self, root: Path, events: EventLog) -> None:
        self.workspace = Workspace(root)
        self._events = events
        self._refused: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def write_answer(self, task: str, answer: str, output_file: str | None) -> list[str]:
        """Write the files an answer carries; return their paths."""
        parsed = parse_file_blocks(answer)
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
        written: list[str] = []
        for path, content in blocks:
            try:
                result = self.workspace.write(path, content)
            except UnsafePathError as exc:
                self._events.emit(EventType.FILE_REFUSED, task=task, path=path, reason=str(exc))
                with self._lock:
                    self._refused.setdefault(task, []).append(path)
                continue
            self._events.emit(
                EventType.FILE_WRITTEN,
                task=task,
                path=result.path,
                bytes=result.size_bytes,
                replaced=result.replaced,
            )
            written.append(result.path)
        return written

    def take_refused(self, task: str) -> list[str]:
        """The paths refused for ``task`` since the last call."""
        with self._lock:
            return self._refused.pop(task, [])

    def files(self) -> list[str]:
        return self.workspace.files()

    def copy_to(self, out_dir: Path) -> Path:
        """Copy the generated files to --out through the same confined writer."""
        destination = Workspace(out_dir)
        for relative in self.workspace.files():
            source = self.workspace.root / relative
            try:
                destination.write(relative, source.read_text(encoding="utf-8"))
            except (UnsafePathError, UnicodeDecodeError) as exc:
                self._events.emit(
                    EventType.FILE_REFUSED, task=None, path=relative, reason=f"--out: {exc}"
                )
        return destination.root
