"""Locked atomic writes under contention: processes and threads writing 20 shared paths.

8 processes x 500 writes, then 8 threads of one process x 500 writes, each write a whole
file whose every line names its writer. Afterwards every file must equal one complete
content that was written: no torn or mixed file, no lock error. The baseline, in the same
run, is the same workload with plain ``Path.write_text`` (no lock, no temp file, no
fsync), which shows both the price of the guard and what it prevents.

Usage: python bench/safety_writes.py [--workers 8] [--writes 500] [--paths 20]
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from orchestrate.workspace.writer import Workspace

LINES = 200  # ~3 KiB per file: big enough that an unguarded write tears


def content_for(writer: str, number: int) -> str:
    return "".join(f"{writer}:{number}:{line:04d}\n" for line in range(LINES))


def check_files(root: Path, paths: int) -> tuple[int, int]:
    """(whole files, torn or mixed files) among the shared paths."""
    whole = torn = 0
    for index in range(paths):
        text = (root / f"shared/{index}.txt").read_text(encoding="utf-8")
        writer, number, _ = text.split(":", 2)
        if text == content_for(writer, int(number)):
            whole += 1
        else:
            torn += 1
    return whole, torn


def guarded_writer(root: Path, locks: Path) -> Callable[[str, str], None]:
    workspace = Workspace(root, lock_dir=locks)

    def write(path: str, text: str) -> None:
        workspace.write(path, text)

    return write


def plain_writer(root: Path, locks: Path) -> Callable[[str, str], None]:
    def write(path: str, text: str) -> None:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")

    return write


WRITERS = {"guarded": guarded_writer, "plain": plain_writer}


def work(kind: str, root: Path, locks: Path, name: str, writes: int, paths: int, start) -> int:
    """Do the writes; return how many raised (a lock error would show here)."""
    write = WRITERS[kind](root, locks)
    start.wait()
    errors = 0
    for number in range(writes):
        try:
            write(f"shared/{number % paths}.txt", content_for(name, number))
        except OSError:
            errors += 1
    return errors


def _process_main(queue, *args) -> None:  # type: ignore[no-untyped-def]
    queue.put(work(*args))


def in_processes(kind: str, folder: Path, args: argparse.Namespace) -> tuple[float, int]:
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(args.workers + 1), context.Queue()
    processes = [
        context.Process(
            target=_process_main,
            args=(
                results,
                kind,
                folder,
                folder.parent / "locks",
                f"p{i}",
                args.writes,
                args.paths,
                start,
            ),
        )
        for i in range(args.workers)
    ]
    for process in processes:
        process.start()
    start.wait()  # every process has imported everything: time the writes alone
    started = time.perf_counter()
    errors = sum(results.get() for _ in processes)
    elapsed = time.perf_counter() - started
    for process in processes:
        process.join()
    return elapsed, errors


def in_threads(kind: str, folder: Path, args: argparse.Namespace) -> tuple[float, int]:
    start = threading.Barrier(args.workers + 1)
    errors: list[int] = []
    threads = [
        threading.Thread(
            target=lambda i=i: errors.append(
                work(kind, folder, folder.parent / "locks", f"t{i}", args.writes, args.paths, start)
            )
        )
        for i in range(args.workers)
    ]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, sum(errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--writes", type=int, default=500)
    parser.add_argument("--paths", type=int, default=20)
    args = parser.parse_args()
    total = args.workers * args.writes
    print(
        f"{args.workers} writers x {args.writes} writes to {args.paths} shared paths "
        f"({LINES} lines each)"
    )
    with tempfile.TemporaryDirectory(prefix="safety-writes-", dir=Path.cwd()) as base:
        verdicts = []
        for mode, run in (("processes", in_processes), ("threads", in_threads)):
            seconds = {}
            for kind in ("plain", "guarded"):
                folder = Path(base) / f"{mode}-{kind}"
                elapsed, errors = run(kind, folder, args)
                whole, torn = check_files(folder, args.paths)
                seconds[kind] = elapsed
                print(
                    f"  {mode:9} {kind:7} {elapsed:6.2f} s  {total / elapsed:7.0f} writes/s  "
                    f"whole {whole}/{args.paths}  torn {torn}  errors {errors}"
                )
                if kind == "guarded":
                    verdicts.append(torn == 0 and errors == 0 and whole == args.paths)
            print(f"  {mode:9} guarded / plain time: {seconds['guarded'] / seconds['plain']:.1f}x")
    print(f"acceptance (every file whole, no lock error): {'met' if all(verdicts) else 'MISSED'}")


if __name__ == "__main__":
    main()
