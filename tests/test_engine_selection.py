"""Which engine runs an embedded model, and at what precision, without loading one.

Whether llama-cpp-python is installed is simulated by patching
``importlib.util.find_spec``, the one probe ``llama_cpp_installed`` uses, so these tests
mean the same with and without it.
"""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO
from orchestrate.errors import ModelNotFoundError
from orchestrate.llm import embedded
from orchestrate.llm.embedded import (
    EmbeddedBackend,
    EngineOptions,
    ModelSource,
    choose_engine,
    resolve_precision,
)


@pytest.fixture
def gguf(tmp_path: Path) -> ModelSource:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")
    return ModelSource(path)


@pytest.fixture
def folder(tmp_path: Path) -> ModelSource:
    path = tmp_path / "hf-model"
    path.mkdir()
    (path / "config.json").write_text("{}")
    return ModelSource(path)


def pretend_llama_cpp(monkeypatch: pytest.MonkeyPatch, installed: bool) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        if name == "llama_cpp":
            return object() if installed else None
        return real(name, *args)

    monkeypatch.setattr(embedded.importlib.util, "find_spec", find_spec)


def test_llama_cpp_is_not_part_of_the_default_install() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    assert not any("llama-cpp" in requirement for requirement in project["dependencies"])
    assert any("llama-cpp-python" in extra for extra in project["optional-dependencies"]["llama"])


def test_without_llama_cpp_gguf_models_run_on_transformers(
    monkeypatch: pytest.MonkeyPatch, gguf: ModelSource
) -> None:
    pretend_llama_cpp(monkeypatch, installed=False)

    assert choose_engine(gguf, EngineOptions()) == "transformers"


def test_with_llama_cpp_gguf_models_use_it(
    monkeypatch: pytest.MonkeyPatch, gguf: ModelSource, folder: ModelSource
) -> None:
    pretend_llama_cpp(monkeypatch, installed=True)

    assert choose_engine(gguf, EngineOptions()) == "llama"
    assert choose_engine(folder, EngineOptions()) == "transformers"  # not a GGUF
    assert choose_engine(gguf, EngineOptions(), adapter=True) == "transformers"  # LoRA
    assert choose_engine(gguf, EngineOptions(engine="transformers")) == "transformers"


def test_asking_for_llama_without_it_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, gguf: ModelSource, folder: ModelSource
) -> None:
    pretend_llama_cpp(monkeypatch, installed=False)
    with pytest.raises(ModelNotFoundError, match=r"unified-orchestrator\[llama\]"):
        choose_engine(gguf, EngineOptions(engine="llama"))

    pretend_llama_cpp(monkeypatch, installed=True)
    with pytest.raises(ModelNotFoundError, match="GGUF files only"):
        choose_engine(folder, EngineOptions(engine="llama"))


def test_the_engine_and_precision_are_part_of_the_cache_identity(
    monkeypatch: pytest.MonkeyPatch, gguf: ModelSource, tmp_path: Path
) -> None:
    def backend(options: EngineOptions) -> EmbeddedBackend:
        return EmbeddedBackend("embedded:x", gguf, tmp_path, options=options)

    monkeypatch.setattr(embedded, "default_device", lambda: "cpu")
    pretend_llama_cpp(monkeypatch, installed=False)
    monkeypatch.setattr(embedded, "fp16_kernels_available", lambda: True)
    fp32 = backend(EngineOptions(precision="fp32")).identity
    fp16 = backend(EngineOptions()).identity
    int8 = backend(EngineOptions(precision="int8")).identity
    pretend_llama_cpp(monkeypatch, installed=True)
    llama = backend(EngineOptions()).identity

    assert len({fp32, fp16, int8, llama}) == 4
    assert fp16.endswith(":fp16") and int8.endswith(":int8") and llama.endswith(":llama.cpp")


def test_llama_cpp_loading_without_the_package_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrate.llm.llamacpp_backend import LlamaCppModel

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if not installed

    with pytest.raises(ModelNotFoundError, match="llama-cpp-python is not installed"):
        LlamaCppModel.load(tmp_path / "model.gguf", 2048)


def test_precision_auto_is_fp16_on_an_x86_cpu_and_explicit_choices_stand(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(embedded, "fp16_kernels_available", lambda: True)
    assert resolve_precision("auto", "cpu") == "fp16"
    assert resolve_precision("auto", "mps") == "fp32"  # fbgemm's kernels are CPU-only
    monkeypatch.setattr(embedded, "fp16_kernels_available", lambda: False)  # an ARM CPU
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("int8", "cpu") == "int8"
    assert resolve_precision("bf16", "cuda:0") == "bf16"


def test_settings_choose_the_engine_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATE_EMBEDDED_ENGINE", "transformers")
    monkeypatch.setenv("ORCHESTRATE_EMBEDDED_PRECISION", "fp32")
    monkeypatch.setenv("ORCHESTRATE_EMBEDDED_BATCH", "2")

    assert EngineOptions.from_settings() == EngineOptions("transformers", "fp32", 2)
