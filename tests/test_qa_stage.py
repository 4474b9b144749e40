"""The QA stage in whole builds: checks, a repair round, the critic's structured verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import EXAMPLE_SPEC, require_tool
from orchestrate.cli.app import app
from orchestrate.crew.config import CrewConfig, load_crew
from orchestrate.errors import CrewError
from orchestrate.qa.verdict import parse_verdict

runner = CliRunner()

BUGGY = "FILE: calc.py\n```python\ndef add(a, b):\n    return a - b\n```\n"
FIXED = "FILE: calc.py\n```python\ndef add(a, b):\n    return a + b\n```\n"
TESTS = (
    "FILE: tests/test_calc.py\n```python\nfrom calc import add\n\n\n"
    "def test_add():\n    assert add(2, 3) == 5\n```\n"
)
REVIEW = (
    "The add function is tested.\n\nVERDICT: REQUEST CHANGES\n"
    "- handle non-numeric input\n- document add() in the README\n"
)


@pytest.fixture(autouse=True)
def bubblewrap() -> None:
    require_tool("bwrap", "bubblewrap")


@pytest.fixture
def calc_script(write_script):
    return write_script(
        fullstack={"answers": [BUGGY, FIXED]},
        qa={"answer": TESTS},
        critic={"answer": REVIEW},
    )


def build(*args: str) -> tuple[int, dict]:
    result = runner.invoke(app, ["build", *args, "--json"])
    assert result.stdout.strip().startswith("{"), result.output
    return result.exit_code, json.loads(result.stdout)


def test_failing_tests_pass_after_one_repair_round(isolated: Path, calc_script: Path) -> None:
    code, result = build(str(EXAMPLE_SPEC), "--model", f"scripted:{calc_script}")

    assert code == 0, result
    run_dir = Path(result["run_dir"])
    record = json.loads((run_dir / "run.json").read_text())
    first, second = record["qa"]["rounds"]
    assert (first["kind"], first["checks"]["status"]) == ("build", "failed")
    assert first["checks"]["failures"] == ["tests.test_calc::test_add: assert -1 == 5"]
    assert first["repair"]["agent"] == "fullstack"
    assert first["repair"]["files"] == ["calc.py"]
    assert (second["kind"], second["checks"]["status"]) == ("repair", "passed")
    assert second["checks"]["passed"] == 1 and second["repair"] is None
    assert (run_dir / "outputs" / "calc.py").read_text().strip().endswith("return a + b")
    assert record["tasks"]["checks"]["state"] == "succeeded"
    assert record["tasks"]["checks"]["files"] == ["calc.py"]
    assert result["checks"] == {
        "status": "passed",
        "rounds": 2,
        "passed": 1,
        "failed": 0,
        "errors": 0,
        "compile_errors": 0,
    }
    # The critic read both rounds, and its verdict is structured.
    assert result["verdict"] == "request_changes"
    assert result["requested_changes"] == [
        "handle non-numeric input",
        "document add() in the README",
    ]
    checks_account = (run_dir / "tasks" / "checks.md").read_text()
    assert "Round 1 (build): failed" in checks_account
    assert "Round 2 (repair): passed" in checks_account
    # Both rounds are in the event log and in the report.
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    ran = [(e["round"], e["status"]) for e in events if e["type"] == "checks_ran"]
    assert ran == [(1, "failed"), (2, "passed")]
    assert [e["files"] for e in events if e["type"] == "repair_finished"] == [["calc.py"]]
    review_start = next(
        e["seq"]
        for e in events
        if e["type"] == "task_state" and e["task"] == "review" and e["state"] == "running"
    )
    checks_end = next(
        e["seq"]
        for e in events
        if e["type"] == "task_state" and e["task"] == "checks" and e["state"] == "succeeded"
    )
    assert checks_end < review_start
    report = (run_dir / "report.html").read_text()
    assert "Sandboxed checks" in report
    assert "assert -1 == 5" in report and "handle non-numeric input" in report


def test_repairs_stop_at_the_bound(isolated: Path, write_script) -> None:
    script = write_script(fullstack={"answer": BUGGY}, qa={"answer": TESTS})

    code, result = build(str(EXAMPLE_SPEC), "--model", f"scripted:{script}", "--repair-rounds", "2")

    assert code == 0
    record = json.loads((Path(result["run_dir"]) / "run.json").read_text())
    statuses = [entry["checks"]["status"] for entry in record["qa"]["rounds"]]
    assert statuses == ["failed", "failed", "failed"]
    assert [entry["repair"] is not None for entry in record["qa"]["rounds"]] == [
        True,
        True,
        False,
    ]
    assert record["qa"]["repair_rounds_allowed"] == 2


def test_no_qa_run_skips_the_sandbox(isolated: Path, calc_script: Path) -> None:
    code, result = build(str(EXAMPLE_SPEC), "--model", f"scripted:{calc_script}", "--no-qa-run")

    assert code == 0
    assert "checks" not in result["tasks"]
    assert result["checks"] is None
    record = json.loads((Path(result["run_dir"]) / "run.json").read_text())
    assert record["qa"] is None and record["crew"]["checks"] is None
    assert "checks" not in record["tasks"]["review"]["depends_on"]


def test_check_reruns_the_checks_of_a_finished_run(isolated: Path, write_script) -> None:
    script = write_script(fullstack={"answer": BUGGY}, qa={"answer": TESTS})
    _, result = build(str(EXAMPLE_SPEC), "--model", f"scripted:{script}", "--repair-rounds", "0")
    run_dir = Path(result["run_dir"])

    failing = runner.invoke(app, ["check", result["run_id"]])
    (run_dir / "outputs" / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    passing = runner.invoke(app, ["check", result["run_id"][:15], "--json"])

    assert failing.exit_code == 1, failing.output
    assert "assert -1 == 5" in failing.output
    assert passing.exit_code == 0, passing.output
    assert json.loads(passing.stdout)["checks"]["status"] == "passed"
    rounds = json.loads((run_dir / "run.json").read_text())["qa"]["rounds"]
    assert [(r["kind"], r["checks"]["status"]) for r in rounds] == [
        ("build", "failed"),
        ("recheck", "failed"),
        ("recheck", "passed"),
    ]


def test_check_of_an_unknown_run_is_a_one_line_error(isolated: Path) -> None:
    result = runner.invoke(app, ["check", "nope"])

    assert result.exit_code == 2
    assert "no run 'nope'" in result.output
    assert "Traceback" not in result.output


def test_repair_rounds_must_be_in_range(isolated: Path, calc_script: Path) -> None:
    result = runner.invoke(
        app,
        ["build", str(EXAMPLE_SPEC), "--model", f"scripted:{calc_script}", "--repair-rounds", "11"],
    )

    assert result.exit_code == 2
    assert "--repair-rounds" in result.output


def test_the_checks_section_must_name_real_tasks(tmp_path: Path) -> None:
    crew = load_crew().config.model_dump()
    crew["checks"]["after"] = ["tests"]
    path = tmp_path / "crew.yaml"
    path.write_text(json.dumps(crew))

    with pytest.raises(CrewError, match=r"checks\.after names task .tests."):
        load_crew(path)


def test_the_checks_stage_sits_between_the_tests_and_the_review() -> None:
    graph = load_crew().graph

    assert graph.dependencies("checks") == ("test",)
    assert "checks" in graph.dependencies("review")
    assert (
        "checks"
        not in CrewConfig.model_validate(load_crew().config.without_checks().model_dump())
        .graph()
        .tasks
    )


@pytest.mark.parametrize(
    ("answer", "decision", "changes"),
    [
        ("Looks good.\nVERDICT: APPROVE", "approve", []),
        ("**Verdict:** approved", "approve", []),
        (
            "VERDICT: REQUEST CHANGES\n1. fix the bug\n2) add tests",
            "request_changes",
            ["fix the bug", "add tests"],
        ),
        (
            "- missing docs\n- no tests\n\nVerdict: request changes",
            "request_changes",
            ["missing docs", "no tests"],
        ),
        (
            "VERDICT: APPROVE\n\nOn second thought, VERDICT: REQUEST CHANGES\n* typo",
            "request_changes",
            ["typo"],
        ),
    ],
)
def test_the_verdict_is_read_leniently(answer: str, decision: str, changes: list[str]) -> None:
    verdict = parse_verdict(answer)

    assert verdict is not None
    assert (verdict.decision, verdict.changes) == (decision, changes)


def test_an_answer_without_a_verdict_has_none() -> None:
    assert parse_verdict("The code is fine, I think.") is None


def test_a_hostile_generated_test_cannot_stop_the_build(isolated: Path, write_script) -> None:
    canary = isolated / "canary.txt"
    hostile = (
        "FILE: tests/test_calc.py\n```python\nimport time\nfrom pathlib import Path\n\n\n"
        f"def test_escape_then_hang():\n    Path({str(canary)!r}).write_text('escaped')\n\n\n"
        "def test_hang():\n    while True:\n        time.sleep(1)\n```\n"
    )
    script = write_script(fullstack={"answer": FIXED}, qa={"answer": hostile})
    crew = load_crew().config.model_dump()
    crew["checks"]["limits"]["wall_seconds"] = 5
    crew["checks"]["repair_rounds"] = 0
    (isolated / "crew.yaml").write_text(json.dumps(crew))

    code, result = build(str(EXAMPLE_SPEC), "--model", f"scripted:{script}", "--crew", "crew.yaml")

    assert code == 0 and result["status"] == "succeeded"
    assert not canary.exists()
    (only,) = json.loads((Path(result["run_dir"]) / "run.json").read_text())["qa"]["rounds"]
    assert only["checks"]["status"] == "failed"
    assert only["checks"]["limits_hit"] == ["wall time"]
    assert result["tasks"]["review"]["state"] == "succeeded"


def test_a_repair_that_writes_nothing_ends_the_rounds(isolated: Path, write_script) -> None:
    script = write_script(
        fullstack={"answers": [BUGGY, "I could not find the bug."]}, qa={"answer": TESTS}
    )

    code, result = build(str(EXAMPLE_SPEC), "--model", f"scripted:{script}", "--repair-rounds", "3")

    assert code == 0
    (only,) = json.loads((Path(result["run_dir"]) / "run.json").read_text())["qa"]["rounds"]
    assert only["checks"]["status"] == "failed"
    assert only["repair"] == {
        "agent": "fullstack",
        "files": [],
        "seconds": only["repair"]["seconds"],
        "error": "the answer carried no files",
    }
