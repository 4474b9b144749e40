"""The byte-compile pass that runs first in the sandbox, on its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from orchestrate.qa.compile_check import compile_errors, python_files, read_compile_errors


def test_each_broken_file_is_one_error_and_nothing_runs(tmp_path: Path) -> None:
    (tmp_path / "fine.py").write_text("open('ran.txt', 'w').write('it ran')\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "broken.py").write_text("def f(:\n")
    (tmp_path / "nul.py").write_bytes(b"x = 1\x00\n")

    errors = list(compile_errors(tmp_path))

    assert [(e["path"], e["line"]) for e in errors] == [("nul.py", 0), ("pkg/broken.py", 1)]
    assert not (tmp_path / "ran.txt").exists()
    assert not list(tmp_path.rglob("__pycache__"))


def test_hidden_folders_are_left_out(tmp_path: Path) -> None:
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "site.py").write_text("def f(:\n")
    (tmp_path / "main.py").write_text("x = 1\n")

    assert python_files(tmp_path) == [tmp_path / "main.py"]
    assert list(compile_errors(tmp_path)) == []


def test_the_module_reports_json_lines_that_read_back(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("def f(:\n")
    # A project module named json must not shadow the standard library under -I.
    (tmp_path / "json.py").write_text("raise SystemExit('shadowed')\n")

    result = subprocess.run(
        [sys.executable, "-I", "-m", "orchestrate.qa.compile_check"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )

    assert [json.loads(line)["path"] for line in result.stdout.splitlines()] == ["broken.py"]
    output = "noise from the interpreter\n" + result.stdout
    assert read_compile_errors(output) == ["broken.py:1: invalid syntax"]
