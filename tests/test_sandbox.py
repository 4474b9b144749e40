"""Hostile generated code in the sandbox: each run ends, says what happened, harms nothing.

These run the real thing: bubblewrap, resource limits, a pids cgroup where we are root,
and pytest in a subprocess on a copy of the project.
"""

from __future__ import annotations

import hashlib
import os
import socket
import textwrap
import threading
from pathlib import Path

import pytest

from conftest import require_tool
from orchestrate.qa.checks import CheckPlan, run_checks
from orchestrate.qa.isolation import Namespaces, namespaces, pids_hierarchy
from orchestrate.qa.records import CheckReport, SandboxLimits

TIGHT = SandboxLimits(wall_seconds=20, cpu_seconds=5, memory_mib=512, file_mib=4, processes=32)


@pytest.fixture(autouse=True)
def bubblewrap() -> None:
    require_tool("bwrap", "bubblewrap")
    assert namespaces().available, namespaces().problem


def project(root: Path, test_body: str, **files: str) -> Path:
    """A generated project: main.py, and tests/test_main.py holding ``test_body``."""
    root.mkdir()
    (root / "main.py").write_text("def answer():\n    return 42\n")
    (root / "tests").mkdir()
    (root / "tests" / "test_main.py").write_text(textwrap.dedent(test_body))
    for name, text in files.items():
        (root / name).write_text(textwrap.dedent(text))
    return root


def fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def check(root: Path, limits: SandboxLimits = TIGHT) -> CheckReport:
    before = fingerprint(root)
    report = run_checks(root, CheckPlan(limits=limits))
    assert fingerprint(root) == before, "the checks changed the project itself"
    return report


def test_passing_and_failing_tests_are_counted(tmp_path: Path) -> None:
    root = project(
        tmp_path / "p",
        """
        from main import answer

        def test_answer():
            assert answer() == 42

        def test_wrong():
            assert answer() == 41
        """,
        **{"broken.py": "def f(:\n"},
    )

    report = check(root)

    assert report.status == "failed"
    assert (report.passed, report.failed, report.errors) == (1, 1, 0)
    assert report.failures == ["tests.test_main::test_wrong: assert 42 == 41"]
    assert report.compile_errors == ["broken.py:1: invalid syntax"]
    assert report.python_files == 3


def test_an_infinite_loop_is_stopped_by_the_cpu_limit(tmp_path: Path) -> None:
    root = project(tmp_path / "p", "def test_spin():\n    while True:\n        pass\n")

    report = check(root)

    assert report.status == "failed"
    assert "cpu time" in report.limits_hit
    assert report.exit_code is None or report.exit_code != 0


def test_a_sleeping_loop_is_stopped_by_the_wall_clock(tmp_path: Path) -> None:
    root = project(
        tmp_path / "p", "import time\n\ndef test_wait():\n    while True:\n        time.sleep(1)\n"
    )
    limits = TIGHT.model_copy(update={"wall_seconds": 3})

    report = check(root, limits)

    assert report.timed_out
    assert "wall time" in report.limits_hit
    assert report.status == "failed"


def test_a_fork_bomb_hits_the_process_cap(tmp_path: Path) -> None:
    root = project(
        tmp_path / "p",
        """
        import os

        def test_bomb():
            children = 0
            while True:
                pid = os.fork()
                if pid == 0:
                    while True:
                        pass  # each child spins, holding its slot
                children += 1
        """,
    )
    limits = TIGHT.model_copy(update={"wall_seconds": 8})

    report = check(root, limits)

    assert report.status == "failed"
    if "cgroup" in (report.confinement.processes if report.confinement else ""):
        assert "processes" in report.limits_hit
        hierarchy = pids_hierarchy()
        assert hierarchy is not None
        leftovers = list(hierarchy.glob(f"orchestrate-sandbox-{os.getpid()}-*"))
        assert not leftovers, "the run's pids cgroup was not removed"
    assert report.failures and "BlockingIOError" in report.failures[0]


def test_allocating_ten_gigabytes_fails_with_memory_error(tmp_path: Path) -> None:
    root = project(tmp_path / "p", "def test_hog():\n    data = bytearray(10 * 2**30)\n")

    report = check(root)

    assert report.status == "failed"
    assert report.failures == ["tests.test_main::test_hog: MemoryError"]


