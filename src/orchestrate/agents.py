"""CrewAI glue: run one crew task as a CrewAI Agent + Task with its inputs as context.

crewai is imported here, lazily, with its tracing and telemetry turned off first: with
them on, a fresh run stalls for seconds between tasks and at exit. Each task gets its
own Agent, because one CrewAI agent cannot run two tasks at once.
"""

from __future__ import annotations

import logging
import os
from functools import cache
from typing import Any

from orchestrate.crew.config import AgentConfig, TaskConfig

FILE_BLOCK_INSTRUCTIONS = """\
Write every file you produce as a FILE line with its relative path, followed by one
fenced code block holding the whole file. For example:

FILE: src/app.py
```python
print("hello")
```

Use relative paths inside the project only."""


@cache
def load_crewai() -> Any:
    """Import crewai once, quietly: no tracing prompt, no telemetry, no console panels."""
    os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")
    os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("CREWAI_DISABLE_TRACKING", "true")
    import crewai
    from crewai.events.event_listener import EventListener

    # Our own live view reports progress; CrewAI's panels would tear through it.
    EventListener().formatter.verbose = False
    # A failed model call is an event of ours already; CrewAI's flow runtime would also
    # log it at ERROR across the live table.
    logging.getLogger("crewai.flow.runtime").setLevel(logging.CRITICAL)
    return crewai


def task_description(task: TaskConfig, spec_text: str) -> str:
    """The task's prompt as its agent receives it: the spec, then how to write files."""
    return f"{task.prompt_for(spec_text)}\n\n{FILE_BLOCK_INSTRUCTIONS}"


def run_crew_task(
    task: TaskConfig,
    agent: AgentConfig,
    *,
    spec_text: str,
    context: str,
    llm: Any,
    tools: list[Any] | None = None,
) -> str:
    """Run one task to completion and return the agent's whole answer."""
    crewai = load_crewai()
    crew_agent = crewai.Agent(
        role=agent.role,
        goal=agent.goal,
        backstory=agent.backstory,
        llm=llm,
        tools=tools or [],
        allow_delegation=False,
        max_iter=1,
        max_retry_limit=0,  # retries belong to the scheduler, not to CrewAI
        verbose=False,
    )
    crew_task = crewai.Task(
        description=task_description(task, spec_text),
        expected_output=task.expected_output,
        agent=crew_agent,
    )
    output = crew_task.execute_sync(agent=crew_agent, context=context or None)
    return str(output.raw or "")
