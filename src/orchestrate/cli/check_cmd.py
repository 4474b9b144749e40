"""`orchestrate check RUN_ID`: run a finished run's checks again, in the sandbox."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer

from orchestrate.cli.common import console, err_console, reports_errors

if TYPE_CHECKING:
    from orchestrate.qa.records import QaRound
    from orchestrate.store.runs import RunFolder


@reports_errors
def check(
    run_id: str = typer.Argument(..., help="The run to check (a prefix of its id is enough)."),
    json_output: bool = typer.Option(False, "--json", help="Print the round as JSON."),
) -> None:
    """Run a run's generated checks again in the sandbox; record them as a new round.

    Exits 0 when the checks pass, 1 when they fail. Nothing in the run's outputs changes.

    Example: orchestrate check 20261204-101500
    """
    from orchestrate.errors import RunInUseError
    from orchestrate.qa.checks import CheckPlan, run_checks
    from orchestrate.qa.records import QaRound
    from orchestrate.settings import load_settings
    from orchestrate.store.events import utc_now
    from orchestrate.store.runs import RunStore

    settings = load_settings()
    folder = RunStore(settings.runs_dir).find(run_id)
    record = folder.load()
    if record.is_live():
        raise RunInUseError(f"run {record.id} is still running; check it once it has finished")
    lock = folder.claim()
    try:
        checks = record.crew_config().checks
        plan = CheckPlan(checks.command, checks.limits) if checks else CheckPlan()
        started = utc_now()
        with err_console.status(f"Running the checks of {record.id} in the sandbox…"):
            report = run_checks(folder.outputs_dir, plan)
        checked = QaRound(number=0, kind="recheck", started_at=started, checks=report)
        qa_round = _record_round(folder, checked)
    finally:
        lock.release()
    if json_output:
        console.print_json(json.dumps(qa_round.model_dump(mode="json")))
    else:
        _print_round(record.id, qa_round)
    raise typer.Exit(0 if report.ok else 1)


def _record_round(folder: RunFolder, qa_round: QaRound) -> QaRound:
    """Append the round to run.json (numbered after the others) and to the event log."""
    from orchestrate.crew.config import CHECKS_TASK
    from orchestrate.qa.records import QaRecord
    from orchestrate.store.events import EventLog, EventType

    record = folder.load()  # as it is now, under the run's lock
    qa = record.qa or QaRecord()
    qa_round = qa_round.model_copy(update={"number": len(qa.rounds) + 1})
    qa.rounds.append(qa_round)
    record.qa = qa
    folder.save(record)
    events = EventLog(folder.events_path)
    events.emit(EventType.CHECKS_RAN, task=CHECKS_TASK, **qa_round.event_fields())
    events.close()
    _rewrite_report(folder)
    return qa_round


def _rewrite_report(folder: RunFolder) -> None:
    from orchestrate.observe.report import write_report

    try:
        write_report(folder)
    except Exception as exc:  # the round is saved in run.json; the page is extra
        err_console.print(f"[yellow]warning[/]: could not rewrite report.html: {exc}")


def _print_round(run_id: str, qa_round: QaRound) -> None:
    report = qa_round.checks
    console.print(f"[bold]Run {run_id}[/], checks round {qa_round.number}: {report.summary()}")
    for line in report.compile_errors + report.failures:
        console.print(f"  - {line}", highlight=False)
    if report.confinement is not None:
        confinement = report.confinement
        console.print(f"  network: {confinement.network}", highlight=False)
        console.print(f"  files: {confinement.filesystem}", highlight=False)
        console.print(f"  processes: {confinement.processes}", highlight=False)
    if report.output_tail.strip() and not report.ok:
        console.print("  output (its end):", highlight=False)
        for line in report.output_tail.rstrip().splitlines()[-15:]:
            console.print(f"    {line}", highlight=False, markup=False)
