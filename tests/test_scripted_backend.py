"""Tests for orchestrate.llm.scripted (the scripted backend) and orchestrate.llm.fitting."""

from __future__ import annotations

import re
import threading

import pytest

from orchestrate.bundled import bundled_path
from orchestrate.errors import BackendError, ModelNotFoundError, TaskCancelledError
from orchestrate.llm.backend import CompletionRequest, create_backend
from orchestrate.llm.fitting import fit_messages
from orchestrate.llm.scripted import ScriptedBackend

SCRIPT = """\
agents:
  architect:
    answer: "FILE: DESIGN.md"
  devops:
    error: simulated outage
  slow:
    answer: late
    latency_seconds: 30
"""


def backend_from(tmp_path, text):
    path = tmp_path / "script.yaml"
    path.write_text(text, encoding="utf-8")
    return ScriptedBackend.from_file(path)


def request(agent, content="one two three", cancel=None, on_progress=None):
    return CompletionRequest(
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": content}],
        agent=agent,
        max_tokens=100,
        cancel=cancel or threading.Event(),
        on_progress=on_progress,
    )


def test_answer_per_agent(tmp_path):
    backend = backend_from(tmp_path, SCRIPT)
    completion = backend.complete(request("architect"))
    assert completion.text == "FILE: DESIGN.md"
    assert completion.prompt_tokens == 5
    assert completion.completion_tokens == 2


def test_default_answer_for_unlisted_agent(tmp_path):
    backend = backend_from(tmp_path, SCRIPT + "default:\n  answer: Nothing to add.\n")
    assert backend.complete(request("qa")).text == "Nothing to add."
    assert backend.complete(request("architect")).text == "FILE: DESIGN.md"


def test_scripted_error_raises_backend_error(tmp_path):
    backend = backend_from(tmp_path, SCRIPT)
    with pytest.raises(BackendError, match=r"^simulated outage$"):
        backend.complete(request("devops"))


def test_missing_agent_without_default(tmp_path):
    backend = backend_from(tmp_path, SCRIPT)
    with pytest.raises(BackendError, match="no answer for agent 'qa' and no default"):
        backend.complete(request("qa"))


@pytest.mark.parametrize(
    ("script", "agent"),
    [(SCRIPT, "slow"), ("latency_seconds: 30\ndefault:\n  answer: x\n", "anyone")],
    ids=["agent latency", "global latency"],
)
def test_a_cancelled_request_gets_no_answer_after_its_latency(tmp_path, script, agent):
    # Without the cancel check the call would answer after its latency instead of raising.
    backend = backend_from(tmp_path, script)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(TaskCancelledError):
        backend.complete(request(agent, cancel=cancel))


def test_on_progress_receives_completion_tokens(tmp_path):
    backend = backend_from(tmp_path, "default:\n  answer: a b c d\n")
    seen = []
    backend.complete(request("x", on_progress=seen.append))
    assert seen == [4]


def test_name_and_count_tokens(tmp_path):
    backend = backend_from(tmp_path, SCRIPT)
    assert backend.name == f"scripted:{tmp_path / 'script.yaml'}"
    assert backend.count_tokens([{"role": "user", "content": " a  b\nc "}]) == 3
    backend.prepare()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            "agents:\n  a:\n    answer: x\n    error: y\n",
            "exactly one of 'answer', 'answers' or 'error'",
        ),
        ("agents:\n  a: {}\n", "exactly one of 'answer', 'answers' or 'error'"),
        ("agents:\n  a:\n    answr: x\n", "agents.a.answr"),
        ("colour: red\n", "colour"),
        ("latency_seconds: -1\n", "latency_seconds"),
        ("agents: [\n", "cannot read scripted model file"),
        ("- just\n- a list\n", "top level"),
    ],
)
def test_invalid_file_raises_model_not_found(tmp_path, text, fragment):
    with pytest.raises(ModelNotFoundError, match=re.escape(fragment)):
        backend_from(tmp_path, text)


def test_missing_file_raises_model_not_found(tmp_path):
    with pytest.raises(ModelNotFoundError, match="scripted model file not found"):
        ScriptedBackend.from_file(tmp_path / "missing.yaml")


def test_directory_raises_model_not_found(tmp_path):
    with pytest.raises(ModelNotFoundError, match="cannot read scripted model file"):
        ScriptedBackend.from_file(tmp_path)


def test_create_backend_builds_scripted(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("default:\n  answer: hi\n", encoding="utf-8")
    backend = create_backend(f"scripted:{path}", models_dir=tmp_path)
    assert isinstance(backend, ScriptedBackend)
    assert backend.complete(request("any")).text == "hi"


def test_bundled_script_answers_every_bundled_agent():
    backend = ScriptedBackend.from_file(bundled_path("examples/scripted/todo.yaml"))
    for agent in ("architect", "fullstack", "devops", "qa", "docs", "critic"):
        assert backend.complete(request(agent)).text.strip()
    assert "FILE: DESIGN.md" in backend.complete(request("architect")).text


def count_words(messages):
    return sum(len(message["content"].split()) for message in messages)


MARKER = re.compile(r"\n\[\.\.\. (\d+) characters omitted to fit the context window \.\.\.\]\n")


def long_conversation():
    return [
        {"role": "system", "content": "Follow the rules."},
        {"role": "user", "content": "START " + "filler " * 1000 + "END"},
    ]


def test_fit_messages_within_budget_is_unchanged():
    messages = long_conversation()
    fitted = fit_messages(messages, count_words, 5000)
    assert fitted == messages
    assert fitted is not messages


def test_fit_messages_shrinks_longest_keeping_head_and_tail():
    messages = long_conversation()
    original = messages[1]["content"]
    fitted = fit_messages(messages, count_words, 500)
    assert count_words(fitted) <= 500
    assert count_words(fitted) > 250  # cut, but not far more than needed
    assert fitted[0] == {"role": "system", "content": "Follow the rules."}
    content = fitted[1]["content"]
    assert fitted[1]["role"] == "user"
    assert content.startswith("START filler")
    assert content.endswith("filler END")
    marker = MARKER.search(content)
    assert marker is not None
    omitted = int(marker.group(1))
    assert omitted + len(content) - len(marker.group(0)) == len(original)


def test_fit_messages_does_not_mutate_input():
    messages = long_conversation()
    before = [dict(message) for message in messages]
    fit_messages(messages, count_words, 500)
    assert messages == before


def test_fit_messages_cuts_the_longest_message_only():
    messages = [
        {"role": "system", "content": "rule " * 300},
        {"role": "user", "content": "ask " * 50},
    ]
    fitted = fit_messages(messages, count_words, 250)
    assert count_words(fitted) <= 250
    assert fitted[1] == messages[1]
    assert MARKER.search(fitted[0]["content"])
