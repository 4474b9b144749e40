"""Tests for orchestrate.llm.replay: whole-task answers replayed from the response cache."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from conftest import EXAMPLE_SCRIPT, EXAMPLE_SPEC
from orchestrate.build import BuildOptions, BuildRun
from orchestrate.crew.config import load_crew
from orchestrate.crew.spec import load_spec
from orchestrate.errors import BackendRefusedError
from orchestrate.llm.backend import Backend, Completion, CompletionRequest
from orchestrate.llm.cache import CachingBackend, ResponseCache
from orchestrate.llm.models import ModelRouter
from orchestrate.llm.replay import TaskInputs, TaskReplay, task_key
from orchestrate.llm.resilience import FallbackChain
from orchestrate.llm.scripted import ScriptedBackend

INPUTS = TaskInputs(
    model_identity="scripted:todo:abc",
    role="Architect",
    goal="Design it",
    backstory="Seasoned",
    prompt="Design a todo CLI.",
    expected_output="A design",
    context="",
    max_tokens=64,
    temperature=0.0,
)


class Counting:
    """Counts the calls that reach the backend it wraps."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.calls = 0
        self.name, self.identity = inner.name, inner.identity
        self.context_window = inner.context_window

    def prepare(self) -> None:
        self.inner.prepare()

    def complete(self, request: CompletionRequest) -> Completion:
        self.calls += 1
        return self.inner.complete(request)

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        return self.inner.count_tokens(messages)


class Refusing(Counting):
    """A model that refuses every call, so its chain falls back."""

    def __init__(self) -> None:
        super().__init__(ScriptedBackend.from_file(EXAMPLE_SCRIPT))
        self.name = self.identity = "refusing:model"

    def complete(self, request: CompletionRequest) -> Completion:
        self.calls += 1
        raise BackendRefusedError("refusing:model: no")


@pytest.fixture
def responses(tmp_path: Path) -> ResponseCache:
    return ResponseCache(tmp_path / "responses.sqlite3", max_bytes=2**24)


def build(tmp_path: Path, router: ModelRouter, name: str) -> dict:
    options = BuildOptions(
        model=router.default_model,
        workers=2,
        max_tokens=64,
        temperature=0.0,
        runs_dir=tmp_path / name,
    )
    run = BuildRun.start(load_spec(str(EXAMPLE_SPEC)), load_crew(None), router, options)
    record = run.execute().record
    assert record.status.value == "succeeded"
    return {task: (state.llm_calls, state.cached_calls) for task, state in record.tasks.items()}


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(TaskInputs)])
def test_every_input_changes_the_key(field):
    value = getattr(INPUTS, field)
    changed = value + 1 if isinstance(value, int | float) else f"{value} (edited)"

    assert task_key(dataclasses.replace(INPUTS, **{field: changed})) != task_key(INPUTS)


def test_a_kept_answer_is_recalled_with_its_tokens(responses):
    replay = TaskReplay(responses, cache_sampled=False)
    replay.keep(INPUTS, Completion("The design.", 40, 12))

    recalled = replay.recall(INPUTS)

    assert recalled is not None
    assert (recalled.text, recalled.prompt_tokens, recalled.completion_tokens) == (
        "The design.",
        40,
        12,
    )
    assert replay.recall(dataclasses.replace(INPUTS, context="other")) is None


def test_sampled_answers_are_kept_only_on_request(responses):
    sampled = dataclasses.replace(INPUTS, temperature=0.7)
    TaskReplay(responses, cache_sampled=False).keep(sampled, Completion("One draw.", 1, 1))
    assert TaskReplay(responses, cache_sampled=True).recall(sampled) is None

    TaskReplay(responses, cache_sampled=True).keep(sampled, Completion("One draw.", 1, 1))
    assert TaskReplay(responses, cache_sampled=False).recall(sampled) is None
    assert TaskReplay(responses, cache_sampled=True).recall(sampled) is not None


def test_an_empty_answer_is_never_kept(responses):
    replay = TaskReplay(responses, cache_sampled=False)
    replay.keep(INPUTS, Completion("  ", 1, 0))

    assert replay.recall(INPUTS) is None


def test_a_repeated_build_replays_every_task_without_asking_the_model(tmp_path, responses):
    model = Counting(ScriptedBackend.from_file(EXAMPLE_SCRIPT))
    layered = CachingBackend(model, responses, cache_sampled=False)
    replay = TaskReplay(responses, cache_sampled=False)

    first = build(tmp_path, ModelRouter.single(layered, replay=replay), "first")
    calls_after_first = model.calls
    second = build(tmp_path, ModelRouter.single(layered, replay=replay), "second")

    assert calls_after_first == 6
    assert model.calls == 6
    assert first.pop("checks") == second.pop("checks") == (0, 0)  # the sandbox asks no model
    assert set(first.values()) == {(1, 0)}
    assert set(second.values()) == {(0, 1)}


def test_a_fallback_models_answer_is_not_replayed_as_the_task_models(tmp_path, responses):
    refusing = Refusing()
    scripted = ScriptedBackend.from_file(EXAMPLE_SCRIPT)
    chain = FallbackChain([refusing, CachingBackend(scripted, responses, cache_sampled=False)])
    router = ModelRouter({"refusing:model": chain}, {}, "refusing:model")
    router.replay = TaskReplay(responses, cache_sampled=False)

    build(tmp_path, router, "first")
    build(tmp_path, router, "second")

    assert refusing.calls == 12  # the task model was asked again in the second run
