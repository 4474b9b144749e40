"""The llama.cpp engine on the bundled GGUF, when the optional llama-cpp-python is installed.

The default install leaves it out (it compiles llama.cpp), so these tests skip there;
`pip install -e '.[llama]'` runs them.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from orchestrate.errors import TaskCancelledError
from orchestrate.llm.backend import CompletionRequest
from orchestrate.llm.embedded import BUNDLED_NAME, locate_embedded_model

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.embedded


@pytest.fixture(scope="module")
def model() -> Any:
    from orchestrate.llm.llamacpp_backend import LlamaCppModel

    return LlamaCppModel.load(locate_embedded_model(BUNDLED_NAME, override=None).path, 4096)


def request(text: str, max_tokens: int = 12, **options: Any) -> CompletionRequest:
    return CompletionRequest([{"role": "user", "content": text}], "test", max_tokens, **options)


def test_an_answer_counts_its_tokens_and_reports_progress(model: Any) -> None:
    progress: list[tuple[int, str]] = []

    def note(count: int) -> None:
        progress.append((count, threading.current_thread().name))

    answer = model.generate(request("Name three colors.", on_progress=note))

    assert answer.text and answer.prompt_tokens > 5
    assert 0 < answer.completion_tokens <= 12
    assert [count for count, _ in progress] == list(range(1, answer.completion_tokens + 1))
    assert {name for _, name in progress} == {"embedded-compute"}  # see compute.py


def test_greedy_answers_are_the_same_alone_and_concurrent(model: Any) -> None:
    texts = ["Name a color.", "Write a haiku about rain.", "What is 2 + 2?"]
    alone = [model.generate(request(text)).text for text in texts]
    together: list[str] = [""] * len(texts)

    def ask(index: int) -> None:
        together[index] = model.generate(request(texts[index])).text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert together == alone


def test_a_stop_string_ends_the_answer(model: Any) -> None:
    full = model.generate(request("Count from 1 to 20, separated by spaces.", 40)).text
    stop = full.split()[2]  # the third number
    cut = model.generate(request("Count from 1 to 20, separated by spaces.", 40, stop=(stop,)))

    assert stop not in cut.text and len(cut.text) < len(full)


def test_a_cancelled_request_stops_within_a_token(model: Any) -> None:
    cancel, counts = threading.Event(), []

    def cancel_at_three(count: int) -> None:
        counts.append(count)
        if count == 3:
            cancel.set()

    with pytest.raises(TaskCancelledError):
        model.generate(
            request("Write a long story.", 200, cancel=cancel, on_progress=cancel_at_three)
        )
    assert max(counts) == 3


def test_a_file_task_answer_starts_as_a_file_block(model: Any) -> None:
    from orchestrate.llm.embedded import FILE_TASK_MARKER

    task = f"Write todo/cli.py, a command-line todo list. Answer with {FILE_TASK_MARKER}."
    answer = model.generate(request(task, 16))

    assert answer.text.startswith("FILE: todo/cli.py\n```python\n")
    assert 0 < answer.completion_tokens <= 16  # the prefill is the prompt's, not the answer's


def test_the_lease_covers_the_weights_and_a_full_kv_cache(model: Any) -> None:
    path = locate_embedded_model(BUNDLED_NAME, override=None).path
    weights_mib = path.stat().st_size / 1024**2
    # SmolLM2-135M: 30 layers x 3 key/value heads x 64 dims, f16, 4096 positions.
    cache_mib = 4096 * 2 * 30 * 3 * 64 * 2 / 1024**2

    assert model.lease_mib == int((weights_mib + cache_mib) * 1.25)
