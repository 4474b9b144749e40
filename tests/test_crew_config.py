"""Tests for orchestrate.crew.config: the crew file."""

from __future__ import annotations

import pytest

from conftest import BUNDLED_CREW_CONTEXTS
from orchestrate.bundled import default_crew_file
from orchestrate.crew.config import TaskConfig, load_crew
from orchestrate.errors import CrewError

AGENTS = """\
agents:
  dev:
    role: Developer
    goal: Write code.
    backstory: Writes code.
"""

TASK = """\
  {name}:
    agent: {agent}
    description: Do the thing.
    expected_output: A thing.
"""


def write_crew(tmp_path, text):
    path = tmp_path / "crew.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def crew_with(tmp_path, *tasks, agents=AGENTS):
    return write_crew(tmp_path, agents + "tasks:\n" + "".join(tasks))


def task(name="build", agent="dev", extra=""):
    return TASK.format(name=name, agent=agent) + extra


def test_bundled_crew_agents():
    crew, _, _ = load_crew()
    assert list(crew.agents) == ["architect", "fullstack", "devops", "qa", "docs", "critic"]
    assert crew.agents["architect"].role == "Software Architect"


def test_bundled_crew_contexts():
    crew, graph, source = load_crew()
    assert source == default_crew_file()
    contexts = {name: task.context for name, task in crew.tasks.items()}
    assert contexts == BUNDLED_CREW_CONTEXTS
    assert set(graph.tasks) == {*contexts, "checks"}  # the QA stage's node
    assert graph.dependencies("checks") == ("test",)
    assert graph.dependencies("review") == ("implement", "test", "deploy", "document", "checks")


def test_bundled_crew_agents_and_output_files():
    crew, _, _ = load_crew(default_crew_file())
    assert {name: t.agent for name, t in crew.tasks.items()} == {
        "design": "architect",
        "implement": "fullstack",
        "deploy": "devops",
        "test": "qa",
        "document": "docs",
        "review": "critic",
    }
    assert crew.tasks["design"].output_file == "DESIGN.md"
    assert crew.tasks["review"].output_file == "REVIEW.md"
    assert crew.tasks["implement"].output_file is None


def test_valid_minimal_crew_loads(tmp_path):
    path = crew_with(tmp_path, task("plan"), task("build", extra="    context: [plan]\n"))
    crew, graph, source = load_crew(path)
    assert source == path
    assert graph.tasks == ("plan", "build")
    assert crew.tasks["build"].context == ["plan"]


def test_output_file_is_normalised(tmp_path):
    path = crew_with(tmp_path, task(extra="    output_file: ./docs//OUT.md\n"))
    crew, _, _ = load_crew(path)
    assert crew.tasks["build"].output_file == "docs/OUT.md"


def test_unknown_key_in_task_is_named(tmp_path):
    path = crew_with(tmp_path, task(extra="    colour: red\n"))
    with pytest.raises(CrewError, match=r"tasks\.build\.colour: unknown key"):
        load_crew(path)


def test_missing_required_key_is_named(tmp_path):
    text = AGENTS + "tasks:\n  build:\n    agent: dev\n    expected_output: x\n"
    with pytest.raises(CrewError, match=r"tasks\.build\.description: required key is missing"):
        load_crew(write_crew(tmp_path, text))


def test_unknown_agent_is_named(tmp_path):
    path = crew_with(tmp_path, task(agent="ghost"))
    with pytest.raises(
        CrewError, match=r"task 'build' is assigned to agent 'ghost'.*\(agents: dev\)"
    ):
        load_crew(path)


def test_missing_context_task_is_named(tmp_path):
    path = crew_with(tmp_path, task(extra="    context: [plan]\n"))
    with pytest.raises(CrewError, match=r"task 'build' has context 'plan', which is not a task"):
        load_crew(path)


def test_cycle_is_named(tmp_path):
    path = crew_with(
        tmp_path,
        task("plan", extra="    context: [build]\n"),
        task("build", extra="    context: [plan]\n"),
    )
    with pytest.raises(CrewError, match=r"cycle: (plan -> build -> plan|build -> plan -> build)"):
        load_crew(path)


def test_error_message_starts_with_the_file(tmp_path):
    path = crew_with(tmp_path, task(agent="ghost"))
    with pytest.raises(CrewError) as info:
        load_crew(path)
    assert str(info.value).startswith(f"{path}: ")


def test_bad_yaml_names_the_line(tmp_path):
    path = write_crew(tmp_path, "agents:\n  dev: [\n")
    with pytest.raises(CrewError, match=r"is not valid YAML at line \d+"):
        load_crew(path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(CrewError, match=r"crew file not found: .*nope\.yaml"):
        load_crew(path)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", ""])
def test_non_mapping_top_level(tmp_path, text):
    with pytest.raises(CrewError, match=r"top level: Input should be a valid dictionary"):
        load_crew(write_crew(tmp_path, text))


def test_no_tasks(tmp_path):
    with pytest.raises(CrewError, match=r"the crew has no tasks"):
        load_crew(write_crew(tmp_path, AGENTS + "tasks: {}\n"))


@pytest.mark.parametrize("name", ["Build", "1build", "build-it", "b" * 41])
def test_bad_task_name_is_named(tmp_path, name):
    path = crew_with(tmp_path, task(name=name))
    with pytest.raises(CrewError, match=rf"task name '{name}' must be lowercase"):
        load_crew(path)


def test_bad_agent_name_is_named(tmp_path):
    agents = AGENTS.replace("  dev:", "  Dev:")
    path = crew_with(tmp_path, task(agent="Dev"), agents=agents)
    with pytest.raises(CrewError, match=r"agent name 'Dev' must be lowercase"):
        load_crew(path)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("../escape.md", r"'\.\.' would leave the project folder"),
        ("docs/../../escape.md", r"'\.\.' would leave the project folder"),
        ("/etc/escape.md", r"absolute paths are not allowed"),
    ],
)
def test_unsafe_output_file_is_refused(tmp_path, value, reason):
    path = crew_with(tmp_path, task(extra=f"    output_file: {value}\n"))
    with pytest.raises(CrewError, match=rf"tasks\.build\.output_file: .*refused: {reason}"):
        load_crew(path)


def test_blank_description_is_refused(tmp_path):
    text = AGENTS + "tasks:\n  build:\n    agent: dev\n    description: '  '\n"
    text += "    expected_output: x\n"
    with pytest.raises(CrewError, match=r"tasks\.build\.description"):
        load_crew(write_crew(tmp_path, text))


def test_prompt_for_fills_the_placeholder():
    config = TaskConfig(agent="dev", description="Build this:\n{spec}\nNow.", expected_output="x")
    assert config.prompt_for("A todo app") == "Build this:\nA todo app\nNow."


def test_prompt_for_appends_spec_without_placeholder():
    config = TaskConfig(agent="dev", description="  Review it.  ", expected_output="x")
    assert config.prompt_for("A todo app") == "Review it.\n\nProject spec:\nA todo app"


def test_bundled_prompts_contain_the_spec_once():
    crew, _, _ = load_crew()
    for config in crew.tasks.values():
        prompt = config.prompt_for("SPEC-MARKER")
        assert prompt.count("SPEC-MARKER") == 1
        assert "{spec}" not in prompt
