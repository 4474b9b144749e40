"""Run generated code contained: a throwaway copy, hard limits, no secrets, no network.

``Sandbox`` copies a project into a temporary folder and runs commands there through
``orchestrate.qa.confine`` (resource limits, process cap) and, where the machine allows
it, bubblewrap (read-only host, private network, PID namespace). The environment is
built from nothing, so no key or token of ours reaches the code. A run that outlives
its wall-clock limit is killed with everything it started. Every result says which of
these protections held, so a report never claims more containment than there was.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from orchestrate.errors import TaskCancelledError
from orchestrate.qa.isolation import ProcessCap, bwrap_prefix, namespaces, process_cap
from orchestrate.qa.records import Confinement, SandboxLimits

_TAIL_BYTES = 8192
_CANCEL_POLL_SECONDS = 0.1
# Names of environment variables that usually hold credentials; listed (never their
# values) in the report, to show what the code could not read.
_SECRET_NAME = re.compile(
    r"(^|_)(API|KEY|TOKEN|SECRET|PASSWORD|PASSWD|PASS|CREDENTIALS?|AUTH|COOKIE|DSN|PAT)(_|$)",
    re.IGNORECASE,
)
_SIGNAL_LIMITS = {
    signal.SIGXCPU: "cpu time",
    signal.SIGXFSZ: "file size",
}


@dataclass(frozen=True)
class SandboxResult:
    """How one command ended, its output's tail, and what contained it."""

    exit_code: int | None  # None when it was killed
    timed_out: bool
    limits_hit: list[str]  # the limits it ran into, as far as we can tell
    output_tail: str
    seconds: float
    confinement: Confinement


class Sandbox:
    """A temporary copy of a project to run commands in; removed on ``close``."""

    def __init__(self, project: Path, limits: SandboxLimits) -> None:
        self.limits = limits
        self._root = Path(tempfile.mkdtemp(prefix="orchestrate-sandbox-"))
        self.project = self._root / "project"
        self.scratch = self._root / "scratch"  # HOME and TMPDIR of the command
        if project.is_dir():
            shutil.copytree(project, self.project, symlinks=True)
        else:  # a run that wrote no files has no outputs folder
            self.project.mkdir()
        self.scratch.mkdir()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        shutil.rmtree(self._root, ignore_errors=True)

    def run(self, command: list[str], cancel: threading.Event | None = None) -> SandboxResult:
        """Run ``command`` in the copy under every protection this machine allows.

        Setting ``cancel`` kills the command and raises ``TaskCancelledError``.
        """
        isolation = namespaces()
        with process_cap(self.limits.processes) as cap:
            argv = self._confined(command, cap, isolation.bwrap)
            environment, removed = self._environment()
            started = time.monotonic()
            process = subprocess.Popen(
                argv,
                cwd=self.project,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as one
            )
            tail = _OutputTail(process)
            ending = _wait(process, self.limits.wall_seconds, cancel)
            timed_out = ending == "timed out"
            if ending is not None:
                _kill_tree(process)
            cap.kill_all()
            _kill_group(process)  # background processes it left behind
            tail.finish()
            seconds = time.monotonic() - started
            confinement = Confinement(
                network=_network_note(isolation.problem),
                filesystem=_filesystem_note(isolation.problem),
                processes=cap.how,
                environment_removed=removed,
                limits=self.limits,
            )
            limits_hit = _limits_hit(process.returncode, timed_out, cap)
        if ending == "cancelled":
            raise TaskCancelledError("cancelled while the checks ran")
        return SandboxResult(
            exit_code=None if process.returncode < 0 else process.returncode,
            timed_out=timed_out,
            limits_hit=limits_hit,
            # Paths in tracebacks name the copy; say where it came from instead.
            output_tail=tail.text().replace(str(self.project), "."),
            seconds=round(seconds, 3),
            confinement=confinement,
        )

    def _confined(self, command: list[str], cap: ProcessCap, bwrap: str | None) -> list[str]:
        limits = self.limits
        # -I: the shim imports only from our installation, never from the project copy
        # (a generated `orchestrate/` package must not stand in for it).
        shim = [sys.executable, "-I", "-m", "orchestrate.qa.confine"]
        shim += ["--cpu-seconds", str(limits.cpu_seconds)]
        shim += ["--memory-bytes", str(limits.memory_mib * 1024 * 1024)]
        shim += ["--file-bytes", str(limits.file_mib * 1024 * 1024)]
        if cap.rlimit is not None:
            shim += ["--processes", str(cap.rlimit)]
        if cap.cgroup is not None:
            shim += ["--cgroup", str(cap.cgroup)]
        shim.append("--")
        if bwrap is not None:
            shim += bwrap_prefix(bwrap, self.project, self.scratch)
        return [*shim, *command]

    def _environment(self) -> tuple[dict[str, str], list[str]]:
        """A clean environment, and the names of the secret-looking ones left out."""
        interpreter_bin = str(Path(sys.executable).parent)
        environment = {
            "PATH": os.pathsep.join([interpreter_bin, "/usr/local/bin", "/usr/bin", "/bin"]),
            "HOME": str(self.scratch),
            "TMPDIR": str(self.scratch),
            "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0",
        }
        removed = sorted(name for name in os.environ if _SECRET_NAME.search(name))
        return environment, removed


