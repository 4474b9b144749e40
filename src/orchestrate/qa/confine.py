"""The first process inside a sandbox: set its limits, then become the command.

Run as ``python -m orchestrate.qa.confine [limits] -- COMMAND...``. Limits are set here,
in a process of their own, rather than in ``subprocess``'s ``preexec_fn``, which is not
safe to use from a program with threads (ours has a pool of them). Everything the
command starts inherits the limits, and the process cap (a pids cgroup, joined here)
holds for the whole tree.

Only the standard library is imported: this runs once per check and must start fast.
"""

from __future__ import annotations

import argparse
import os
import resource
from pathlib import Path

_LIMITS = {
    "cpu_seconds": resource.RLIMIT_CPU,
    "memory_bytes": resource.RLIMIT_AS,
    "file_bytes": resource.RLIMIT_FSIZE,
    "processes": resource.RLIMIT_NPROC,
}


# At the soft CPU limit the kernel sends SIGXCPU, which says why the process died; at the
# hard limit it sends SIGKILL, which does not. The gap lets SIGXCPU come first.
_CPU_GRACE = 2


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m orchestrate.qa.confine")
    for name in _LIMITS:
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None)
    parser.add_argument("--cgroup", type=Path, default=None, help="a pids cgroup to join")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    options = parser.parse_args(argv)
    command = options.command[1:] if options.command[:1] == ["--"] else options.command
    if not command:
        parser.error("give the command to run after --")
    if options.cgroup is not None:
        (options.cgroup / "cgroup.procs").write_text(str(os.getpid()))
    for name, limit in _LIMITS.items():
        value = getattr(options, name)
        if value is not None:
            resource.setrlimit(
                limit, (value, value + _CPU_GRACE if name == "cpu_seconds" else value)
            )
    # Core dumps of a crashing test would be written into the copy, at any size.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
