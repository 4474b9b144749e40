"""What this machine lets a sandbox shut out, found out once per process.

Two mechanisms, each used where the machine allows it and reported where it does not:

- bubblewrap (``bwrap``) puts the command in new network, PID and IPC namespaces, with
  the host's file system mounted read-only and only the project's copy writable. With
  no network namespace the command could reach any host; with no mount namespace it
  could write wherever the user can.
- a pids cgroup caps how many processes the command's whole tree may hold. The kernel
  ignores ``RLIMIT_NPROC`` for root, so when we run as root (containers, CI) the cgroup
  is what stops a fork bomb; for other users ``RLIMIT_NPROC`` does it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

_PROBE_SECONDS = 10.0
_REMOVAL_TRIES = 40  # 2 s at most

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Namespaces:
    """Whether bubblewrap works here, and why not when it does not."""

    bwrap: str | None  # the bwrap executable, None when unusable
    problem: str | None = None

    @property
    def available(self) -> bool:
        return self.bwrap is not None


@functools.cache
def namespaces() -> Namespaces:
    """Probe bubblewrap once: present, and allowed to create the namespaces we ask for."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return Namespaces(None, "bubblewrap (bwrap) is not installed")
    probe = [bwrap, *_namespace_flags(), "--ro-bind", "/", "/", "--", "true"]
    try:
        result = subprocess.run(probe, capture_output=True, text=True, timeout=_PROBE_SECONDS)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Namespaces(None, f"bwrap could not run: {exc}")
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1:] or [f"exit {result.returncode}"]
        return Namespaces(None, f"bwrap is not allowed here: {reason[0]}")
    return Namespaces(bwrap)


def _namespace_flags() -> list[str]:
    return ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--die-with-parent"]


def bwrap_prefix(bwrap: str, project: Path, scratch: Path) -> list[str]:
    """bwrap's arguments: the host read-only, ``project`` and ``scratch`` writable.

    Temporary folders and the home folder are replaced by empty ones, so the command
    neither sees other programs' files there nor leaves any behind. The interpreter's
    own folders are mounted back read-only in case they lived under one of them.
    """
    flags = [bwrap, *_namespace_flags(), "--new-session", "--ro-bind", "/", "/"]
    flags += ["--dev", "/dev", "--proc", "/proc"]
    for hidden in _private_folders():
        flags += ["--tmpfs", str(hidden)]
    for needed in _interpreter_folders():
        flags += ["--ro-bind", str(needed), str(needed)]
    for writable in (project, scratch):
        flags += ["--bind", str(writable), str(writable)]
    return [*flags, "--chdir", str(project), "--"]


def _private_folders() -> list[Path]:
    folders = [Path("/tmp"), Path("/var/tmp"), Path("/dev/shm")]
    home = Path.home()
    if home != Path("/") and home.is_dir():
        folders.append(home)
    return [folder for folder in folders if folder.is_dir()]


def _interpreter_folders() -> list[Path]:
    """Where the interpreter and its packages live, when a hidden folder holds them."""
    hidden = _private_folders()
    needed = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).resolve().parent}
    needed |= {Path(entry) for entry in sys.path if entry and Path(entry).is_dir()}
    return sorted(
        path
        for path in needed
        if any(path.is_relative_to(folder) for folder in hidden) and path.is_dir()
    )


@dataclass(frozen=True)
class ProcessCap:
    """How the number of processes is capped: a cgroup to join, or an rlimit."""

    limit: int
    cgroup: Path | None  # a pids cgroup made for this one run
    rlimit: int | None  # RLIMIT_NPROC to set, counting the user's other processes
    how: str

    def hit(self) -> bool:
        """True when the cap refused a fork (known only for a cgroup)."""
        if self.cgroup is None:
            return False
        try:
            events = (self.cgroup / "pids.events").read_text()
        except OSError:
            return False
        return any(line.split()[-1] != "0" for line in events.splitlines() if line.strip())

    def kill_all(self) -> None:
        """SIGKILL whatever is left in the cgroup, even processes that escaped the group."""
        if self.cgroup is None:
            return
        try:
            pids = (self.cgroup / "cgroup.procs").read_text().split()
        except OSError:
            return
        for pid in pids:
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                continue


@contextmanager
def process_cap(limit: int) -> Iterator[ProcessCap]:
    """A cap of ``limit`` processes for one sandboxed run, removed afterwards."""
    cgroup = _make_pids_cgroup(limit)
    if cgroup is not None:
        try:
            yield ProcessCap(limit, cgroup, None, f"at most {limit} (a pids cgroup)")
        finally:
            _remove_cgroup(cgroup)
        return
    if os.geteuid() == 0:
        how = (
            "NOT capped: running as root, for whom RLIMIT_NPROC does not apply, "
            "and no pids cgroup is writable"
        )
        yield ProcessCap(limit, None, None, how)
        return
    # RLIMIT_NPROC counts every process of the user, so leave room for the ones running.
    own = _processes_of_this_user()
    yield ProcessCap(limit, None, own + limit, f"at most {limit} more (RLIMIT_NPROC)")


def _processes_of_this_user() -> int:
    uid = os.getuid()
    count = 0
    for process in psutil.process_iter(["uids"]):
        uids = process.info.get("uids")
        if uids is not None and uids.real == uid:
            count += 1
    return count


def pids_hierarchy() -> Path | None:
    """The pids cgroup folder this process belongs to, when it is writable."""
    mount = _pids_mount()
    if mount is None:
        return None
    own = _own_cgroup_path("pids")
    folder = mount / own.lstrip("/") if own else mount
    return folder if os.access(folder, os.W_OK) else None


def _pids_mount() -> Path | None:
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        before, _, after = line.partition(" - ")
        fields, extra = before.split(), after.split()
        if len(extra) >= 3 and extra[0] == "cgroup" and "pids" in extra[2].split(","):
            return Path(fields[4])
    return None


def _own_cgroup_path(controller: str) -> str | None:
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    return None


_cgroup_serial = iter(range(1, 1 << 62))
_CGROUP_PREFIX = "orchestrate-sandbox-"


def _make_pids_cgroup(limit: int) -> Path | None:
    parent = pids_hierarchy()
    if parent is None:
        return None
    _remove_abandoned(parent)
    cgroup = parent / f"{_CGROUP_PREFIX}{os.getpid()}-{next(_cgroup_serial)}"
    try:
        cgroup.mkdir()
        (cgroup / "pids.max").write_text(str(limit))
    except OSError:
        _remove_cgroup(cgroup)
        return None
    return cgroup


def _remove_abandoned(parent: Path) -> None:
    """Remove the empty cgroups of sandboxes whose orchestrate process died (SIGKILL)."""
    for cgroup in parent.glob(f"{_CGROUP_PREFIX}*"):
        owner = cgroup.name.removeprefix(_CGROUP_PREFIX).split("-")[0]
        if owner.isdigit() and not psutil.pid_exists(int(owner)):
            with contextlib.suppress(OSError):  # not empty: it stays until it is
                cgroup.rmdir()


def _remove_cgroup(cgroup: Path) -> None:
    """Remove the cgroup once the processes just killed in it are gone (a moment)."""
    for _ in range(_REMOVAL_TRIES):
        try:
            cgroup.rmdir()  # a cgroup folder is removed as a whole, its files with it
            return
        except FileNotFoundError:
            return
        except OSError:  # busy: a killed process not yet reaped
            time.sleep(0.05)
    logger.warning("could not remove the sandbox's cgroup %s: processes remain in it", cgroup)
