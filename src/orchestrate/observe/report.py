"""The run report: ``runs/<id>/report.html``, one page that tells what a run did.

The page is built from ``run.json`` and ``events.jsonl`` (plus the critic's answer in
``tasks/``) and stands alone: inline CSS, an inline SVG timeline, no script, no web
font, no link out of the file, light or dark as the reader's system prefers.

It reads top to bottom like the run: what was asked and how it ended, when each task
waited and ran (the timeline of ``observe/timeline.py``), what each agent and model
spent, which files came out, and what the critic said.

Everything that came from a user or a model (the spec's title, task names, paths,
answers, reasons) is escaped by construction: the page is assembled from ``Html``
values, and ``tag`` escapes every plain string it is given.
"""

from __future__ import annotations

import html
import itertools
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from orchestrate import __version__
from orchestrate.observe.timeline import (
    RETRIED,
    UNFINISHED,
    Mark,
    Phase,
    RunTimeline,
    Segment,
    TaskTimeline,
    axis_ticks,
    build_timeline,
    tick_label,
)
from orchestrate.qa.records import RepairRecord
from orchestrate.store.events import Event, EventType
from orchestrate.store.runs import RunFolder, RunRecord, RunStatus, TaskRecord
from orchestrate.store.usage import UsageTotals, run_events, usage_by

REPORT_NAME = "report.html"
CRITIC_AGENT = "critic"
EXCERPT_LINES = 60
EXCERPT_CHARS = 6000


# --- Writing it -------------------------------------------------------------------------


def write_report(folder: RunFolder) -> Path:
    """Write ``report.html`` into the run folder (atomically) and return its path."""
    record = folder.load()
    page = render_report(record, run_events(folder), _critic_answer(folder, record))
    target = folder.path / REPORT_NAME
    _write_atomically(target, page)
    return target


def ensure_report(folder: RunFolder) -> Path:
    """The run's report, written first when it is missing or older than the run's files.

    Runs from before reports existed get one, and so does a run that went on (or was
    resumed) after its report was written.
    """
    target = folder.path / REPORT_NAME
    sources = [path for path in (folder.run_json, folder.events_path) if path.exists()]
    if target.exists() and all(_mtime(target) >= _mtime(path) for path in sources):
        return target
    return write_report(folder)


def render_report(
    record: RunRecord, events: list[Event], review: tuple[str, str] | None = None
) -> str:
    """The whole page; ``review`` is the critic's task and its answer, when there is one."""
    timeline = build_timeline(events, {name: task.agent for name, task in record.tasks.items()})
    run = _Run(record, events, timeline, review)
    body = join(
        _header(run),
        _cards(run),
        _failure(run),
        _timeline_section(run),
        _tasks_section(run),
        _usage_section(run),
        _files_section(run),
        _checks_section(run),
        _review_section(run),
        _footer(run),
    )
    return f"<!DOCTYPE html>\n{_head(run)}\n{tag('body', tag('main', body))}\n"


def _critic_answer(folder: RunFolder, record: RunRecord) -> tuple[str, str] | None:
    for name, task in record.tasks.items():
        path = folder.tasks_dir / f"{name}.md"
        if task.agent == CRITIC_AGENT and path.is_file():
            return name, path.read_text(encoding="utf-8", errors="replace")
    return None


def _mtime(path: Path) -> int:
    return path.stat().st_mtime_ns


