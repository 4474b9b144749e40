"""A run's timeline: when each task waited, queued, ran and waited out a retry.

Everything comes from the ``task_state`` events of ``events.jsonl`` and their ``ts``.
A task waits from the start of its session until its inputs are done (``ready``),
queues until a worker takes it (``running``), and runs until it ends; a failed attempt
that will be retried (``retrying``) waits out its backoff, becomes ``ready`` again and
queues and runs once more.

A run has one session per ``run_started`` or ``run_resumed`` event. Time between
sessions (a crash, a day off) is not part of the work, so the sessions are laid end to
end on one axis: a moment's position is its session's ``offset`` plus the seconds
since that session began. A task restored from the checkpoint when a session began has
no new timing there; it gets a ``restored`` segment spanning that session.

The module is pure: it reads events and returns plain data, for the HTML report and
for ``orchestrate show --timeline`` alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from orchestrate.store.events import Event, EventType


class Phase(StrEnum):
    WAITING = "waiting"  # for its inputs
    QUEUED = "queued"  # ready, for a free worker
    RUNNING = "running"  # one attempt
    BACKOFF = "backoff"  # between a failed attempt and the retry
    RESTORED = "restored"  # done in an earlier session, restored from the checkpoint


# The outcome of a running segment whose attempt failed and was tried again.
RETRIED = "retried"
# The outcome of a segment the log never closed: the process died, or still runs.
UNFINISHED = "unfinished"
# The outcome of a task that never ran, never skipped, never failed.
PENDING = "pending"

_TERMINAL = frozenset({"succeeded", "failed", "skipped", "cancelled"})


@dataclass(frozen=True)
class Segment:
    """One stretch of a task's time, in seconds on the run's axis."""

    phase: Phase
    start: float
    end: float
    outcome: str | None = None  # running segments: succeeded, failed, retried, ...
    attempt: int | None = None  # running segments: 1 for the first attempt

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Mark:
    """A moment in a task's life worth a tick: an attempt failed, or it ended without running.

    ``kind`` is ``attempt_failed``, or the state (``skipped``, ``cancelled``, ``failed``)
    of a task that ended while it waited, queued or backed off.
    """

    at: float
    kind: str
    reason: str | None = None


@dataclass
class TaskTimeline:
    """What one task did, segment by segment, across every session."""

    name: str
    agent: str
    segments: list[Segment] = field(default_factory=list)
    outcome: str = PENDING  # its last state: succeeded, failed, skipped, cancelled, ...
    marks: list[Mark] = field(default_factory=list)
    restored: bool = False  # its result came from the checkpoint in the last session
    reason: str | None = None  # why it failed, was skipped or cancelled

    @property
    def attempts(self) -> int:
        return sum(segment.phase is Phase.RUNNING for segment in self.segments)

    def seconds_in(self, phase: Phase) -> float:
        """Total seconds spent in ``phase``, over all segments."""
        return sum(segment.seconds for segment in self.segments if segment.phase is phase)


@dataclass(frozen=True)
class Session:
    """One process's stretch of the run: from ``run_started``/``run_resumed`` to its last event."""

    kind: str  # "started" or "resumed"
    began: datetime
    ended: datetime
    offset: float  # where it begins on the run's axis

    @property
    def seconds(self) -> float:
        return max(0.0, (self.ended - self.began).total_seconds())

    @property
    def end(self) -> float:
        return self.offset + self.seconds


@dataclass
class RunTimeline:
    """Every task's timeline (in the crew's order) and the sessions they lie in."""

    sessions: list[Session]
    tasks: dict[str, TaskTimeline]

    @property
    def seconds(self) -> float:
        """The run's length on the axis: the time its sessions took, gaps left out."""
        return self.sessions[-1].end if self.sessions else 0.0

    def gap_before(self, index: int) -> float:
        """Wall-clock seconds between session ``index`` and the one before it."""
        if index == 0:
            return 0.0
        earlier, later = self.sessions[index - 1], self.sessions[index]
        return max(0.0, (later.began - earlier.ended).total_seconds())


def build_timeline(events: Iterable[Event], agents: Mapping[str, str]) -> RunTimeline:
    """The timeline of a run from its events; ``agents`` maps each task to its agent.

    Tasks named in ``agents`` come first, in that order, even when no event names them;
    tasks that only the log names follow. Events without a readable ``ts`` are ignored.
    """
    builder = _Builder(agents)
    for event in events:
        moment = _moment(event)
        if moment is not None:
            builder.feed(event, moment)
    return builder.finish()


@dataclass
class _OpenTask:
    """The phase a task is in right now, in the current session."""

    phase: Phase
    since: float
    attempt: int | None = None


