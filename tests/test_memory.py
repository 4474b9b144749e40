"""Tests for orchestrate.memory: the Chroma store, recall into builds, and `orchestrate memory`."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import EXAMPLE_SCRIPT, EXAMPLE_SPEC, wait_for
from orchestrate.build import BuildOptions, BuildRun
from orchestrate.cli.app import app
from orchestrate.crew.config import load_crew
from orchestrate.crew.spec import load_spec
from orchestrate.llm.backend import Backend, Completion, CompletionRequest
from orchestrate.llm.scripted import ScriptedBackend
from orchestrate.memory.embedding import DIMENSIONS, bundled_model_dir, shared_embedder
from orchestrate.memory.recall import format_memories
from orchestrate.memory.store import LongTermMemory, Memory, MemoryRecord
from orchestrate.store.events import read_events

runner = CliRunner()
# Like the example spec (a todo CLI over JSON) but not the same spec.
SIMILAR_SPEC = (
    "A todo list for the command line, written in Python, that keeps its tasks in a JSON "
    "file and lets the user add tasks, list the open ones and mark one as done."
)
DESIGN_MARK = "# Todo CLI design"  # the first line of the scripted architect's answer


def record(run: str, task: str, agent: str, text: str, **extra: str) -> MemoryRecord:
    return MemoryRecord(run, task, agent, agent.title(), extra.pop("title", "Spec"), text, **extra)


class Recording:
    """Passes calls to a backend and keeps the messages each agent was sent."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name, self.identity = inner.name, inner.identity
        self.context_window = inner.context_window
        self.prompts: dict[str, str] = {}
        self._lock = threading.Lock()

    def prepare(self) -> None:
        self.inner.prepare()

    def complete(self, request: CompletionRequest) -> Completion:
        with self._lock:
            self.prompts[request.agent] = "\n".join(m["content"] for m in request.messages)
        return self.inner.complete(request)

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        return self.inner.count_tokens(messages)


def build(
    tmp_path: Path, spec: str, memory_dir: Path | None, name: str, **memory: int
) -> tuple[Recording, BuildRun]:
    backend = Recording(ScriptedBackend.from_file(EXAMPLE_SCRIPT))
    options = BuildOptions(
        model="scripted",
        workers=3,
        max_tokens=64,
        temperature=0.0,
        runs_dir=tmp_path / name,
        memory_dir=memory_dir,
        **memory,
    )
    run = BuildRun.start(load_spec(spec), load_crew(None), backend, options)
    assert run.execute().record.status.value == "succeeded"
    return backend, run


def recalled_events(run: BuildRun) -> list[dict]:
    return [e for e in read_events(run.folder.events_path) if e["type"] == "memory_recalled"]


# The embedding model.