def _write_atomically(target: Path, text: str) -> None:
    handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=".tmp-report-")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        Path(temp_name).replace(target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


# --- Safe markup ------------------------------------------------------------------------


class Html(str):
    """Markup that is safe to insert as it is."""

    __slots__ = ()


_VOID = frozenset({"meta", "br", "hr", "col"})


def escape(value: object) -> Html:
    return Html(html.escape(str(value), quote=True))


def join(*parts: Html | None) -> Html:
    return Html("".join(part for part in parts if part))


def tag(name: str, *children: object, **attributes: object) -> Html:
    """``<name attributes>children</name>``; plain strings and numbers are escaped.

    ``class_="x"`` gives ``class="x"``, ``stroke_width=2`` gives ``stroke-width="2"``;
    an attribute that is None or False is left out. ``None`` children are skipped.
    """
    attrs = "".join(
        f' {key.rstrip("_").replace("_", "-")}="{escape(_number(value))}"'
        for key, value in attributes.items()
        if value is not None and value is not False
    )
    if name in _VOID:
        return Html(f"<{name}{attrs}>")
    inner = "".join(_fragment(child) for child in children)
    return Html(f"<{name}{attrs}>{inner}</{name}>")


def empty(name: str, **attributes: object) -> Html:
    """An SVG element without children, ``<name attributes/>``."""
    return Html(tag(name, **attributes).removesuffix(f"></{name}>") + "/>")


def _fragment(child: object) -> str:
    if child is None:
        return ""
    if isinstance(child, Html):
        return child
    return escape(_number(child))


def _number(value: object) -> object:
    """Coordinates with two decimals at most: smaller pages, same picture."""
    if isinstance(value, float):
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return value


# --- What the page is about -------------------------------------------------------------


@dataclass
class _Run:
    """Everything the sections read, gathered once."""

    record: RunRecord
    events: list[Event]
    timeline: RunTimeline
    review: tuple[str, str] | None

    @property
    def status(self) -> str:
        """The stored status, except that a run whose process died says so."""
        record = self.record
        if record.status is RunStatus.RUNNING and not record.is_live():
            return "interrupted"
        return record.status.value

    @property
    def makespan(self) -> float | None:
        """Seconds the run worked, all sessions together; run.json's for a run without log."""
        return self.timeline.seconds if self.timeline.sessions else self.record.seconds

    def of_type(self, kind: EventType) -> list[Event]:
        return [event for event in self.events if event.get("type") == kind]


# --- Head, header, cards ----------------------------------------------------------------


def _head(run: _Run) -> Html:
    title = f"{run.record.spec_title} · run {run.record.id}"
    meta = Html(
        '<meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="color-scheme" content="light dark">'
        '<meta name="generator" content="orchestrate">'
    )
    return tag("html", tag("head", meta, tag("title", title), tag("style", Html(_CSS))), lang="en")


def _header(run: _Run) -> Html:
    record = run.record
    facts = [
        tag("span", "run ", tag("code", record.id)),
        tag("span", "model ", tag("code", record.model)),
        tag("span", f"{record.workers} workers"),
        tag("span", "started ", _utc(record.started_at)),
    ]
    if record.resumes:
        facts.append(tag("span", f"resumed {record.resumes}×"))
    return tag(
        "header",
        tag("p", "Orchestrate run report", class_="eyebrow"),
        tag("h1", record.spec_title),
        tag("div", _pill(run.status, run.status), _verdict_pill(record.verdict), class_="pills"),
        tag("p", *_between(facts, " · "), class_="facts"),
    )


def _cards(run: _Run) -> Html:
    record = run.record
    tasks = list(record.tasks.values())
    done = sum(task.state == "succeeded" for task in tasks)
    critical = record.critical_path_seconds
    ratio = (
        f"makespan {run.makespan / critical:.2f}× the critical path"
        if run.makespan and critical
        else "no critical path recorded"
    )
    calls = f"{record.cached_calls} cached · {_failed_calls(run)} failed"
    return tag(
        "section",
        _card("Makespan", _duration(run.makespan), _sessions_note(run.timeline)),
        _card("Critical path", _duration(critical), ratio),
        _card("Tasks done", f"{done} / {len(tasks)}", _task_counts(tasks)),
        _card("Tokens", f"{record.prompt_tokens:,} in", f"{record.completion_tokens:,} out"),
        _card("Model calls", f"{record.llm_calls:,}", calls),
        _card(
            "Cost",
            f"{record.cost:.4f} {record.currency or ''}".strip(),
            "paid model calls" if record.cost else "free models",
        ),
        _card("Files", f"{len(record.files)}", _bytes(_total_bytes(run))),
        class_="cards",
        aria_label="Summary",
    )


def _card(label: str, value: str, note: str) -> Html:
    return tag(
        "div",
        tag("div", label, class_="label"),
        tag("div", value, class_="value"),
        tag("div", note, class_="note"),
        class_="card",
    )


def _failure(run: _Run) -> Html | None:
    if not run.record.failure:
        return None
    return tag(
        "section",
        tag("strong", "Root cause"),
        tag("p", run.record.failure),
        class_="callout",
        role="alert",
    )


def _sessions_note(timeline: RunTimeline) -> str:
    count = len(timeline.sessions)
    if count <= 1:
        return "wall clock, start to finish"
    gaps = sum(timeline.gap_before(index) for index in range(count))
    return f"{count} sessions; {_duration(gaps)} between them left out"


def _task_counts(tasks: Iterable[TaskRecord]) -> str:
    counts = Counter(task.state for task in tasks)
    others = [f"{count} {state}" for state, count in counts.items() if state != "succeeded"]
    return " · ".join(others) or "all succeeded"


def _failed_calls(run: _Run) -> int:
    return sum(
        bool(e.get("error")) and not e.get("cached") for e in run.of_type(EventType.LLM_CALL)
    )


# --- The timeline -----------------------------------------------------------------------


# About how wide one character of an 11px label is, in the SVG's units.
_LABEL_CHAR_WIDTH = 6.2


@dataclass(frozen=True)
class _Frame:
    """Where things go in the SVG: a fixed-width canvas that CSS scales to the page."""

    seconds: float
    rows: int
    width: float = 1000.0
    plot_left: float = 200.0
    plot_right: float = 850.0
    top: float = 30.0
    row_height: float = 30.0
    bottom: float = 34.0

    @property
    def height(self) -> float:
        return self.top + self.rows * self.row_height + self.bottom

    @property
    def plot_bottom(self) -> float:
        return self.top + self.rows * self.row_height

    def x(self, seconds: float) -> float:
        share = seconds / self.seconds if self.seconds > 0 else 0.0
        return self.plot_left + share * (self.plot_right - self.plot_left)

    def middle(self, row: int) -> float:
        return self.top + (row + 0.5) * self.row_height


def _timeline_section(run: _Run) -> Html:
    heading = tag("h2", "Timeline")
    if not run.timeline.sessions or run.timeline.seconds <= 0:
        note = "No task timings: the run's event log is empty or missing."
        return tag("section", heading, tag("p", note, class_="muted"), id="timeline")
    intro = tag(
        "p",
        "Each row is a task. A thin bar is the time it waited for its inputs, a hatched "
        "one the time it queued for a worker (or backed off before a retry), a solid one "
        "each attempt, coloured by how it ended. Hover for details.",
        class_="muted",
    )
    chart = tag("div", _gantt(run), class_="chart")
    return tag("section", heading, intro, chart, _legend(), id="timeline")


def _gantt(run: _Run) -> Html:
    lines = _lines(run.timeline.tasks, set(run.record.critical_path))
    frame = _Frame(run.timeline.seconds, len(lines))
    parts = [
        tag("title", f"Timeline of run {run.record.id}", id="timeline-title"),
        _patterns(),
        *(_row_background(frame, line) for line in lines),
        _grid(frame),
        _column_heads(frame),
        _sessions(frame, run.timeline),
        _critical_links(frame, run.record.critical_path, lines),
        *(_row(frame, line) for line in lines),
    ]
    return tag(
        "svg",
        *parts,
        viewBox=f"0 0 {frame.width:g} {frame.height:g}",
        role="img",
        aria_labelledby="timeline-title",
        class_="gantt",
    )


@dataclass(frozen=True)
class _Line:
    """One row of the chart: a task, its agent's group, and whether it is critical."""

    index: int
    task: TaskTimeline
    group: int  # the agent's position among the agents
    first_of_group: bool
    critical: bool


def _lines(tasks: Mapping[str, TaskTimeline], critical: set[str]) -> list[_Line]:
    """Tasks grouped by agent, agents in the order of their first task, tasks in crew order."""
    groups: dict[str, list[TaskTimeline]] = {}
    for task in tasks.values():
        groups.setdefault(task.agent, []).append(task)
    lines: list[_Line] = []
    for group, members in enumerate(groups.values()):
        for position, task in enumerate(members):
            line = _Line(len(lines), task, group, position == 0, task.name in critical)
            lines.append(line)
    return lines


def _patterns() -> Html:
    hatches = [
        tag(
            "pattern",
            empty("rect", width=6, height=6, class_=f"hatch-bg {name}"),
            empty("line", x1=0, y1=0, x2=0, y2=6, class_=f"hatch-line {name}"),
            id=f"hatch-{name}",
            width=6,
            height=6,
            patternUnits="userSpaceOnUse",
            patternTransform="rotate(45)",
        )
        for name in ("queued", "backoff")
    ]
    return tag("defs", *hatches)


def _row_background(frame: _Frame, line: _Line) -> Html:
    top = frame.top + line.index * frame.row_height
    kind = "critical" if line.critical else ("even" if line.group % 2 == 0 else "odd")
    band = empty(
        "rect", x=0, y=top, width=frame.width, height=frame.row_height, class_=f"band {kind}"
    )
    stripe = (
        empty("rect", x=0, y=top + 3, width=3, height=frame.row_height - 6, class_="stripe")
        if line.critical
        else None
    )
    rule = (
        empty("line", x1=0, y1=top, x2=frame.width, y2=top, class_="group-rule")
        if line.first_of_group and line.index
        else None
    )
    return join(band, stripe, rule)


def _grid(frame: _Frame) -> Html:
    ticks = axis_ticks(frame.seconds)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else frame.seconds
    lines = []
    for moment in ticks:
        x = frame.x(moment)
        lines.append(empty("line", x1=x, y1=frame.top, x2=x, y2=frame.plot_bottom, class_="grid"))
        label = tick_label(moment, step)
        lines.append(tag("text", label, x=x, y=frame.plot_bottom + 18, class_="axis"))
    baseline = empty(
        "line",
        x1=frame.plot_left,
        y1=frame.plot_bottom,
        x2=frame.plot_right,
        y2=frame.plot_bottom,
        class_="baseline",
    )
    return tag("g", *lines, baseline)


def _column_heads(frame: _Frame) -> Html:
    y = frame.top - 10
    heads = [(12, "agent"), (96, "task"), (frame.plot_right + 12, "ran")]
    return tag("g", *(tag("text", text, x=x, y=y, class_="head") for x, text in heads))


def _sessions(frame: _Frame, timeline: RunTimeline) -> Html:
    """A label over each session, and a dashed break where one was resumed."""
    parts = []
    for index, session in enumerate(timeline.sessions):
        x = frame.x(session.offset)
        if index == 0:
            label = "run started"
        else:
            label = f"resumed, {_duration(timeline.gap_before(index))} later"
            parts.append(
                empty("line", x1=x, y1=frame.top - 6, x2=x, y2=frame.plot_bottom, class_="break")
            )
        near_end = x > frame.plot_right - 150  # right-align it so it stays over the plot
        parts.append(
            tag(
                "text",
                label,
                x=x - 4 if near_end else x + 4,
                y=frame.top - 10,
                class_="session end" if near_end else "session",
            )
        )
    return tag("g", *parts)


def _critical_links(frame: _Frame, path: list[str], lines: list[_Line]) -> Html | None:
    """Dotted elbows from each critical task's last attempt to the next one's."""
    by_name = {line.task.name: line for line in lines}
    chain = [by_name[name] for name in path if name in by_name]
    links = []
    for before, after in itertools.pairwise(chain):
        first, second = _last_run(before.task), _last_run(after.task)
        if first is None or second is None:
            continue
        x1, x2 = frame.x(first.end), frame.x(second.start)
        y1, y2 = frame.middle(before.index), frame.middle(after.index)
        links.append(empty("path", d=f"M{x1:.1f} {y1:.1f} V{y2:.1f} H{x2:.1f}", class_="link"))
    return tag("g", *links) if links else None


def _last_run(task: TaskTimeline) -> Segment | None:
    runs = [segment for segment in task.segments if segment.phase is Phase.RUNNING]
    return runs[-1] if runs else None


def _row(frame: _Frame, line: _Line) -> Html:
    task, middle = line.task, frame.middle(line.index)
    last = _last_run(task) if line.critical else None
    shapes = [_segment(frame, middle, task, segment, segment is last) for segment in task.segments]
    return tag(
        "g",
        tag("title", _row_summary(task, line.critical)),
        _row_label(middle, line),
        *shapes,
        *(_mark(frame, middle, mark) for mark in task.marks),
        _row_result(frame, middle, task),
        class_="row",
    )


def _row_label(middle: float, line: _Line) -> Html:
    agent = tag("text", _clip(line.task.agent, 13), x=12, y=middle + 4, class_="agent")
    name_class = "task critical" if line.critical else "task"
    name = tag("text", _clip(line.task.name, 14), x=96, y=middle + 4, class_=name_class)
    return join(agent, name) if line.first_of_group else name


def _segment(
    frame: _Frame, middle: float, task: TaskTimeline, segment: Segment, critical: bool
) -> Html | None:
    x1, x2 = frame.x(segment.start), frame.x(segment.end)
    if segment.phase is Phase.RUNNING:
        width = max(x2 - x1, 2.0)
        classes = f"run {segment.outcome or ''}" + (" on-path" if critical else "")
        ran = _duration(segment.seconds)
        tip = f"{task.name}: attempt {segment.attempt}, {segment.outcome}, ran {ran}"
        return _bar(x1, middle - 8, width, 16, classes, tip)
    if x2 - x1 < 0.5:
        return None
    if segment.phase is Phase.WAITING:
        tip = f"{task.name}: waited for its inputs {_duration(segment.seconds)}"
        return _bar(x1, middle - 2, x2 - x1, 4, "waiting", tip)
    if segment.phase is Phase.RESTORED:
        return _restored(x1, x2, middle, task)
    phase = "queued" if segment.phase is Phase.QUEUED else "backoff"
    what = "queued for a worker" if phase == "queued" else "backed off before retrying"
    tip = f"{task.name}: {what} {_duration(segment.seconds)}"
    return _bar(x1, middle - 6, x2 - x1, 12, phase, tip)


def _bar(x: float, y: float, width: float, height: float, classes: str, tip: str) -> Html:
    return tag(
        "rect", tag("title", tip), x=x, y=y, width=width, height=height, rx=2, class_=classes
    )


def _restored(x1: float, x2: float, middle: float, task: TaskTimeline) -> Html:
    tip = f"{task.name}: restored from the checkpoint, nothing ran in this session"
    label = (
        tag("text", "restored", x=(x1 + x2) / 2, y=middle + 4, class_="restored-label")
        if x2 - x1 > 64
        else None
    )
    return tag("g", _bar(x1, middle - 8, x2 - x1, 16, "restored", tip), label)


def _mark(frame: _Frame, middle: float, mark: Mark) -> Html:
    x = frame.x(mark.at)
    tip = f"{mark.kind.replace('_', ' ')}" + (f": {mark.reason}" if mark.reason else "")
    if mark.kind == "attempt_failed":
        return tag(
            "g",
            tag("title", tip),
            empty("line", x1=x, y1=middle - 11, x2=x, y2=middle + 11, class_="tick"),
            class_="mark",
        )
    size = 5.0
    diamond = f"M{x:.1f} {middle - size:.1f} l{size} {size} l-{size} {size} l-{size} -{size}z"
    label = _clip(tip, 44)
    fits_right = x + 9 + _LABEL_CHAR_WIDTH * len(label) <= frame.plot_right
    text = tag(  # after the mark, or before it and above the waiting bar that leads to it
        "text",
        label,
        x=x + 9 if fits_right else x - 9,
        y=middle + 4 if fits_right else middle - 4,
        class_="mark-label" if fits_right else "mark-label end",
    )
    return tag("g", tag("title", tip), empty("path", d=diamond, class_=mark.kind), text)


def _row_result(frame: _Frame, middle: float, task: TaskTimeline) -> Html:
    ran = task.seconds_in(Phase.RUNNING)
    outcome = "restored" if task.restored else task.outcome
    seconds = _duration(ran) if task.attempts else "–"
    x = frame.plot_right + 12
    return join(
        tag("text", seconds, x=x, y=middle + 4, class_="result"),
        tag("text", outcome, x=x + 58, y=middle + 4, class_=f"outcome {task.outcome}"),
    )


def _row_summary(task: TaskTimeline, critical: bool) -> str:
    parts = [
        f"{task.name} ({task.agent}): {task.outcome}",
        f"{task.attempts} attempt(s)",
        f"waited {_duration(task.seconds_in(Phase.WAITING))}",
        f"queued {_duration(task.seconds_in(Phase.QUEUED))}",
        f"ran {_duration(task.seconds_in(Phase.RUNNING))}",
    ]
    if task.restored:
        parts.append("restored from the checkpoint")
    if critical:
        parts.append("on the critical path")
    if task.reason:
        parts.append(task.reason)
    return "; ".join(parts)


def _legend() -> Html:
    items = [
        ("waiting", "waiting for inputs"),
        ("queued", "queued for a worker"),
        ("backoff", "retry backoff"),
        ("run succeeded", "succeeded"),
        (f"run {RETRIED}", "attempt failed, retried"),
        ("run failed", "failed"),
        ("run cancelled", "cancelled"),
        (f"run {UNFINISHED}", "no end recorded"),
        ("restored", "restored from checkpoint"),
        ("skipped", "skipped"),
        ("run succeeded on-path", "critical path"),
    ]
    return tag(
        "ul",
        *(tag("li", _swatch(classes), label) for classes, label in items),
        class_="legend",
        aria_label="Legend",
    )


def _swatch(classes: str) -> Html:
    if classes == "skipped":
        shape = empty("path", d="M9 2 l5 5 l-5 5 l-5 -5z", class_="skipped")
    elif classes == "waiting":
        shape = empty("rect", x=1, y=5, width=18, height=4, rx=2, class_=classes)
    else:
        shape = empty("rect", x=1, y=1, width=18, height=12, rx=2, class_=classes)
    return tag("svg", shape, viewBox="0 0 20 14", width=20, height=14, aria_hidden="true")


# --- Tasks, usage, files, review ---------------------------------------------------------


def _tasks_section(run: _Run) -> Html:
    header = ("task", "agent", "state", "tries", "waited", "queued", "ran", "tokens in / out")
    rows = []
    for name, record in run.record.tasks.items():
        timeline = run.timeline.tasks[name]
        critical = name in run.record.critical_path
        rows.append(
            [
                tag("span", name, class_="critical-name" if critical else None),
                record.agent,
                _pill(record.state, record.state),
                _count(record.attempts),
                _duration(timeline.seconds_in(Phase.WAITING)),
                _duration(timeline.seconds_in(Phase.QUEUED)),
                _duration(
                    timeline.seconds_in(Phase.RUNNING) if timeline.attempts else record.seconds
                ),
                f"{record.prompt_tokens:,} / {record.completion_tokens:,}",
                tag("span", _task_note(record.reason, record.files), class_="note"),
            ]
        )
    table = _table([*header, "files or reason"], rows, numeric=range(3, 8))
    return tag("section", tag("h2", "Tasks"), table, id="tasks")


def _task_note(reason: str | None, files: list[str]) -> str:
    return ", ".join(files) or reason or ""


def _usage_section(run: _Run) -> Html:
    """Calls, cache hits, failures, tokens, speed and cost per agent and per model."""
    by_agent, by_model = usage_by(run.events, "agent"), usage_by(run.events, "model")
    if not by_model:
        note = tag("p", "No model calls recorded.", class_="muted")
        return tag("section", tag("h2", "Model usage"), note, id="usage")
    total = UsageTotals()
    for event in run.of_type(EventType.LLM_CALL):
        total.add_call(event)
    total.fallbacks = len(run.of_type(EventType.MODEL_FALLBACK))
    return tag(
        "section",
        tag("h2", "Model usage"),
        tag("h3", "By agent"),
        _usage_table("agent", by_agent, total),
        tag("h3", "By model"),
        _usage_table("model", by_model, total),
        id="usage",
    )


def _usage_table(key: str, totals: Mapping[str, UsageTotals], total: UsageTotals) -> Html:
    header = [key, "calls", "cached", "failed", "tokens in", "tokens out", "tok/s", "cost"]
    fallbacks = total.fallbacks > 0
    if fallbacks:
        header.append("fallbacks")
    rows: list[list[object]] = [
        [name, *_usage_cells(row, fallbacks)] for name, row in totals.items()
    ]
    rows.append([tag("strong", "total"), *_usage_cells(total, fallbacks)])
    return _table(header, rows, numeric=range(1, len(header)))


def _usage_cells(row: UsageTotals, fallbacks: bool) -> list[object]:
    rate = row.tokens_per_second
    cells: list[object] = [
        f"{row.calls:,}",
        f"{row.cached:,}",
        f"{row.failed:,}",
        f"{row.prompt_tokens:,}",
        f"{row.completion_tokens:,}",
        "–" if rate is None else f"{rate:.1f}",
        f"{row.cost:.4f}",
    ]
    return [*cells, f"{row.fallbacks:,}"] if fallbacks else cells


@dataclass
class _File:
    """A generated file: its size and the task that wrote it last, and what happened."""

    size: int | None = None
    task: str = ""
    note: str = ""


def _files_section(run: _Run) -> Html:
    written = _written_files(run)
    parts: list[Html | None] = [tag("h2", "Files")]
    if written:
        rows = [
            [tag("code", path), _bytes(file.size), file.task, file.note]
            for path, file in written.items()
        ]
        parts.append(_table(["path", "bytes", "task", "note"], rows, numeric=range(1, 2)))
    else:
        parts.append(tag("p", "No files written.", class_="muted"))
    parts.append(_refused_files(run))
    parts.append(_secrets(run))
    return tag("section", *parts, id="files")


def _written_files(run: _Run) -> dict[str, _File]:
    """The run's files (run.json), with what the events say about each, sorted by path."""
    files = {path: _File() for path in run.record.files}
    for event in run.of_type(EventType.FILE_WRITTEN):
        size = event.get("bytes")
        files[str(event.get("path", "?"))] = _File(
            size if isinstance(size, int) else None,
            str(event.get("task") or ""),
            "replaced an earlier version" if event.get("replaced") else "",
        )
    for event in run.of_type(EventType.FILE_CONFLICT):
        file = files.setdefault(str(event.get("path", "?")), _File())
        file.note = f"{event.get('winner')} won over {event.get('loser')}"
    return dict(sorted(files.items()))


def _refused_files(run: _Run) -> Html | None:
    rows: dict[str, list[object]] = {}
    for event in run.of_type(EventType.FILE_REFUSED):
        path = str(event.get("path", "?"))
        rows[path] = [
            tag("code", path),
            str(event.get("task") or "–"),
            str(event.get("reason") or ""),
        ]
    for path in run.record.refused_files:
        rows.setdefault(path, [tag("code", path), "–", ""])
    if not rows:
        return None
    return join(tag("h3", "Refused files"), _table(["path", "task", "reason"], list(rows.values())))


def _secrets(run: _Run) -> Html | None:
    rows = [
        [
            tag("code", str(event.get("path", "?"))),
            str(event.get("task") or "–"),
            str(event.get("action") or ""),
            _findings(event.get("findings")),
        ]
        for event in run.of_type(EventType.SECRET_FOUND)
    ]
    if not rows:
        return None
    table = _table(["path", "task", "action", "findings"], rows)
    return join(tag("h3", "Secrets found"), table)


def _findings(findings: object) -> str:
    if not isinstance(findings, list):
        return ""
    described = [
        f"{item.get('kind', '?')} on line {item.get('line', '?')}"
        for item in findings
        if isinstance(item, dict)
    ]
    return "; ".join(described)


def _checks_section(run: _Run) -> Html | None:
    """Every round of sandboxed checks: counts, failures, repairs, and what contained it."""
    qa = run.record.qa
    if qa is None or not qa.rounds:
        return None
    rows = [
        [
            entry.number,
            entry.kind,
            _pill(entry.checks.status, _CHECK_STATES.get(entry.checks.status, "none")),
            entry.checks.passed,
            entry.checks.failed,
            entry.checks.errors,
            len(entry.checks.compile_errors),
            ", ".join(entry.checks.limits_hit) or "-",
            _duration(entry.checks.seconds),
            _repair_note(entry.repair),
        ]
        for entry in qa.rounds
    ]
    header = ["Round", "Kind", "Status", "Passed", "Failed", "Errors", "Don't compile"]
    header += ["Limits hit", "Time", "Repair"]
    parts: list[Html | None] = [
        tag("h2", "Sandboxed checks"),
        tag(
            "p",
            f"At most {qa.repair_rounds_allowed} repair round(s) after a failure.",
            class_="muted",
        ),
        _table(header, rows, numeric=(0, 3, 4, 5, 6)),
    ]
    for entry in qa.rounds:
        problems = entry.checks.compile_errors + entry.checks.failures
        if problems:
            parts.append(tag("p", f"Round {entry.number}:"))
            parts.append(tag("ul", *(tag("li", tag("code", line)) for line in problems)))
    last = qa.rounds[-1].checks
    if last.confinement is not None:
        confinement = last.confinement
        removed = ", ".join(confinement.environment_removed) or "none found"
        notes = [
            f"Network: {confinement.network}.",
            f"Files: {confinement.filesystem}.",
            f"Processes: {confinement.processes}.",
            f"Secret-looking variables withheld: {removed}.",
        ]
        parts.append(tag("ul", *(tag("li", note) for note in notes), class_="muted"))
    if last.output_tail.strip():
        excerpt = last.output_tail.strip()[-EXCERPT_CHARS:]
        parts.append(tag("p", "Output of the last round (its end):", class_="muted"))
        parts.append(tag("pre", excerpt, class_="answer"))
    return tag("section", *parts, id="checks")


_CHECK_STATES = {"passed": "succeeded", "failed": "failed", "no_tests": "skipped"}


def _repair_note(repair: RepairRecord | None) -> str:
    if repair is None:
        return "-"
    if repair.error:
        return f"{repair.agent}: {repair.error}"
    return f"{repair.agent} wrote {', '.join(repair.files)}"


def _review_section(run: _Run) -> Html:
    verdict = run.record.verdict
    parts: list[Html | None] = [tag("h2", "Review"), tag("p", "Verdict: ", _verdict_pill(verdict))]
    if run.record.requested_changes:
        changes = (tag("li", change) for change in run.record.requested_changes)
        parts.append(tag("p", "Changes requested:"))
        parts.append(tag("ol", *changes))
    if run.review is None:
        parts.append(tag("p", "The critic left no answer in this run.", class_="muted"))
    else:
        task, text = run.review
        excerpt, cut = _excerpt(text)
        source = f"tasks/{task}.md" + (", first part" if cut else "")
        parts.append(tag("p", "From ", tag("code", source), ":", class_="muted"))
        parts.append(tag("pre", excerpt, class_="answer"))
    return tag("section", *parts, id="review")


def _excerpt(text: str) -> tuple[str, bool]:
    lines = text.splitlines()
    excerpt = "\n".join(lines[:EXCERPT_LINES])[:EXCERPT_CHARS]
    return excerpt, excerpt != "\n".join(lines)


def _footer(run: _Run) -> Html:
    made = datetime.now(UTC)
    return tag(
        "footer",
        f"Made by orchestrate {__version__} on {_utc(made)} from run.json and events.jsonl "
        f"of run {run.record.id}.",
    )


# --- Small pieces -----------------------------------------------------------------------


def _pill(text: str, state: str) -> Html:
    return tag("span", text.replace("_", " "), class_=f"pill {state}")


def _verdict_pill(verdict: str | None) -> Html:
    labels = {"approve": "approved", "request_changes": "changes requested"}
    if verdict is None:
        return tag("span", "no verdict", class_="pill none")
    return tag("span", labels.get(verdict, verdict), class_=f"pill verdict-{verdict}")


def _table(
    header: Sequence[str], rows: Sequence[Sequence[object]], *, numeric: Iterable[int] = ()
) -> Html:
    right = set(numeric)
    head = tag(
        "tr",
        *(tag("th", text, class_="num" if i in right else None) for i, text in enumerate(header)),
    )
    body = [
        tag(
            "tr",
            *(tag("td", cell, class_="num" if i in right else None) for i, cell in enumerate(row)),
        )
        for row in rows
    ]
    return tag("div", tag("table", tag("thead", head), tag("tbody", *body)), class_="table-wrap")


def _between(parts: list[Html], separator: str) -> list[Html]:
    spaced: list[Html] = []
    for index, part in enumerate(parts):
        if index:
            spaced.append(escape(separator))
        spaced.append(part)
    return spaced


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} m {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} m"