class _Builder:
    """Folds events, in order, into sessions and segments."""

    def __init__(self, agents: Mapping[str, str]) -> None:
        self.tasks = {name: TaskTimeline(name, agent) for name, agent in agents.items()}
        self.sessions: list[Session] = []
        self.open: dict[str, _OpenTask] = {}
        self.restored: set[str] = set()
        self.began: datetime | None = None
        self.last: datetime | None = None
        self.kind = "started"

    def feed(self, event: Event, moment: datetime) -> None:
        kind = event.get("type")
        if kind in (EventType.RUN_STARTED, EventType.RUN_RESUMED):
            self.start_session(event, moment)
            return
        if self.began is None:  # a log that lost its first line: begin where it begins
            self.start_session({}, moment)
        self.last = max(moment, self.last or moment)
        if kind == EventType.TASK_STATE:
            self.change_state(event, self.at(moment))
        elif kind == EventType.ATTEMPT_FAILED and _name(event, "task"):
            mark = Mark(self.at(moment), "attempt_failed", _reason(event))
            self.task(event).marks.append(mark)

    def start_session(self, event: Event, moment: datetime) -> None:
        self.close_session()
        self.began = self.last = moment
        self.kind = "resumed" if event.get("type") == EventType.RUN_RESUMED else "started"
        finished = event.get("finished")
        self.restored = {str(name) for name in finished} if isinstance(finished, list) else set()
        start = self.at(moment)
        for name in self.restored:
            self.task({"task": name})
        for name, task in self.tasks.items():
            task.restored = name in self.restored
            if task.restored:  # only succeeded tasks are checkpointed
                task.outcome = "succeeded"
            else:  # a resume puts every unfinished task back to pending
                task.outcome, task.reason = PENDING, None
                self.open[name] = _OpenTask(Phase.WAITING, start)

    def change_state(self, event: Event, now: float) -> None:
        name = _name(event, "task")
        if not name:
            return
        task = self.task(event)
        if name in self.restored:
            return  # its "succeeded (restored)" event carries no new timing
        state = str(event.get("state"))
        current = self.open.pop(name, None)
        if state == "pending":
            self.open[name] = current or _OpenTask(Phase.WAITING, now)
            return
        outcome = RETRIED if state == "retrying" else state
        if current is not None:
            task.segments.append(_close(current, now, outcome))
        if state in _TERMINAL and (current is None or current.phase is not Phase.RUNNING):
            task.marks.append(Mark(now, state, _reason(event)))
        if state in _TERMINAL:
            task.outcome, task.reason, task.restored = state, _reason(event), False
            return
        self.open[name] = self.next_phase(task, state, now)

    def next_phase(self, task: TaskTimeline, state: str, now: float) -> _OpenTask:
        if state == "ready":
            return _OpenTask(Phase.QUEUED, now)
        if state == "running":
            task.outcome = "running"
            return _OpenTask(Phase.RUNNING, now, attempt=task.attempts + 1)
        if state == "retrying":
            task.outcome = "retrying"
            return _OpenTask(Phase.BACKOFF, now)
        return _OpenTask(Phase.WAITING, now)  # a state this version does not know

    def close_session(self) -> None:
        if self.began is None or self.last is None:
            return
        offset = self.sessions[-1].end if self.sessions else 0.0
        session = Session(self.kind, self.began, self.last, offset)
        self.sessions.append(session)
        for name, current in self.open.items():
            self.task({"task": name}).segments.append(_close(current, session.end, UNFINISHED))
        for name in self.restored:
            self.task({"task": name}).segments.append(
                Segment(Phase.RESTORED, session.offset, session.end)
            )
        self.open, self.began, self.last = {}, None, None

    def finish(self) -> RunTimeline:
        self.close_session()
        for task in self.tasks.values():
            if task.outcome in ("running", "retrying"):
                task.outcome = UNFINISHED
        return RunTimeline(self.sessions, self.tasks)

    def task(self, event: Event) -> TaskTimeline:
        name = _name(event, "task")
        if name not in self.tasks:
            self.tasks[name] = TaskTimeline(name, _name(event, "agent") or "?")
        return self.tasks[name]

    def at(self, moment: datetime) -> float:
        """``moment`` on the run's axis: the session's offset plus the time since it began."""
        offset = self.sessions[-1].end if self.sessions else 0.0
        began = self.began or moment
        return offset + max(0.0, (moment - began).total_seconds())


def axis_ticks(seconds: float, wanted: int = 8) -> list[float]:
    """About ``wanted`` round positions from 0 to ``seconds`` for an axis: steps of 1, 2,
    2.5 or 5 times a power of ten, or of whole minutes for long runs."""
    if seconds <= 0:
        return [0.0]
    raw = seconds / wanted
    if raw >= 30:
        steps = [30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0]
        step = next((s for s in steps if s >= raw), 3600.0 * math.ceil(raw / 3600))
    else:
        power = 10.0 ** math.floor(math.log10(raw))
        step = next(m * power for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * power >= raw)
    return [index * step for index in range(int(seconds / step + 1e-9) + 1)]


def tick_label(moment: float, step: float) -> str:
    """``moment`` as short as the ``step`` between ticks allows: ``0.5s``, ``12s``, ``2m30s``."""
    if moment == 0:
        return "0"
    if step >= 60:
        minutes, seconds = divmod(round(moment), 60)
        hours, minutes = divmod(minutes, 60)
        parts = [(hours, "h"), (minutes, "m"), (seconds, "s")]
        return "".join(f"{value}{unit}" for value, unit in parts if value)
    exponent = math.floor(math.log10(step)) if step > 0 else 0
    quarter = math.isclose(step / 10.0**exponent, 2.5)  # 0.25, 2.5: one digit more
    decimals = max(0, -exponent + quarter)
    return f"{moment:.{decimals}f}s"


def _close(current: _OpenTask, now: float, outcome: str) -> Segment:
    """The segment of ``current`` ending ``now``; only a running one keeps the outcome."""
    end = max(now, current.since)
    if current.phase is Phase.RUNNING:
        return Segment(Phase.RUNNING, current.since, end, outcome, current.attempt)
    return Segment(current.phase, current.since, end)


def _moment(event: Event) -> datetime | None:
    value = event.get("ts")
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _name(event: Event, key: str) -> str:
    value = event.get(key)
    return str(value) if value else ""


def _reason(event: Event) -> str | None:
    reason = event.get("reason")
    return str(reason) if reason else None