class _OutputTail:
    """Reads a process's output as it comes, keeping only the last few kilobytes."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        assert process.stdout is not None
        self._stream: Any = process.stdout  # a BufferedReader: read1 returns what is there
        self._reader = threading.Thread(target=self._read, name="sandbox-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while chunk := self._stream.read1(4096):
            self._chunks.append(chunk)
            self._size += len(chunk)
            while self._size - len(self._chunks[0]) >= _TAIL_BYTES:
                self._size -= len(self._chunks.popleft())

    def finish(self) -> None:
        # Every writer is dead by now, so the pipe ends; the timeout guards a grandchild
        # that slipped out of the process group and the cgroup.
        self._reader.join(timeout=5.0)
        self._stream.close()

    def text(self) -> str:
        data = b"".join(self._chunks)[-_TAIL_BYTES:]
        return data.decode("utf-8", errors="replace")


def _wait(
    process: subprocess.Popen[bytes], seconds: float, cancel: threading.Event | None
) -> str | None:
    """Wait for the process to end: None, or "timed out" or "cancelled" when it did not."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            process.wait(timeout=min(remaining, _CANCEL_POLL_SECONDS))
        except subprocess.TimeoutExpired:
            if cancel is not None and cancel.is_set():
                return "cancelled"
            continue
        return None
    return "timed out"


def _kill_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process and every descendant still found, then reap it."""
    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    _kill_group(process)
    for child in descendants:
        try:
            child.kill()
        except psutil.Error:
            continue
    process.wait()


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _limits_hit(returncode: int, timed_out: bool, cap: ProcessCap) -> list[str]:
    hit = []
    if cap.hit():
        hit.append("processes")
    # bwrap reports the command's death by a signal as exit 128 + the signal.
    signal_number = -returncode if returncode < 0 else returncode - 128
    if signal_number in _SIGNAL_LIMITS:
        hit.append(_SIGNAL_LIMITS[signal.Signals(signal_number)])
    if timed_out:
        hit.append("wall time")
    return hit


def _network_note(problem: str | None) -> str:
    if problem is None:
        return "isolated: a new network namespace with no interfaces but loopback"
    return f"NOT isolated ({problem}); install bubblewrap to cut the network off"


def _filesystem_note(problem: str | None) -> str:
    if problem is None:
        return "host read-only; only the project copy and a scratch folder writable"
    return f"NOT confined ({problem}); the code could write wherever this user can"
