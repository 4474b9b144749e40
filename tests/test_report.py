"""The run report: report.html of real scripted runs, parsed, and rendered in Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from conftest import BUNDLED_CREW_CONTEXTS, EXAMPLE_SPEC, require_tool
from orchestrate.cli.app import app
from orchestrate.observe.report import REPORT_NAME, ensure_report, write_report
from orchestrate.store.runs import RunFolder

runner = CliRunner()

HOSTILE_TITLE = "<script>alert(1)</script> & notes"
AWS_KEY = "AKIA" + "IOSFODNN7EXAMPLE"  # AWS's documented example key, split to keep scanners calm
CRITIC_ANSWER = (
    "FILE: REVIEW.md\n```markdown\nUse <b>escaping</b> & check `done` bounds.\n\n"
    "VERDICT: APPROVE\n```\n"
)
# Read before the `isolated` fixture clears every ORCHESTRATE_* variable.
SCREENSHOT_DIR = os.environ.get("ORCHESTRATE_SCREENSHOT_DIR")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def build(*args: str) -> tuple[int, dict[str, Any]]:
    result = runner.invoke(app, [*args, "--json"])
    payload = json.loads(result.stdout) if result.stdout.strip().startswith("{") else {}
    return result.exit_code, payload


@pytest.fixture
def failed_run(isolated: Path, write_script: Callable[..., Path], monkeypatch) -> Path:
    """A run of a spec with a hostile title: one retry, one failure, one skip, a secret,
    a refused path, and latencies that make waiting and running visible."""
    monkeypatch.setenv("ORCHESTRATE_RETRY_BASE_SECONDS", "0.05")
    monkeypatch.setenv("ORCHESTRATE_RETRY_CAP_SECONDS", "0.05")
    spec = yaml.safe_load(EXAMPLE_SPEC.read_text())
    spec["title"] = HOSTILE_TITLE
    spec_path = isolated / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    script = write_script(
        architect={"answer": "FILE: DESIGN.md\n```\n# Design\n```\n", "latency_seconds": 0.1},
        fullstack={
            "answer": "FILE: todo.py\n```python\nprint('todo')\n```\n",
            "latency_seconds": 0.15,
            "fail_first": 1,
        },
        devops={"error": "simulated outage", "latency_seconds": 0.5},
        qa={"answer": "FILE: ../escape.txt\n```\nx\n```\n", "latency_seconds": 0.1},
        docs={"answer": f"FILE: README.md\n```\nkey = {AWS_KEY}\n```\n", "latency_seconds": 0.1},
        critic={"answer": CRITIC_ANSWER, "latency_seconds": 0.05},
    )
    code, result = build("build", str(spec_path), "--model", f"scripted:{script}", "--workers", "2")
    assert code == 1, result
    return Path(result["run_dir"]).resolve()


@pytest.fixture
def resumed_run(failed_run: Path, write_script: Callable[..., Path]) -> Path:
    """The failed run, resumed with a devops agent that answers: every task succeeds."""
    script = yaml.safe_load((failed_run.parent.parent / "script.yaml").read_text())
    script["agents"]["devops"] = {"answer": "FILE: Makefile\n```\nall:\n```\n"}
    fixed = failed_run.parent.parent / "fixed.yaml"
    fixed.write_text(yaml.safe_dump(script))
    code, result = build("resume", failed_run.name, "--model", f"scripted:{fixed}")
    assert code == 0, result
    return failed_run


class Page(HTMLParser):
    """Checks that every element is closed in order, and keeps attributes and text."""

    VOID = frozenset({"meta", "br", "hr", "img", "link", "input", "col"})

    def __init__(self, text: str) -> None:
        super().__init__()
        self.open: list[str] = []
        self.attributes: list[tuple[str, str]] = []
        self.text: list[str] = []
        self.problems: list[str] = []
        self.feed(text)
        self.close()
        self.problems += [f"<{tag}> never closed" for tag in self.open]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.attributes += [(name, value or "") for name, value in attrs]
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.attributes += [(name, value or "") for name, value in attrs]

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1] != tag:
            self.problems.append(f"</{tag}> closes <{self.open[-1] if self.open else None}>")
            return
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_the_report_is_well_formed_and_shows_every_task(failed_run: Path) -> None:
    path = write_report(RunFolder(failed_run))

    assert path == failed_run / REPORT_NAME
    text = path.read_text()
    page = Page(text)
    assert page.problems == []
    assert text.startswith("<!DOCTYPE html>")
    assert "<svg" in text
    for task in BUNDLED_CREW_CONTEXTS:
        assert f">{task}<" in text, task


def test_the_report_stands_alone(failed_run: Path) -> None:
    text = write_report(RunFolder(failed_run)).read_text()
    page = Page(text)

    links = [value for name, value in page.attributes if name in ("src", "href", "xlink:href")]
    assert all(not re.match(r"\s*(https?:)?//", value) for value in links), links
    assert "http://" not in text and "https://" not in text
    assert "@import" not in text and "@font-face" not in text
    assert "<script" not in text.lower()


def test_everything_from_the_user_or_a_model_is_escaped(failed_run: Path) -> None:
    text = write_report(RunFolder(failed_run)).read_text()

    assert HOSTILE_TITLE not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; notes" in text
    assert HOSTILE_TITLE in "".join(Page(text).text)


def test_the_report_explains_a_failed_run(failed_run: Path) -> None:
    text = write_report(RunFolder(failed_run)).read_text()
    visible = " ".join(" ".join(Page(text).text).split())

    assert "Root cause" in visible
    assert "task &#x27;deploy&#x27; failed: BackendError: simulated outage" in text
    assert "no verdict" in visible
    assert "skipped: its input 'deploy' failed" in visible
    assert 'class="run retried"' in text, "the failed first attempt of implement"
    assert 'class="tick"' in text, "a tick where it failed"
    assert "succeeded" in visible and "failed" in visible and "skipped" in visible
    for heading in ("By agent", "By model", "Files", "Refused files", "Secrets found"):
        assert heading in visible
    assert "../escape.txt" in visible
    assert "AWS Access Key on line 1" in visible
    assert re.search(r"README\.md\s+\d+ B\s+document", visible)


def test_a_resumed_run_shows_its_sessions_restored_tasks_and_the_review(resumed_run: Path) -> None:
    text = write_report(RunFolder(resumed_run)).read_text()
    visible = " ".join(" ".join(Page(text).text).split())

    assert Page(text).problems == []
    assert "resumed," in visible and "2 sessions" in visible
    assert 'class="restored"' in text
    assert "approved" in visible
    assert "From tasks/review.md" in visible
    assert "Use &lt;b&gt;escaping&lt;/b&gt; &amp; check" in text
    assert "<b>escaping" not in text


def test_a_run_with_no_events_still_gets_a_report(failed_run: Path) -> None:
    (failed_run / "events.jsonl").unlink()

    text = write_report(RunFolder(failed_run)).read_text()

    assert Page(text).problems == []
    assert "No task timings" in text
    assert "No model calls recorded" in text


def test_show_report_prints_the_path_and_writes_a_missing_or_stale_report(
    failed_run: Path,
) -> None:
    target = failed_run / REPORT_NAME
    target.unlink(missing_ok=True)  # like a run from before reports existed

    result = runner.invoke(app, ["show", failed_run.name[:15], "--report"])

    assert result.exit_code == 0, result.output
    assert result.stdout == f"{target}\n"
    assert target.is_file()
    target.write_text("old")
    stamp = target.stat().st_mtime_ns
    os.utime(target, ns=(stamp, stamp))
    assert ensure_report(RunFolder(failed_run)).read_text() == "old", "fresh: kept"
    older = (failed_run / "run.json").stat().st_mtime_ns - 1_000_000_000
    os.utime(target, ns=(older, older))
    assert "<svg" in ensure_report(RunFolder(failed_run)).read_text(), "stale: rewritten"


def test_the_report_renders_in_chromium_without_errors(resumed_run: Path, tmp_path: Path) -> None:
    chromium = require_tool("chromium", "chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    report = write_report(RunFolder(resumed_run))
    screenshot = tmp_path / "report.png"
    errors: list[str] = []
    requests: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda message: _keep_error(errors, message))
            page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
            page.on("request", lambda request: requests.append(request.url))
            page.goto(report.as_uri())
            box = page.locator("svg.gantt").bounding_box()
            page.screenshot(path=str(screenshot), full_page=True)
            page.emulate_media(color_scheme="dark")
            page.screenshot(path=str(tmp_path / "report-dark.png"), full_page=True)
        finally:
            browser.close()

    assert errors == []
    assert requests == [report.as_uri()], "the page loads nothing but itself"
    assert box is not None and box["width"] > 0 and box["height"] > 0
    assert screenshot.stat().st_size > 0
    _keep_screenshots(tmp_path)


def _keep_error(errors: list[str], message: Any) -> None:
    if message.type == "error":
        errors.append(f"console: {message.text}")


def _keep_screenshots(folder: Path) -> None:
    """Copy the screenshots where ORCHESTRATE_SCREENSHOT_DIR says, for a person to look at."""
    if SCREENSHOT_DIR:
        Path(SCREENSHOT_DIR).mkdir(parents=True, exist_ok=True)
        for name in ("report.png", "report-dark.png"):
            shutil.copy(folder / name, Path(SCREENSHOT_DIR) / name)