def _count(value: int) -> str:
    return str(value) if value else "–"


def _bytes(size: int | None) -> str:
    if size is None:
        return "–"
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / 1024 / 1024:.1f} MiB"


def _total_bytes(run: _Run) -> int | None:
    sizes = [file.size for file in _written_files(run).values() if file.size is not None]
    return sum(sizes) if sizes else None


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


_CSS = """
:root {
  color-scheme: light dark;
  --bg: #ffffff; --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --panel: #f6f8fa;
  --band: #f6f8fa; --accent: #0969da; --accent-band: #eef6ff;
  --ok: #1a7f37; --fail: #cf222e; --retry: #bf8700; --cancel: #6e7781; --skip: #8250df;
  --open: #1b7c83; --wait: #afb8c1; --queue: #8c959f; --backoff: #d4a72c;
  --ok-soft: #dafbe1; --fail-soft: #ffebe9; --retry-soft: #fff8c5; --skip-soft: #fbefff;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #0d1117; --fg: #e6edf3; --muted: #9198a1; --line: #3d444d; --panel: #151b23;
    --band: #131920; --accent: #4493f8; --accent-band: #111c2b;
    --ok: #3fb950; --fail: #f85149; --retry: #d29922; --cancel: #8b949e; --skip: #ab7df8;
    --open: #39c5cf; --wait: #4d5561; --queue: #7d8590; --backoff: #bb8009;
    --ok-soft: #12261e; --fail-soft: #2d1214; --retry-soft: #272115; --skip-soft: #231833;
  }
}
* { box-sizing: border-box; }
body {
  margin: 0; background: var(--bg); color: var(--fg); font-size: 14px; line-height: 1.5;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "Liberation Sans",
    "DejaVu Sans", Helvetica, Arial, sans-serif;
}
main { max-width: 1120px; margin: 0 auto; padding: 32px 28px 48px; }
code, pre {
  font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace;
}
code { font-size: 0.92em; }
h1 { font-size: 28px; line-height: 1.25; margin: 2px 0 10px; overflow-wrap: anywhere; }
h2 {
  font-size: 19px; margin: 36px 0 10px; padding-bottom: 6px;
  border-bottom: 1px solid var(--line);
}
h3 { font-size: 15px; margin: 20px 0 8px; }
.eyebrow {
  margin: 0; color: var(--muted); font-size: 12px; letter-spacing: .08em;
  text-transform: uppercase;
}
.facts { color: var(--muted); margin: 10px 0 0; }
.facts code { color: var(--fg); }
.muted { color: var(--muted); }
.pills { display: flex; gap: 8px; flex-wrap: wrap; }
.pill {
  display: inline-block; padding: 1px 10px; border-radius: 999px; font-size: 12px;
  font-weight: 600; border: 1px solid var(--line); background: var(--panel);
  color: var(--muted); white-space: nowrap;
}
.pill.succeeded, .pill.verdict-approve {
  color: var(--ok); background: var(--ok-soft); border-color: transparent;
}
.pill.failed, .pill.interrupted {
  color: var(--fail); background: var(--fail-soft); border-color: transparent;
}
.pill.verdict-request_changes, .pill.running, .pill.retrying {
  color: var(--retry); background: var(--retry-soft); border-color: transparent;
}
.pill.skipped { color: var(--skip); background: var(--skip-soft); border-color: transparent; }
.cards {
  display: grid; grid-template-columns: repeat(auto-fit, minmax(140px, 1fr)); gap: 12px;
  margin-top: 24px;
}
.card {
  border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px;
  background: var(--panel);
}
.card .label { font-size: 12px; color: var(--muted); }
.card .value {
  font-size: 20px; font-weight: 600; font-variant-numeric: tabular-nums; margin: 2px 0;
}
.card .note { font-size: 12px; color: var(--muted); }
.callout {
  margin-top: 20px; padding: 12px 16px; border-radius: 8px; border: 1px solid var(--fail);
  border-left-width: 4px; background: var(--fail-soft);
}
.callout strong { color: var(--fail); }
.callout p { margin: 4px 0 0; overflow-wrap: anywhere; }
.chart {
  border: 1px solid var(--line); border-radius: 8px; padding: 6px 4px 0; overflow-x: auto;
}
svg.gantt { display: block; width: 100%; min-width: 720px; height: auto; font-size: 12px; }
svg text { fill: var(--fg); }
.band.even { fill: var(--bg); }
.band.odd { fill: var(--band); }
.band.critical { fill: var(--accent-band); }
.stripe { fill: var(--accent); }
.group-rule { stroke: var(--line); stroke-width: 1; }
.grid { stroke: var(--line); stroke-width: 1; stroke-dasharray: 2 3; }
.baseline { stroke: var(--muted); stroke-width: 1; }
text.axis {
  fill: var(--muted); text-anchor: middle; font-size: 11px; font-variant-numeric: tabular-nums;
}
text.head {
  fill: var(--muted); font-size: 10.5px; font-weight: 600; letter-spacing: .06em;
  text-transform: uppercase;
}
text.session { fill: var(--muted); font-size: 11px; font-style: italic; }
text.session.end { text-anchor: end; }
.break { stroke: var(--muted); stroke-width: 1.5; stroke-dasharray: 6 4; }
text.agent { fill: var(--muted); }
text.task { font-weight: 600; }
text.task.critical { fill: var(--accent); }
text.result { font-variant-numeric: tabular-nums; }
text.outcome { font-size: 11px; font-weight: 600; fill: var(--muted); }
text.outcome.succeeded { fill: var(--ok); } text.outcome.failed { fill: var(--fail); }
text.outcome.skipped { fill: var(--skip); } text.outcome.cancelled { fill: var(--cancel); }
text.outcome.unfinished { fill: var(--open); }
rect.waiting { fill: var(--wait); }
rect.queued { fill: url(#hatch-queued); stroke: var(--queue); stroke-width: .75; }
rect.backoff { fill: url(#hatch-backoff); stroke: var(--backoff); stroke-width: .75; }
.hatch-bg { fill: var(--bg); } .hatch-bg.backoff { fill: var(--retry-soft); }
.hatch-line { stroke-width: 2.5; }
.hatch-line.queued { stroke: var(--queue); }
.hatch-line.backoff { stroke: var(--backoff); }
rect.run { fill: var(--cancel); }
rect.run.succeeded { fill: var(--ok); } rect.run.failed { fill: var(--fail); }
rect.run.retried { fill: var(--retry); } rect.run.cancelled { fill: var(--cancel); }
rect.run.unfinished { fill: var(--open); }
rect.run.on-path { stroke: var(--accent); stroke-width: 2.5; paint-order: stroke; }
rect.restored { fill: none; stroke: var(--muted); stroke-width: 1; stroke-dasharray: 4 3; }
text.restored-label {
  fill: var(--muted); font-size: 11px; text-anchor: middle; font-style: italic;
}
.link { fill: none; stroke: var(--accent); stroke-width: 1.5; stroke-dasharray: 2 3; }
.tick { stroke: var(--fail); stroke-width: 2; stroke-linecap: round; }
path.skipped { fill: var(--skip); }
path.cancelled { fill: var(--cancel); }
path.failed { fill: var(--fail); }
text.mark-label { fill: var(--muted); font-size: 11px; }
text.mark-label.end { text-anchor: end; }
.legend {
  list-style: none; display: flex; flex-wrap: wrap; gap: 6px 18px; padding: 0;
  margin: 12px 2px 0; font-size: 12px; color: var(--muted);
}
.legend li { display: flex; align-items: center; gap: 6px; }
.legend svg { overflow: visible; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td {
  text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line);
  vertical-align: top;
}
th { font-size: 12px; color: var(--muted); font-weight: 600; background: var(--panel); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:last-child td { border-bottom: none; }
td .note { display: inline-block; min-width: 14em; color: var(--muted); overflow-wrap: anywhere; }
@media (max-width: 640px) { main { padding: 20px 14px 32px; } h1 { font-size: 23px; } }
.critical-name { color: var(--accent); font-weight: 600; }
pre.answer {
  background: var(--panel); border: 1px solid var(--line); border-radius: 8px;
  padding: 14px 16px; margin: 0; font-size: 12.5px; line-height: 1.5;
  white-space: pre-wrap; overflow-wrap: anywhere;
}
footer {
  margin-top: 40px; padding-top: 12px; border-top: 1px solid var(--line); color: var(--muted);
  font-size: 12px;
}
@media print { .chart { overflow: visible; } svg.gantt { min-width: 0; } }
"""