def test_writes_outside_the_copy_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    # Outside any temporary folder the host is there, read-only; inside, it is hidden.
    beside_the_code = Path(__file__).parent / ".sandbox-escape"
    root = project(
        tmp_path / "p",
        f"""
        from pathlib import Path

        def test_escape():
            Path({str(outside)!r}).write_text("escaped")

        def test_escape_next_to_the_code():
            Path({str(beside_the_code)!r}).write_text("escaped")

        def test_overwrite_the_original():
            Path({str(tmp_path / "p" / "main.py")!r}).write_text("broken")

        def test_write_in_the_copy():
            Path("made-here.txt").write_text("fine")
        """,
    )

    report = check(root)

    assert not outside.exists() and not beside_the_code.exists()
    assert (report.passed, report.failed) == (1, 3)
    refusals = ("Read-only file system", "No such file or directory")
    assert all(any(why in line for why in refusals) for line in report.failures), report.failures


def test_environment_secrets_are_not_visible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-leak-7a1b2c3d4e5f")
    monkeypatch.setenv("ORCHESTRATE_OPENAI_API_KEY", "sk-test-leak-7a1b2c3d4e5f")
    root = project(
        tmp_path / "p",
        """
        import os

        def test_steal():
            print(dict(os.environ))
            assert os.environ.get("OPENAI_API_KEY")
        """,
    )

    report = check(root)

    assert report.failed == 1
    assert "sk-test-leak" not in report.output_tail
    assert report.confinement is not None
    assert {"OPENAI_API_KEY", "ORCHESTRATE_OPENAI_API_KEY"} <= set(
        report.confinement.environment_removed
    )


def test_the_network_is_cut_off(tmp_path: Path) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    server.settimeout(0.2)
    accepted: list[object] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept())
            except TimeoutError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    root = project(
        tmp_path / "p",
        f"""
        import socket

        def test_call_home():
            socket.create_connection(("127.0.0.1", {port}), timeout=3).sendall(b"secrets")
        """,
    )
    try:
        report = check(root)
    finally:
        stop.set()
        thread.join()
        server.close()

    assert accepted == []
    assert report.failed == 1
    assert "ConnectionRefusedError" in report.failures[0]
    assert report.confinement is not None
    assert report.confinement.network.startswith("isolated")


def test_huge_output_keeps_only_its_tail(tmp_path: Path) -> None:
    root = project(
        tmp_path / "p",
        "def test_noise():\n    for n in range(200_000):\n        print('line', n)\n"
        "    assert False, 'the end'\n",
    )

    report = check(root)

    assert len(report.output_tail) <= 8192
    assert "the end" in report.output_tail


def test_a_project_without_tests_says_so(tmp_path: Path) -> None:
    root = tmp_path / "p"
    root.mkdir()
    (root / "main.py").write_text("print('hi')\n")

    assert check(root).status == "no_tests"


def test_a_crew_command_is_judged_by_its_exit_status(tmp_path: Path) -> None:
    root = tmp_path / "p"
    root.mkdir()
    (root / "check.sh").write_text("echo checking; test -f package.json\n")

    failed = run_checks(root, CheckPlan(command="sh check.sh", limits=TIGHT))
    (root / "package.json").write_text("{}")
    passed = run_checks(root, CheckPlan(command="sh check.sh", limits=TIGHT))

    assert (failed.status, failed.exit_code) == ("failed", 1)
    assert passed.status == "passed" and "checking" in passed.output_tail


def test_without_bubblewrap_the_report_says_what_was_not_contained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = Namespaces(None, "bubblewrap (bwrap) is not installed")
    monkeypatch.setattr("orchestrate.qa.sandbox.namespaces", lambda: missing)
    root = project(tmp_path / "p", "def test_ok():\n    pass\n")

    report = check(root)

    assert report.status == "passed"
    assert report.confinement is not None
    assert report.confinement.network.startswith("NOT isolated (bubblewrap (bwrap) is not")
    assert report.confinement.filesystem.startswith("NOT confined")
