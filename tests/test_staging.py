"""Tests for orchestrate.workspace.staging, alone and inside a scripted build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import EXAMPLE_SCRIPT, EXAMPLE_SPEC
from orchestrate.cli.app import app
from orchestrate.errors import BackendError, UnsafePathError
from orchestrate.workspace.staging import Conflict, StagingAreas
from orchestrate.workspace.writer import Workspace

AWS_KEY = "AKIA" + "IOSFODNN7EXAMPLE"


@pytest.fixture
def areas(tmp_path):
    outputs = Workspace(tmp_path / "outputs", lock_dir=tmp_path / "locks")
    return StagingAreas(tmp_path / "staging", outputs)


def test_staged_files_reach_outputs_only_on_merge(areas):
    areas.area("implement").write("src/app.py", "print('hi')\n")
    assert areas.outputs.files() == []

    merged = areas.merge("implement")

    assert [written.path for written in merged.written] == ["src/app.py"]
    assert merged.conflicts == []
    assert areas.outputs.read("src/app.py") == "print('hi')\n"
    assert not (areas.root / "implement").exists()
    assert areas.owner("src/app.py") == "implement"


def test_a_discarded_task_leaves_nothing_in_outputs(areas):
    areas.area("deploy").write("Dockerfile", "FROM python\n")
    areas.discard("deploy")
    assert areas.outputs.files() == []
    assert not (areas.root / "deploy").exists()
    assert areas.merge("deploy").written == []  # nothing left to merge


def test_the_later_finishing_task_wins_a_conflict(areas):
    areas.area("implement").write("app.py", "v1\n")
    areas.area("test").write("app.py", "v2\n")
    areas.merge("implement")
    merged = areas.merge("test")
    assert merged.conflicts == [Conflict("app.py", winner="test", loser="implement")]
    assert areas.outputs.read("app.py") == "v2\n"
    assert areas.owner("app.py") == "test"


def test_identical_content_is_no_conflict(areas):
    areas.area("a").write("same.txt", "x\n")
    areas.area("b").write("same.txt", "x\n")
    areas.merge("a")
    merged = areas.merge("b")
    assert merged.conflicts == []
    assert merged.written[0].changed is False


def test_a_task_name_cannot_escape_the_staging_folder(areas):
    for name in ("../x", "a/b", "/abs"):
        with pytest.raises(UnsafePathError):
            areas.area(name)


def test_a_path_refused_by_outputs_is_reported_not_raised(areas):
    (areas.outputs.root / "taken").mkdir()
    areas.area("a").write("taken", "x")
    merged = areas.merge("a")
    assert merged.written == []
    assert merged.refused == [("taken", "the path exists and is not a regular file")]


# --- inside a build ------------------------------------------------------------------------


def run_build(isolated: Path, script: dict, *extra: str) -> tuple[int, dict, list[dict]]:
    import yaml

    path = isolated / "script.yaml"
    path.write_text(yaml.safe_dump(script))
    result = CliRunner().invoke(
        app, ["build", str(EXAMPLE_SPEC), "--model", f"scripted:{path}", "--json", *extra]
    )
    payload = json.loads(result.stdout)
    lines = (Path(payload["run_dir"]) / "events.jsonl").read_text().splitlines()
    return result.exit_code, payload, [json.loads(line) for line in lines]


def example_script() -> dict:
    import yaml

    return yaml.safe_load(EXAMPLE_SCRIPT.read_text())


def test_two_tasks_writing_one_path_record_a_conflict(isolated: Path) -> None:
    script = example_script()
    script["agents"]["qa"] = {"answer": "FILE: todo.py\n```python\nprint('from qa')\n```\n"}

    code, result, events = run_build(isolated, script)

    assert code == 0
    conflicts = [event for event in events if event["type"] == "file_conflict"]
    assert [(c["path"], c["winner"], c["loser"]) for c in conflicts] == [
        ("todo.py", "test", "implement")
    ]
    assert (Path(result["run_dir"]) / "outputs" / "todo.py").read_text() == "print('from qa')\n"


@pytest.mark.parametrize("mode", ["redact", "refuse"])
def test_a_secret_is_recorded_without_its_value(isolated: Path, monkeypatch, mode) -> None:
    monkeypatch.setenv("ORCHESTRATE_SECRET_MODE", mode)
    script = example_script()
    leak = f'FILE: settings.py\n```python\nAWS_KEY = "{AWS_KEY}"\n```\n'
    script["agents"]["devops"] = {"answer": leak}

    code, result, events = run_build(isolated, script)

    assert code == 0
    found = [event for event in events if event["type"] == "secret_found"]
    assert found == [
        {
            **found[0],
            "task": "deploy",
            "path": "settings.py",
            "action": "redacted" if mode == "redact" else "refused",
            "findings": [{"kind": "AWS Access Key", "line": 1}],
        }
    ]
    run_dir = Path(result["run_dir"])
    assert AWS_KEY not in (run_dir / "events.jsonl").read_text()
    assert AWS_KEY not in (run_dir / "run.json").read_text()
    written = run_dir / "outputs" / "settings.py"
    if mode == "redact":
        assert written.read_text() == 'AWS_KEY = "<redacted>"\n'
    else:
        assert not written.exists()
        assert result["refused_files"] == ["settings.py"]


def test_a_failed_tasks_partial_files_never_reach_outputs(isolated: Path, monkeypatch) -> None:
    """A task that wrote a file (as a tool-calling model would) and then failed."""
    import orchestrate.build as build_module

    runs: list[build_module.BuildRun] = []
    real_execute, real_run_task = build_module.BuildRun.execute, build_module.run_crew_task

    def remembering_execute(self):
        runs.append(self)
        return real_execute(self)

    def failing_after_a_write(task, agent, **kwargs):
        if task.agent == "devops":
            runs[-1].staging.area("deploy").write("Dockerfile", "FROM half-written\n")
            raise BackendError("the model went away after writing one file")
        return real_run_task(task, agent, **kwargs)

    monkeypatch.setattr(build_module.BuildRun, "execute", remembering_execute)
    monkeypatch.setattr(build_module, "run_crew_task", failing_after_a_write)

    code, result, _ = run_build(isolated, example_script())

    assert code == 1
    assert result["tasks"]["deploy"]["state"] == "failed"
    assert "Dockerfile" not in result["files"]
    assert not (Path(result["run_dir"]) / "outputs" / "Dockerfile").exists()
    assert not (Path(result["run_dir"]) / "staging" / "deploy").exists()
    assert "todo.py" in result["files"]  # independent tasks still merged their files