def test_embeddings_match_sentence_transformers() -> None:
    from sentence_transformers import SentenceTransformer

    texts = ["A notes API with FastAPI", "FILE: todo.py\n```python\nprint('hi')\n```\n" * 60]
    reference = SentenceTransformer(str(bundled_model_dir()), device="cpu").encode(texts)
    ours = shared_embedder().embed(texts)

    assert ours.shape == (2, DIMENSIONS)
    cosine = (ours * reference).sum(axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() > 0.9999


# The store.


def test_recall_filters_by_agent_leaves_out_the_run_and_ranks_approved_work_first(
    tmp_path: Path,
) -> None:
    memory = LongTermMemory(tmp_path / "memory")
    memory.remember(
        [
            record("r1", "design", "architect", "A notes API in FastAPI storing notes in SQLite"),
            record("r2", "design", "architect", "A notes service: FastAPI, SQLite, pagination"),
            record("r3", "design", "architect", "A weather dashboard drawn with matplotlib"),
            record("r1", "implement", "fullstack", "FILE: app.py: a FastAPI notes API"),
            record("now", "design", "architect", "A notes API, the current run's own design"),
        ]
    )
    memory.set_verdict("r3", "approve")

    found = memory.recall("design a notes API", agent="architect", limit=3, exclude_run="now")

    assert found[0].run == "r3"  # approved, though the least like the query
    assert {m.run for m in found[1:]} == {"r1", "r2"}
    assert found[0].approved and not found[1].approved
    assert all(m.agent == "architect" and m.run != "now" for m in found)


def test_recall_leaves_out_the_same_spec(tmp_path: Path) -> None:
    memory = LongTermMemory(tmp_path / "memory")
    memory.remember(
        [
            record("r1", "design", "architect", "notes design one", spec_hash="same"),
            record("r2", "design", "architect", "notes design two", spec_hash="other"),
        ]
    )

    found = memory.recall("notes", agent="architect", limit=5, exclude_spec="same")

    assert [m.run for m in found] == ["r2"]


def test_an_empty_memory_recalls_nothing_without_creating_anything(tmp_path: Path) -> None:
    memory = LongTermMemory(tmp_path / "memory")

    assert memory.recall("anything", agent="architect", limit=3) == []
    assert memory.stats().entries == 0
    assert not (tmp_path / "memory").exists()


def test_memories_fit_the_token_budget() -> None:
    found = [
        Memory(f"r{i}/design", f"r{i}", "design", "architect", "A", "Spec", None, "x" * 2000, 0.1)
        for i in range(3)
    ]

    used, section = format_memories(found, token_budget=600)

    assert len(section) <= 600 * 4
    assert [m.run for m in used] == ["r0", "r1"]  # the second one cut short, the third left out
    assert format_memories(found, token_budget=10) == ([], "")


WRITER = """
import sys
import time
from pathlib import Path
from orchestrate.memory.store import LongTermMemory, MemoryRecord

folder, worker, start = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
memory = LongTermMemory(folder)
memory.remember([MemoryRecord("warm", worker, "warm", "W", "S", "warm-up")])
(folder.parent / f"ready-{worker}").touch()
while not start.exists():
    time.sleep(0.005)
for i in range(50):
    text = f"worker {worker} entry {i}: a note about topic {i % 7}"
    memory.remember([MemoryRecord(f"run-{worker}", f"task-{i}", "agent", "A", "S", text)])
print("wrote 50")
"""


def test_four_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    folder, start = tmp_path / "memory", tmp_path / "start"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(folder), str(n), str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    try:
        wait_for(
            lambda: (
                all((tmp_path / f"ready-{n}").exists() for n in range(4))
                or any(w.poll() is not None for w in workers)
            ),
            "four memory writers to load",
        )
        start.touch()  # every writer has loaded Chroma and the model: now all write at once
        results = [w.communicate(timeout=300) for w in workers]
    finally:
        for w in workers:
            w.kill()

    for worker, (stdout, stderr) in zip(workers, results, strict=True):
        assert worker.returncode == 0, stderr
        assert "wrote 50" in stdout
        assert "locked" not in stderr
    memory = LongTermMemory(folder)
    stats = memory.stats()
    assert stats.per_agent["agent"] == 200
    assert memory.runs() >= {f"run-{n}" for n in range(4)}
    for n in range(4):  # each writer's entries are in the vector index, not only in SQLite
        key = f"S\ntask-17\n\nworker {n} entry 17: a note about topic 3"
        assert memory.search(key, agent="agent", limit=1)[0].id == f"run-{n}/task-17"


def test_threads_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    memory = LongTermMemory(tmp_path / "memory")
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        barrier.wait()
        try:
            for i in range(25):
                memory.remember([record(f"run-{worker}", f"t{i}", "agent", f"{worker}/{i}")])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert memory.stats().entries == 100


# Builds: recall before a task, remember after it, the verdict at the end.


def test_a_second_build_of_a_similar_spec_recalls_the_first(tmp_path: Path) -> None:
    memory_dir = tmp_path / "memory"
    first_backend, first = build(tmp_path, str(EXAMPLE_SPEC), memory_dir, "first")

    assert DESIGN_MARK not in first_backend.prompts["architect"]  # nothing to recall yet
    assert recalled_events(first) == []
    stats = LongTermMemory(memory_dir).stats()
    assert stats.entries == 6
    assert stats.per_verdict == {"approve": 6}  # the critic's verdict, set at the run's end

    second_backend, second = build(tmp_path, SIMILAR_SPEC, memory_dir, "second")

    prompt = second_backend.prompts["architect"]
    assert "long-term memory" in prompt
    assert DESIGN_MARK in prompt
    assert f"run {first.run_id}" in prompt
    events = {e["task"]: e for e in recalled_events(second)}
    assert events["design"]["ids"] == [f"{first.run_id}/design"]
    assert events["design"]["runs"] == [first.run_id]
    assert "text" not in events["design"]
    assert LongTermMemory(memory_dir).stats().runs == 2


def test_recalled_memories_stay_within_the_budget(tmp_path: Path) -> None:
    memory_dir = tmp_path / "memory"
    build(tmp_path, str(EXAMPLE_SPEC), memory_dir, "first")

    _, second = build(tmp_path, SIMILAR_SPEC, memory_dir, "second", memory_tokens=40)

    assert all(event["tokens"] <= 40 for event in recalled_events(second))


def test_without_memory_the_context_is_unchanged(tmp_path: Path) -> None:
    memory_dir = tmp_path / "memory"
    build(tmp_path, str(EXAMPLE_SPEC), memory_dir, "first")

    without, run = build(tmp_path, SIMILAR_SPEC, None, "without")
    fresh, _ = build(tmp_path, SIMILAR_SPEC, tmp_path / "empty-memory", "fresh")

    assert without.prompts == fresh.prompts
    assert recalled_events(run) == []
    assert LongTermMemory(memory_dir).stats().runs == 1


# The CLI.


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def cli_build(spec: str, *flags: str) -> dict:
    code, output = cli("build", spec, "--model", f"scripted:{EXAMPLE_SCRIPT}", "--json", *flags)
    assert code == 0, output
    return json.loads(output[output.index("{") :])


def test_memory_commands(isolated: Path) -> None:
    first = cli_build(str(EXAMPLE_SPEC))
    second = cli_build(SIMILAR_SPEC)
    events = list(read_events(Path(second["run_dir"]) / "events.jsonl"))
    recalled = [e for e in events if e["type"] == "memory_recalled"]
    assert {tuple(e["runs"]) for e in recalled} == {(first["run_id"],)}

    code, output = cli("memory", "stats")
    assert code == 0
    assert "12 answers from 2 runs" in output
    assert "agent architect: 2" in output

    code, output = cli(
        "memory", "search", "todo CLI design", "--agent", "architect", "--limit", "1"
    )
    assert code == 0
    assert "/design" in output and "architect" in output
    assert output.count("distance") == 1

    code, output = cli("memory", "forget", "--run", first["run_id"])
    assert code == 0
    assert "forgot 6 answers" in output
    assert "6 answers from 1 runs" in cli("memory", "stats")[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["memory", "forget", "--run", "no-such-run"], "holds nothing from run 'no-such-run'"),
        (["memory", "search", "notes", "--limit", "0"], "--limit must be between 1 and 100"),
        (["memory", "search", "  "], "give a QUERY"),
    ],
)
def test_memory_commands_reject_bad_input_in_one_line(
    isolated: Path, args: list[str], message: str
) -> None:
    code, output = cli(*args)

    assert code == 2
    assert message in output
    assert len(output.strip().splitlines()) == 1


def test_no_memory_flag_neither_recalls_nor_remembers(isolated: Path) -> None:
    cli_build(str(EXAMPLE_SPEC))

    result = cli_build(SIMILAR_SPEC, "--no-memory")

    events = list(read_events(Path(result["run_dir"]) / "events.jsonl"))
    assert not [e for e in events if e["type"] == "memory_recalled"]
    assert "6 answers from 1 runs" in cli("memory", "stats")[1]


def test_memory_setting_off_leaves_memory_alone(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCHESTRATE_MEMORY", "false")

    cli_build(str(EXAMPLE_SPEC))

    assert not (isolated / "home" / "memory").exists()


def test_help_imports_neither_chroma_nor_an_embedding_framework() -> None:
    probe = (
        "import sys\n"
        "sys.argv = ['orchestrate', 'memory', '--help']\n"
        "from orchestrate.cli.app import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = ('chromadb', 'sentence_transformers', 'torch', 'numpy')\n"
        "print('HEAVY', [m for m in heavy if m in sys.modules])\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout

    assert "HEAVY []" in output
    assert "search" in output and "forget" in output
