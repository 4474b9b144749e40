"""Byte-compile a project's Python files without running them, inside the sandbox.

``python -I -m orchestrate.qa.compile_check`` runs in the copy of the project:
``compile()`` parses each file and builds its code object but executes nothing and
writes no ``.pyc``. Each file that does not compile becomes one JSON line on standard
output, which ``read_compile_errors`` turns back into ``path:line: message``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path


def python_files(project: Path) -> list[Path]:
    """The project's Python files, hidden folders (virtualenvs, caches) left out."""
    if not project.is_dir():
        return []
    return [
        path
        for path in sorted(project.rglob("*.py"))
        if not any(part.startswith(".") for part in path.relative_to(project).parts)
    ]


def compile_errors(project: Path) -> Iterator[dict[str, object]]:
    """One record per file of ``project`` that does not compile."""
    for path in python_files(project):
        shown = path.relative_to(project)
        try:
            compile(path.read_bytes(), str(shown), "exec", dont_inherit=True)
        except (SyntaxError, ValueError) as error:  # ValueError: a null byte in the source
            line = getattr(error, "lineno", None) or 0
            yield {"path": str(shown), "line": line, "message": str(error.args[0])}


def read_compile_errors(output: str) -> list[str]:
    """The ``path:line: message`` of each error line in the checker's output."""
    errors = []
    for line in output.splitlines():
        try:
            error = json.loads(line)
            errors.append(f"{error['path']}:{error['line']}: {error['message']}")
        except (ValueError, KeyError, TypeError):
            continue  # anything else on the output is not ours
    return errors


if __name__ == "__main__":
    for error in compile_errors(Path.cwd()):
        sys.stdout.write(json.dumps(error) + "\n")
